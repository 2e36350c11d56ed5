"""One local Ray cluster per test session (explicit address), with Serve on a free loopback port.

Token authentication is disabled for the test cluster only (``RAY_AUTH_MODE=disabled``);
production keeps Ray's default token auth (see docs/security.md).
"""

from __future__ import annotations

import os
import time

import pytest

from actors.cluster import free_port


@pytest.fixture(scope="session")
def ray_cluster():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    import ray

    metrics_port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="tagpr-tests",
             _metrics_export_port=metrics_port, log_to_driver=False)
    yield {"metrics_port": metrics_port}
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_cluster):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture(scope="session")
def prmu_job(ray_cluster, tmp_path_factory):
    """A PRMU trained by the real job (Ray Train, 2 workers) on small synthetic data; the service tests
    serve its checkpoint."""
    from tagpr.config import load_config
    from tagpr.jobs.prmu import train
    from tagpr.lamp.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("prmu-job")
    cfg = load_config(None, [
        f"run.root={root / 'runs'}", f"data.root={root / 'data'}", "data.tasks=[LaMP_1, LaMP_2]",
        "data.synthetic.users={train: 48, dev: 12}", "data.synthetic.questions_per_user=3",
        "data.synthetic.profile_size=6", "prmu.num_workers=2", "prmu.epochs=25", "prmu.hidden_size=64",
        "prmu.max_length=64",
    ])
    write_synthetic(cfg.data.root, cfg.data.synthetic, cfg.data.tasks)
    result = train(cfg, log=lambda _: None)
    return cfg, result


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory, cfg):
    """The embedded tiny policy (random weights), built once per session."""
    from tagpr.models import build_tiny_policy

    return build_tiny_policy(cfg.model, cfg.tags, tmp_path_factory.mktemp("tiny-policy"))
