"""Scale a running RL job's rollout pool on Ray's fake multi-node autoscaler, and record it.

Starts a head with ``configs/cluster-local.yaml`` (``RAY_FAKE_CLUSTER=1``), runs ``tagpr rl`` on it
as a separate driver, and resizes its pool with the real CLI, ``tagpr scale rollout N``: each
rollout worker asks for the ``rollout_worker`` resource, so growing the pool makes the autoscaler
start a rollout node and shrinking it lets the node go idle and be released. Every second the
timeline records the rollout nodes alive, the pool's size and the learner's step; the job is
stopped (SIGINT) once the pool has grown and shrunk back. Only this cluster's processes are
stopped at the end (``actors.cluster.LocalHead``), never another Ray on the host.

    python scripts/fake_cluster_scaling.py --out benchmarks/results/fake_cluster_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RUN_NAME = "fake-cluster"
# The job here scores rewards in its workers (no reward service) and has no PRMU term.
REWARD_SERVICE_SERIES = {"ray_tagpr_reward_requests_total", "ray_tagpr_reward_latency_seconds_bucket",
                         "ray_tagpr_prmu_batch_size_sum", "ray_tagpr_prmu_batch_size_count",
                         "ray_tagpr_prmu_batch_size_bucket", "ray_tagpr_learner_reward_prmu"}
ONLY_AFTER_A_DROP = {"ray_tagpr_buffer_dropped_groups_total"}


def _prepare(root: Path) -> list[str]:
    """Synthetic data and the tiny policy under ``root``; the job's config overrides."""
    from tagpr.config import load_config
    from tagpr.lamp.synthetic import write_synthetic
    from tagpr.models import build_tiny_policy

    data = [f"data.root={root / 'data'}", "data.tasks=[LaMP_1, LaMP_2]", "data.synthetic.users={train: 24, dev: 4}",
            "data.synthetic.questions_per_user=4", "data.synthetic.profile_size=6", "data.prompt_profile_items=4"]
    cfg = load_config(None, data)
    write_synthetic(cfg.data.root, cfg.data.synthetic, cfg.data.tasks)
    policy = build_tiny_policy(cfg.model, cfg.tags, root / "policy")
    return data + [
        f"run.name={RUN_NAME}", f"run.root={root / 'runs'}", f"model.policy={policy}", "rl.eval_limit=0",
        "rl.group_size=4", "rl.prompts_per_step=2", "rollout.prompts_per_request=1", "rollout.max_tokens=24",
        "rollout.engine.kind=hf", "rollout.num_cpus=0", "rollout.resources={rollout_worker: 1}",
        "rollout.num_workers=1", "rollout.min_workers=1", "rollout.max_workers=3", "rollout.reward_via=local",
        "rl.stages=[{name: guided, steps: 100000, weights: {format_task: 1.0, tag: 0.2}}]",
        # the random policy's groups carry no reward signal (format gate), so learner steps are near
        # no-ops; publishing every other step keeps weight loads from saturating the machine
        "learner.sync_every=2",
    ]


DASHBOARD = ROOT / "configs" / "monitoring" / "grafana-dashboard.json"


def dashboard_series() -> set[str]:
    """The TagPR series the Grafana dashboard queries."""
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\bray_tagpr_[a-z0-9_]+", e)}


class Probe:
    """The cluster as the timeline sees it: rollout nodes alive, pool size, learner steps; and the
    series on the head's metrics endpoint."""

    def __init__(self, namespace: str, metrics_url: str):
        self.namespace, self.metrics_url = namespace, metrics_url

    def series(self) -> set[str]:
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            text = r.read().decode()
        return {s.name for f in text_string_to_metric_families(text) for s in f.samples}

    def sample(self) -> dict:
        import ray

        nodes = sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("rollout_worker"))
        row = {"rollout_nodes": nodes, "pool_size": None, "learner_steps": None}
        try:
            row["pool_size"] = ray.get(ray.get_actor(f"{RUN_NAME}-control", namespace=self.namespace)
                                       .status.remote(), timeout=10)["size"]
            row["learner_steps"] = ray.get(ray.get_actor(f"{RUN_NAME}-buffer", namespace=self.namespace)
                                           .stats.remote(), timeout=10)["steps_taken"]
        except (ValueError, ray.exceptions.RayError):  # the job has not created its roles yet
            pass
        return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/fake_cluster_scaling.json")
    parser.add_argument("--config", default=str(ROOT / "configs" / "cluster-local.yaml"))
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the whole scenario")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running (for a look around)")
    args = parser.parse_args(argv)

    import ray

    from actors.cluster import LocalHead, entry_point
    from tagpr.config import load_config

    work = Path(tempfile.mkdtemp(prefix="tagpr-fake-cluster-"))
    overrides = _prepare(work)
    namespace = load_config(None, overrides).cluster.namespace
    cluster = LocalHead(4, {"learner": 1, "reward_service": 1}, autoscaling_config=args.config)
    cluster.start()
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONPATH": str(ROOT)}
    sets = [a for o in overrides for a in ("--set", o)]
    job_log = open(work / "job.log", "w")
    job = subprocess.Popen([sys.executable, "-m", "tagpr.jobs.rl", *sets], cwd=ROOT, env=env,
                           stdout=job_log, stderr=subprocess.STDOUT)
    start = time.monotonic()
    timeline: list[dict] = []
    commands: list[dict] = []
    result = {"cluster_config": args.config, "address": cluster.address, "job_log": str(work / "job.log")}
    try:
        ray.init(address=cluster.address, namespace=namespace, log_to_driver=False)
        probe = Probe(namespace, f"http://{cluster.ip}:{cluster.metrics_port}/metrics")

        def tick() -> dict:
            if job.poll() is not None:
                raise RuntimeError(f"the job exited ({job.returncode}) mid-scenario; see {work / 'job.log'}")
            if time.monotonic() - start > args.timeout:
                raise TimeoutError(f"the scenario took over {args.timeout:g} s; timeline so far in the output")
            row = {"t": round(time.monotonic() - start, 1), **probe.sample()}
            timeline.append(row)
            time.sleep(1.0)
            return row

        def until(predicate) -> dict:
            while not predicate(row := tick()):
                pass
            return row

        def scale(n: int) -> None:
            t = round(time.monotonic() - start, 1)
            out = subprocess.run([entry_point("tagpr"), "scale", "rollout", str(n), "--run", RUN_NAME, "--address",
                                  cluster.address, *sets], env=env, capture_output=True, text=True, timeout=180)
            commands.append({"t": t, "command": f"tagpr scale rollout {n}", "rc": out.returncode,
                             "output": out.stdout.strip() or out.stderr.strip()[-500:]})
            if out.returncode:
                raise RuntimeError(f"tagpr scale rollout {n} failed: {out.stderr[-2000:]}")

        first = until(lambda r: (r["learner_steps"] or 0) >= 2 and r["rollout_nodes"] == 1)
        scale(2)
        grown = until(lambda r: r["pool_size"] == 2 and r["rollout_nodes"] == 2)
        at_two = until(lambda r: r["learner_steps"] >= grown["learner_steps"] + 2)
        scale(1)
        released = until(lambda r: r["pool_size"] == 1 and r["rollout_nodes"] == 1)
        after = until(lambda r: r["learner_steps"] >= released["learner_steps"] + 2)
        result["phases"] = {"training_on_one_node": first, "grown_to_two": grown, "trained_at_two": at_two,
                            "released_to_one": released, "trained_after": after}
        wanted = dashboard_series()
        present: set[str] = set()
        for _ in range(30):  # what a Prometheus scraping every second sees over half a minute
            present |= probe.series() & wanted
            if present >= wanted - REWARD_SERVICE_SERIES - ONLY_AFTER_A_DROP:
                break
            tick()
        result["dashboard_series"] = {"present": sorted(present), "missing": sorted(wanted - present)}
        result["ok"] = True
    except Exception as exc:
        result["ok"], result["error"] = False, f"{type(exc).__name__}: {exc}"
    finally:
        if job.poll() is None:
            job.send_signal(signal.SIGINT)  # the controller's cleanup runs; the run is cut short on purpose
            try:
                job.wait(60)
            except subprocess.TimeoutExpired:
                job.kill()
        job_log.close()
        if ray.is_initialized():
            ray.shutdown()
        if not args.keep:
            cluster.stop()
    result.update(timeline=timeline, commands=commands, seconds=round(time.monotonic() - start, 1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for c in commands:
        print(f"[{c['t']:6.1f}s] {c['command']}: {c['output']}")
    print(json.dumps({k: v for k, v in result.items() if k not in ("timeline", "commands")}, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
