"""The reward service under bounded load on loopback: capacity, a minute at 80% of it, then overload.

At 80% of the measured capacity nothing fails and p99 stays bounded; far beyond capacity the
service sheds with 503 + ``Retry-After`` at once (bounded queues) instead of timing out, and
answers normally again when the overload stops. The figures land in ``$TAGPR_RELIABILITY_OUT``
(default: the test's temporary folder) as ``load.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
STEADY_S = float(os.environ.get("TAGPR_LOAD_SECONDS", "60"))


def _load(url: str, payloads: Path, *, concurrency: int, seconds: float, rate: float | None = None,
          timeout: float = 30.0) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--payloads", str(payloads), "--concurrency",
           str(concurrency), "--duration", str(seconds), "--timeout", str(timeout)]
    if rate:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, timeout=seconds + 120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    from ray import serve

    from benchmarks.bench_reward_service import _payloads
    from services.reward.deploy import deploy
    from tagpr.config import load_config
    from tagpr.prmu import checkpoint

    tmp = tmp_path_factory.mktemp("load")
    cfg = load_config(None, ["service.min_replicas=1", "service.max_replicas=1", "service.max_batch_size=32",
                             "service.max_queued_requests=32", "service.retry_after_s=2"])
    ckpt = tmp / "prmu"
    checkpoint.save(checkpoint.build_net(cfg.prmu, 384, 0), ckpt, cfg.prmu, "minilm", 384, {})
    deploy(cfg, str(ckpt), token_env="TAGPR_LOAD_NO_TOKEN", name="load", route_prefix="/load")
    payloads = tmp / "payloads.json"
    payloads.write_text(json.dumps(_payloads(8)))
    url = f"http://127.0.0.1:{serve_port}/load/v1/score"
    _load(url, payloads, concurrency=8, seconds=3)  # warm-up: encoder and batching paths
    yield url, payloads, cfg
    serve.delete("load")


def test_steady_load_then_overload_then_recovery(service):
    url, payloads, cfg = service
    out = Path(os.environ.get("TAGPR_RELIABILITY_OUT", payloads.parent))
    capacity = _load(url, payloads, concurrency=16, seconds=10)
    assert not capacity["errors"], capacity
    rate = 0.8 * capacity["requests_per_s"]
    steady = _load(url, payloads, concurrency=256, seconds=STEADY_S, rate=rate)
    overload = _load(url, payloads, concurrency=1024, seconds=15, rate=3 * capacity["requests_per_s"], timeout=30)
    recovery = _load(url, payloads, concurrency=4, seconds=5)
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
