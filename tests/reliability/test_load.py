"""The reward service under bounded load on loopback: capacity, a minute at 80% of it, then overload.

At 80% of the measured capacity nothing fails and p99 stays bounded; far beyond capacity the
service sheds with 503 + ``Retry-After`` at once (bounded queues) instead of timing out, and
answers normally again when the overload stops. The figures land in ``$TAGPR_RELIABILITY_OUT``
(default: the test's temporary folder) as ``load.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.loadgen import run_process as _run_process
from tests.reliability.conftest import deploy_untrained

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEADY_S = float(os.environ.get("TAGPR_LOAD_SECONDS", "60"))


def run_process(*args, **kwargs) -> dict:
    return _run_process(*args, **{"timeout": 30.0, **kwargs})  # a client gives up on a request after 30 s


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    from ray import serve

    from benchmarks.bench_reward_service import _payloads

    tmp = tmp_path_factory.mktemp("load")
    cfg = deploy_untrained("load", ["service.min_replicas=1", "service.max_replicas=1", "service.max_batch_size=32",
                                    "service.max_queued_requests=32", "service.retry_after_s=2"], tmp,
                           "TAGPR_LOAD_NO_TOKEN")
    payloads = tmp / "payloads.json"
    payloads.write_text(json.dumps(_payloads(8)))
    url = f"http://127.0.0.1:{serve_port}/load/v1/score"
    run_process(url, payloads, concurrency=8, seconds=3)  # warm-up: encoder and batching paths
    yield url, payloads, cfg
    serve.delete("load")


def test_steady_load_then_overload_then_recovery(service):
    url, payloads, cfg = service
    out = Path(os.environ.get("TAGPR_RELIABILITY_OUT", payloads.parent))
    capacity = run_process(url, payloads, concurrency=16, seconds=10)
    assert not capacity["errors"], capacity
    rate = 0.8 * capacity["requests_per_s"]
    steady = run_process(url, payloads, concurrency=256, seconds=STEADY_S, rate=rate)
    overload = run_process(url, payloads, concurrency=1024, seconds=15, rate=3 * capacity["requests_per_s"], timeout=30)
    recovery = run_process(url, payloads, concurrency=4, seconds=5)
    result = {"capacity": capacity, "steady_80pct": steady, "overload_3x": overload, "recovery": recovery,
              "max_queued_requests": cfg.service.max_queued_requests}
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, dict)}, indent=1))

    # 80% of capacity for the whole minute: every request answered, none shed, none late
    assert steady["errors"] == {} and steady["requests"] >= 0.9 * rate * STEADY_S
    assert steady["p99_ms"] < 5000
    # overload: the excess is shed at once with 503 + Retry-After; no timeouts, no other errors
    shed = overload["errors"].get("503", 0)
    assert shed > 0 and overload["503_with_retry_after"] == shed
    assert set(overload["errors"]) <= {"503"}, overload["errors"]
    assert overload["max_ms"] < 30000
    # and afterwards the service answers normally
    assert recovery["errors"] == {} and recovery["requests"] > 0
