"""Integration tests: the session's Ray cluster, Serve and the tiny policy come from
tests/conftest.py (shared with tests/reliability, so one cluster serves both); here a trained
PRMU and a polling helper."""

from __future__ import annotations

import time

import pytest


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
