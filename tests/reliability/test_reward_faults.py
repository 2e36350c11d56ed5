"""The reward service failing under its clients: a scorer replica killed under traffic, then the
service slow and unreachable behind a fault proxy. Clients retry; under the ``default`` failure
policy an item that could not be scored carries ``defaulted`` (never a silently wrong reward),
under ``raise`` the caller sees the error; when the service returns, rewards are right again."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from actors.cluster import free_port
from services.reward.client import RewardClient, RewardServiceError
from tests.reliability.conftest import deploy_untrained
from tests.reliability.faultproxy import FaultProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def service(serve_port, tmp_path_factory):
    from ray import serve

    from benchmarks.bench_reward_service import _payloads

    deploy_untrained("faults", ["service.min_replicas=2", "service.max_replicas=2", "prmu.include_reasoning=true"],
                     tmp_path_factory.mktemp("faults"), "TAGPR_FAULTS_NO_TOKEN")
    items = [[{**it, "response": it["response"].replace("{i}", str(k)), "gold": _answer(it["response"])}
              for it in p["items"]] for k, p in enumerate(_payloads(4)[:8])]
    url = f"http://127.0.0.1:{serve_port}/faults"
    with RewardClient(url) as client:
        expected = [[o.reward for o in client.reward(batch, "guided")] for batch in items]
    yield url, items, expected
    serve.delete("faults")


def _answer(response: str) -> str:
    return response.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]


def _scorer_replicas() -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and "faults#PRMUScorer" in a["name"]]


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


def test_an_rl_run_rides_out_a_reward_service_outage(service, tiny_policy, tmp_path):
    """The reward service goes away for a while in the middle of an RL run (``default`` policy): the
    groups it could not score are not trained on, their prompts go back to the queue, and the run
    finishes once the service is back, every prompt trained on exactly once."""
    import json
    from collections import Counter

    from tagpr.config import SyntheticConfig, load_config
    from tagpr.jobs.rl import train
    from tagpr.lamp.synthetic import write_synthetic

    url, _, _ = service
    target = urlparse(url)
    proxy = FaultProxy(target.port, free_port())
    write_synthetic(tmp_path / "data", SyntheticConfig(users={"train": 8, "dev": 2}), ["LaMP_1", "LaMP_2"])
    cfg = load_config(None, [
        f"run.root={tmp_path / 'runs'}", f"data.root={tmp_path / 'data'}", "data.tasks=[LaMP_1, LaMP_2]",
        "data.prompt_profile_items=4", f"model.policy={tiny_policy}", "rl.group_size=4", "rl.prompts_per_step=2",
        "rl.max_staleness=1", "rollout.max_tokens=24", "rollout.prompts_per_request=2",
        "rollout.engine.max_model_len=1024", "rollout.num_cpus=0", "rl.eval_limit=0",
        "rl.stages=[{name: guided, steps: 6, weights: {format_task: 1.0, tag: 0.2, prmu: 0.3}}]",
        "rollout.reward_via=http", f"rollout.reward_url={proxy.url}{target.path}",
        "rollout.reward_failure_policy=default",
    ])
    outage = {}

    def cut_the_service_after_step_two():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            found = list((tmp_path / "runs").glob("*/metrics.jsonl"))
            if found and sum('"prefix": "learner"' in line for line in found[0].read_text().splitlines()) >= 2:
                outage["at_step"] = 2
                break
            time.sleep(0.2)
        proxy.down()
        time.sleep(8)
        proxy.up()

    cutter = threading.Thread(target=cut_the_service_after_step_two, daemon=True)
    cutter.start()
    try:
        report = train(cfg, log=lambda _: None)
    finally:
        cutter.join(timeout=30)
        proxy.close()
    lines = [json.loads(line) for line in (Path(report["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    steps = {m["step"]: m["prompts"] for m in lines if m["prefix"] == "learner"}
    assert outage.get("at_step") == 2
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert Counter(p for ps in steps.values() for p in ps).most_common(1)[0][1] == 1
    assert report["buffer"]["dropped"].get("reward unavailable", 0) > 0
