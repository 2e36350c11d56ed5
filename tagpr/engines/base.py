"""The engine interface: prompts in, sampled completions with token ids and logprobs out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from tagpr.config import EngineConfig
from tagpr.registry import Registry

EngineInput = str | Sequence[int]  # a chat-templated prompt text, or its token ids
# New policy weights: (name, tensor) pairs under the HF checkpoint's names, or an HF folder of safetensors.
Weights = Iterable[tuple[str, Any]] | str | Path


@dataclass(frozen=True)
class Sampling:
    """Sampling knobs shared by every engine; ``temperature=0`` is greedy."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    include_stop: bool = True  # keep the matched stop string (``</answer>``) in the text
    seed: int | None = None
    logprobs: bool = True

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError("n and max_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float] | None  # of each sampled token under the engine's weights, at the temperature
    finish_reason: str  # "stop" (eos or a stop string) or "length"


@dataclass
class Generation:
    prompt_token_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


class Engine:
    """What rollout workers, teachers and evaluation may rely on."""

    name: str
    tokenizer: Any  # the policy's HF tokenizer (chat template, decoding)

    def generate(self, prompts: Sequence[EngineInput], sampling: Sampling) -> list[Generation]:
        raise NotImplementedError

    def load_weights(self, weights: Weights, timeout_s: float | None = None) -> None:
        """Replace the policy's weights in place (every weight; the architecture is unchanged)."""
        raise NotImplementedError

    def load_adapter(self, path: str, adapter_id: int) -> None:
        """Generate with the PEFT adapter in ``path`` from now on; a new version comes under a new id."""
        raise NotImplementedError

    def reset_cache(self) -> None:
        """Drop cached prefixes (after new weights, a cached prefix holds stale keys and values)."""

    def health(self) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine's memory; the object is unusable afterwards."""


ENGINES: Registry[str] = Registry("engine")
ENGINES.add("vllm", "tagpr.engines.vllm_engine:VLLMEngine")
ENGINES.add("hf", "tagpr.engines.hf_engine:HFEngine")


def make_engine(cfg: EngineConfig, model: str, dtype: str = "float32") -> Engine:
    """Build the engine registered as ``cfg.kind`` for the HF folder ``model``.

    Engine modules load on first use, so a host that only runs ``hf`` never imports vLLM.
    """
    import importlib

    module, _, attr = ENGINES.get(cfg.kind).partition(":")
    return getattr(importlib.import_module(module), attr)(model, dtype, cfg)
