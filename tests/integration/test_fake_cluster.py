"""The rollout pool scaled on demand on Ray's fake multi-node autoscaler (configs/cluster-local.yaml):
`tagpr scale rollout 2` makes the autoscaler add a rollout node and the pool grow, `... 1` releases
it, and the learner trains throughout. The scenario runs its own cluster in a subprocess
(scripts/fake_cluster_scaling.py), apart from the test session's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

CORE_SERIES = {  # what the Grafana dashboard shows of training, exported while the job runs
    "ray_tagpr_learner_reward_mean", "ray_tagpr_learner_kl", "ray_tagpr_learner_staleness_mean",
    "ray_tagpr_learner_trajectories_per_s", "ray_tagpr_learner_learner_wait_frac", "ray_tagpr_learner_weight_sync_s",
    "ray_tagpr_rollout_workers", "ray_tagpr_rollout_scale_decisions_total", "ray_tagpr_rollout_blocked_frac",
    "ray_tagpr_buffer_depth",
    "ray_tagpr_buffer_consumed_staleness_total",
}


def test_scaling_the_pool_adds_and_releases_rollout_nodes_while_training(tmp_path):
    out = tmp_path / "scaling.json"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "fake_cluster_scaling.py"), "--out", str(out),
                          "--timeout", "480"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert out.exists(), run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"], (result.get("error"), run.stdout[-2000:])

    p = result["phases"]
    assert p["training_on_one_node"]["rollout_nodes"] == 1 and p["training_on_one_node"]["pool_size"] == 1
    assert p["grown_to_two"]["rollout_nodes"] == 2 and p["grown_to_two"]["pool_size"] == 2
    assert p["released_to_one"]["rollout_nodes"] == 1 and p["released_to_one"]["pool_size"] == 1
    steps = [p[k]["learner_steps"] for k in ("training_on_one_node", "grown_to_two", "trained_at_two",
                                              "released_to_one", "trained_after")]
    assert steps == sorted(steps) and steps[2] > steps[1] and steps[4] > steps[3]  # trained at each size
    assert [c["rc"] for c in result["commands"]] == [0, 0]
    assert "1 -> 2" in result["commands"][0]["output"] and "2 -> 1" in result["commands"][1]["output"]
    # never more nodes than workers asked for, and the learner never went backwards
    timeline = result["timeline"]
    assert max(r["rollout_nodes"] for r in timeline) == 2
    seen = [r["learner_steps"] for r in timeline if r["learner_steps"] is not None]
    assert seen == sorted(seen)
    assert CORE_SERIES <= set(result["dashboard_series"]["present"]), result["dashboard_series"]["missing"]
