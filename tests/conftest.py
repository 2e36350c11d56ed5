"""Shared test setup: markers, fixture paths, the default config, and for the integration and
reliability suites one local Ray cluster per test session (explicit address) with Serve on a free
loopback port, and the tiny policy.

Token authentication is disabled for the test cluster only (``RAY_AUTH_MODE=disabled``);
production keeps Ray's default token auth (see docs/security.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

# vLLM on the CPU: a 1 GiB KV cache (its default reserves several) and the engine core in the test process.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def cfg():
    from tagpr.config import load_config

    return load_config()


@pytest.fixture(scope="session")
def tagset(cfg):
    from tagpr.tags import TagSet

    return TagSet(cfg.tags)


@pytest.fixture(scope="session")
def ray_cluster():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    import ray

    from actors.cluster import WORKER_ENV, free_port

    metrics_port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="tagpr-tests",
             _metrics_export_port=metrics_port, log_to_driver=False, runtime_env=WORKER_ENV)
    yield {"metrics_port": metrics_port}
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_cluster):
    from ray import serve

    from actors.cluster import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory, cfg):
    """The embedded tiny policy (random weights), built once per session."""
    from tagpr.models import build_tiny_policy

    return build_tiny_policy(cfg.model, cfg.tags, tmp_path_factory.mktemp("tiny-policy"))
