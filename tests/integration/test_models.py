"""The embedded tiny policy loads in transformers and in vLLM (CPU build) and both agree."""

import pytest

from tagpr.errors import TagPRError
from tagpr.models import EOS_TOKEN, build_tiny_policy, load_policy, resolve_model_path, tag_tokens

pytestmark = pytest.mark.integration

PROMPT = [{"role": "user", "content": "Which tag? description: a starship crew"}]


@pytest.fixture(scope="module")
def tiny_dir(tiny_policy):
    return tiny_policy


def test_tiny_policy_shape_and_tokenizer(tiny_dir, cfg):
    model, tok = load_policy(cfg.model, str(tiny_dir))
    assert not model.config.tie_word_embeddings
    head = model.config.hidden_size // model.config.num_attention_heads
    assert 32 <= head <= 512
    for t in tag_tokens(cfg.tags):
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    text = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert tok.eos_token == EOS_TOKEN and model.generation_config.eos_token_id == tok.eos_token_id
    sample = "<examine_examples>Item 1: comedy.</examine_examples><answer>comedy</answer>"
    assert tok.decode(tok(sample)["input_ids"]) == sample


def test_build_is_deterministic(tiny_dir, cfg, tmp_path):
    again = build_tiny_policy(cfg.model, cfg.tags, tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_text() == (tiny_dir / "tokenizer.json").read_text()


def test_load_errors_are_user_errors(tmp_path, cfg):
    with pytest.raises(TagPRError, match="hub downloads are off"):
        resolve_model_path("some-org/some-model", allow_hub=False)
    with pytest.raises(TagPRError, match="no config.json"):
        resolve_model_path(str(tmp_path), allow_hub=False)


def test_vllm_loads_tiny_policy_and_matches_hf(tiny_dir, cfg):
    import torch
    from vllm import LLM, SamplingParams

    model, tok = load_policy(cfg.model, str(tiny_dir))
    prompt = tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    llm = LLM(model=str(tiny_dir), dtype="float32", enforce_eager=True, distributed_executor_backend="uni",
              max_model_len=512, seed=0, gpu_memory_utilization=0.5)
    out = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0.0, logprobs=0))[0].outputs[0]
    assert len(out.token_ids) >= 1
    # Greedy continuation and its logprobs match transformers on the same weights.
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    full = torch.cat([ids, torch.tensor([list(out.token_ids)])], dim=1)
    with torch.no_grad():
        logits = model(full).logits[0, ids.shape[1] - 1 : -1]
    hf_lp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(out.token_ids)[:, None])[:, 0]
    vllm_lp = torch.tensor([lp[t].logprob for lp, t in zip(out.logprobs, out.token_ids)])
    assert torch.allclose(hf_lp, vllm_lp, atol=1e-3), (hf_lp, vllm_lp)
    assert list(out.token_ids) == logits.argmax(-1).tolist()
