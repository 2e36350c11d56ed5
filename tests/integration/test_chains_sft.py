"""The chains job on Ray Data and SFT on Ray Train, end to end on a small synthetic set."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small(ray_cluster, tmp_path_factory):
    from tagpr.config import load_config
    from tagpr.lamp.synthetic import write_synthetic
    from tagpr.models import build_tiny_policy

    root = tmp_path_factory.mktemp("chains")
    cfg = load_config(None, [
        f"run.root={root / 'runs'}", f"data.root={root / 'data'}", f"chains.out={root / 'chains'}",
        f"model.policy={root / 'policy'}", "data.tasks=[LaMP_2, LaMP_7]",
        "data.synthetic.users={train: 8, dev: 2}", "data.synthetic.questions_per_user=2",
        "data.synthetic.profile_size=4", "chains.batch_size=8", "sft.epochs=1", "sft.batch_size=8",
        "sft.num_workers=2", "data.prompt_profile_items=4",
    ])
    write_synthetic(cfg.data.root, cfg.data.synthetic, cfg.data.tasks)
    build_tiny_policy(cfg.model, cfg.tags, cfg.model.policy)
    return cfg


def test_chains_job_writes_and_resumes(small):
    from tagpr.jobs.chains import generate

    summary = generate(small, log=lambda _: None)
    out = Path(small.chains.out)
    train = [json.loads(line) for line in (out / "train.jsonl").open()]
    assert summary.splits["train"].chains == len(train) >= 20  # 32 questions x 2 samples, duplicates dropped
    assert sum(summary.splits["train"].dropped_this_run.values()) + len(train) == 64
    assert set(summary.splits["train"].per_task) == {"LaMP_2", "LaMP_7"}
    assert summary.splits["train"].tag_distribution["examine_examples"] > 0
    assert (out / "stats.json").exists() and (out / "tag_distribution.png").stat().st_size > 1000
    assert len((out / "train.done").read_text().split()) == 32
    again = generate(small, log=lambda _: None)
    assert again.splits["train"].kept_this_run == 0 and again.splits["train"].chains == len(train)
    done = (out / "train.done").read_text().split()
    (out / "train.done").write_text("\n".join(done[:-4]) + "\n")  # as if stopped mid-way
    resumed = generate(small, ["train"], log=lambda _: None)
    assert sum(resumed.splits["train"].dropped_this_run.values()) + resumed.splits["train"].kept_this_run == 8
    assert resumed.splits["train"].dropped_this_run.get("duplicate", 0) >= 1


def two_chains_per_question(cfg, out: Path):
    """``cfg`` with ``chains.out`` a copy of its chains with a second chain per question (the gold
    answer alone), so SFT trains each question's prompt once for both (``sft.shared_prefix``)."""
    from tagpr.tags import TagSet

    tags = TagSet(cfg.tags)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev"):
        rows = [json.loads(line) for line in (Path(cfg.chains.out) / f"{split}.jsonl").open()]
        rows += [{**r, "response": tags.render((), r["gold"])} for r in rows]
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return cfg.model_copy(update={"chains": cfg.chains.model_copy(update={"out": str(out)})})


def test_sft_two_workers_then_resume_and_vllm_loads(small):
    from tagpr.jobs.chains import generate
    from tagpr.jobs.sft import train

    generate(small, log=lambda _: None)
    small = two_chains_per_question(small, Path(small.run.root) / "chains-two-per-question")
    first = train(small, log=lambda _: None, evaluate=False)
    assert first.history["epoch"] == 1 and first.history["dev_loss"] > 0
    assert first.history["shared_prefix"]  # each question's prompt ran once for its two chains
    state = Path(first.policy)
    assert (state / "model.safetensors").exists() and (state / "tokenizer.json").exists()
    ckpts = sorted(p for p in Path(small.run.root).glob("*-sft-*/ray_train/sft/checkpoint_*") if p.is_dir())
    resumed_cfg = small.model_copy(update={"sft": small.sft.model_copy(update={
        "epochs": 2, "resume_from": str(ckpts[-1]), "num_workers": 1})})
    second = train(resumed_cfg, log=lambda _: None, evaluate=False)
    assert second.history["epoch"] == 2 and second.history["train_loss"] < first.history["train_loss"]

    from vllm import LLM, SamplingParams

    llm = LLM(model=second.policy, dtype="float32", enforce_eager=True, distributed_executor_backend="uni",
              max_model_len=1024, gpu_memory_utilization=0.5)
    out = llm.generate(["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"],
                       SamplingParams(max_tokens=8, temperature=0))[0].outputs[0]
    assert len(out.token_ids) >= 1


@pytest.mark.parametrize("stage", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_sft_deepspeed_two_workers_then_resume(small, stage, tmp_path):
    """ZeRO-2/3 over gloo in two Ray Train workers, each question's prompt once for its two chains; the
    second run resumes DeepSpeed's partitions."""
    import torch

    from tagpr.jobs.chains import generate
    from tagpr.jobs.sft import train
    from tagpr.models import load_policy

    generate(small, log=lambda _: None)
    small = two_chains_per_question(small, tmp_path / "chains")
    ds = small.sft.model_copy(update={"strategy": "deepspeed", "zero_stage": stage, "num_workers": 2})
    first = train(small.model_copy(update={"sft": ds}), log=lambda _: None, evaluate=False)
    assert first.history["shared_prefix"]
    ckpt = Path(first.policy).parent / "ray_train" / "sft"
    ckpt = sorted(p for p in ckpt.glob("checkpoint_*") if p.is_dir())[-1]
    assert len(list((ckpt / "deepspeed" / "state").glob("*optim_states.pt"))) == 2  # one partition per rank
    resumed = ds.model_copy(update={"epochs": 2, "resume_from": str(ckpt)})
    second = train(small.model_copy(update={"sft": resumed}), log=lambda _: None, evaluate=False)
    assert second.history["epoch"] == 2 and second.history["train_loss"] < first.history["train_loss"]
    base, _ = load_policy(small.model)
    tuned, _ = load_policy(small.model, second.policy)
    assert not (Path(second.policy) / "deepspeed").exists()
    assert any(not torch.equal(a, b) for a, b in zip(base.state_dict().values(), tuned.state_dict().values()))


def test_sft_lora_exports_merged_model_and_adapter(small, tmp_path):
    from tagpr.jobs.chains import generate
    from tagpr.jobs.sft import train
    from tagpr.models import load_policy

    generate(small, log=lambda _: None)
    small = two_chains_per_question(small, tmp_path / "chains")
    cfg = small.model_copy(update={"sft": small.sft.model_copy(update={
        "num_workers": 1, "lora": small.sft.lora.model_copy(update={"enabled": True})})})
    result = train(cfg, log=lambda _: None, evaluate=False)
    assert result.history["shared_prefix"]
    out = Path(result.policy)
    assert (out / "adapter" / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    model, _ = load_policy(cfg.model, str(out))
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_vllm_teacher_pool_and_llm_labeler(small, tmp_path):
    """The chain job with an in-cluster vLLM engine as teacher and the llm labeler asking it for tags.

    The tiny policy has random weights, so its replies carry no ``Answer:`` line: each sample must
    be dropped and counted as malformed, without failing the job.
    """
    from tagpr.chains.teachers import VLLMTeacher
    from tagpr.jobs.chains import generate

    cfg = small.model_copy(update={"chains": small.chains.model_copy(update={
        "teacher": "vllm", "labeler": "llm", "out": str(tmp_path / "chains"), "samples_per_question": 2,
        "vllm": small.chains.vllm.model_copy(update={
            "model": small.model.policy, "max_tokens": 24, "label_max_tokens": 16,
            "engine": small.chains.vllm.engine.model_copy(update={"max_model_len": 1024})})})})
    teacher = VLLMTeacher(cfg)
    try:
        replies = teacher.chat([[{"role": "user", "content": "hi"}]] * 2, n=3, max_tokens=8)
        assert [len(r.texts) + sum(r.errors.values()) for r in replies] == [3, 3]
        outs = teacher.generate([], 1)
        assert outs == []
    finally:
        teacher.engine.close()
    summary = generate(cfg, ["dev"], log=lambda _: None)
    dev = summary.splits["dev"]
    assert dev.chains == 0 and dev.kept_this_run == 0
    assert sum(dev.dropped_this_run.values()) == 2 * 8  # 2 users x 2 questions x 2 tasks, 2 samples each
    assert set(dev.dropped_this_run) <= {"malformed", "empty"}
