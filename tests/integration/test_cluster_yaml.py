"""cluster.yaml passes Ray's own autoscaler schema and keeps the documented node types."""

from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_yaml_validates_against_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(CLUSTER.read_text())
    validate_config(prepare_config(raw))
    nodes = raw["available_node_types"]
    assert nodes["rollout_gpu"]["min_workers"] == 0 and nodes["rollout_gpu"]["resources"] == {"rollout_worker": 1}
    assert "learner" in nodes["learner_gpu"]["resources"] and "reward_service" in nodes["reward_cpu"]["resources"]
    assert any("RAY_AUTH_MODE=token" in c for c in raw["setup_commands"] + raw["head_start_ray_commands"])
    assert any("'.[gpu]'" in c for c in raw["setup_commands"])
