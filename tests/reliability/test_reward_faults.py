"""The reward service failing under its clients: a scorer replica killed under traffic, then the
service slow and unreachable behind a fault proxy. Clients retry; under the ``default`` failure
policy an item that could not be scored carries ``defaulted`` (never a silently wrong reward),
under ``raise`` the caller sees the error; when the service returns, rewards are right again."""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import pytest

from actors.cluster import free_port
from services.reward.client import RewardClient, RewardServiceError
from tagpr.lamp.io import Prompt
from tagpr.rewards import RewardInput
from tests.integration.conftest import serve_replicas
from tests.reliability.conftest import deploy_untrained
from tests.reliability.faultproxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    from ray import serve

    from benchmarks.bench_reward_service import _payloads

    deploy_untrained("faults", ["service.min_replicas=2", "service.max_replicas=2", "prmu.include_reasoning=true"],
                     tmp_path_factory.mktemp("faults"), "TAGPR_FAULTS_NO_TOKEN")
    items = [[_input(it, k, j) for j, it in enumerate(p["items"])] for k, p in enumerate(_payloads(4)[:8])]
    url = f"http://127.0.0.1:{serve_port}/faults"
    with RewardClient(url) as client:
        expected = [[o.reward for o in client.reward(batch, "guided")] for batch in items]
    yield url, items, expected
    serve.delete("faults")


def _input(item: dict, k: int, j: int) -> RewardInput:
    """The benchmark's JSON item ``j`` of batch ``k`` as the client takes it, its answer the gold."""
    response = item["response"].replace("{i}", str(k))
    gold = response.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    return RewardInput(Prompt(f"{k}-{j}", item["task"], item["input"], tuple(item["profile"]), gold), response)


def _scorer_replicas() -> list[str]:
    return serve_replicas("faults", "PRMUScorer")


def test_killing_a_scorer_replica_under_traffic_loses_and_corrupts_nothing(service):
    import ray

    url, items, expected = service
    assert len(_scorer_replicas()) == 2
    results, errors, stop = [], [], threading.Event()

    def traffic():
        with RewardClient(url, retries=6, backoff=0.5) as client:
            k = 0
            while not stop.is_set():
                i = k % len(items)
                try:
                    results.append((i, [o.reward for o in client.reward(items[i], "guided")]))
                except RewardServiceError as exc:
                    errors.append(exc)
                k += 1

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(3)
    victim = _scorer_replicas()[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    served_before = len(results)
    time.sleep(10)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    assert len(results) > served_before  # traffic went on after the kill
    for i, rewards in results:
        assert rewards == pytest.approx(expected[i], abs=1e-5)  # the same rewards from the surviving replica
    killed_at, deadline = time.monotonic(), time.monotonic() + 120
    while len(_scorer_replicas()) < 2 and time.monotonic() < deadline:  # Serve replaced it
        time.sleep(1)
    assert len(_scorer_replicas()) == 2 and victim not in _scorer_replicas()
    print(f"replica kill: {len(results)} batches scored ({served_before} before the kill), 0 errors, every reward "
          f"equal to the expected one; replacement replica up {time.monotonic() - killed_at:.0f} s after the run")


def test_slow_then_unreachable_service_under_both_failure_policies(service):
    url, items, expected = service
    target = urlparse(url)
    proxy = FaultProxy(target.port, free_port())
    base = f"{proxy.url}{target.path}"
    tolerant = RewardClient(base, timeout=2.0, retries=1, backoff=0.1, failure_policy="default", default_reward=-1.0)
    strict = RewardClient(base, timeout=2.0, retries=1, backoff=0.1)
    try:
        assert [o.reward for o in tolerant.reward(items[0], "guided")] == pytest.approx(expected[0], abs=1e-5)

        proxy.delay_s = 0.5  # slow, within the timeout: right answers, later
        start = time.perf_counter()
        out = tolerant.reward(items[1], "guided")
        assert time.perf_counter() - start >= 0.5
        assert [o.reward for o in out] == pytest.approx(expected[1], abs=1e-5) and not any(o.defaulted for o in out)

        proxy.delay_s = 5.0  # slower than the client's timeout: after its retries, the policy decides
        out = tolerant.reward(items[2], "guided")
        assert all(o.defaulted and o.reward == -1.0 for o in out) and tolerant.failed_items == len(items[2])
        with pytest.raises(RewardServiceError, match="gave up after 2 attempts"):
            strict.reward(items[2], "guided")

        proxy.delay_s = 0.0
        proxy.down()  # unreachable: connections refused
        out = tolerant.reward(items[3], "guided")
        assert all(o.defaulted for o in out) and tolerant.failed_items == len(items[2]) + len(items[3])
        with pytest.raises(RewardServiceError):
            strict.reward(items[3], "guided")

        proxy.up()  # back: right rewards again, nothing defaulted
        for client in (tolerant, strict):
            out = client.reward(items[4], "guided")
            assert [o.reward for o in out] == pytest.approx(expected[4], abs=1e-5)
            assert not any(o.defaulted for o in out)
    finally:
        tolerant.close()
        strict.close()
        proxy.close()
