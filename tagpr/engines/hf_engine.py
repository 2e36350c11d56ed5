"""The HF transformers adapter: same interface as vLLM's, for hosts without vLLM and as the logprob reference.

Logprobs are of the distribution tokens are sampled from at the request's temperature (before
top-p), the same convention as the vLLM adapter's, so the two engines' numbers compare directly and
the learner, which scores at the rollout temperature, sees them on its own scale.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch

from tagpr.config import EngineConfig
from tagpr.engines.base import Completion, Engine, EngineInput, Generation, Sampling, Weights

STOP_MARGIN = 4  # tokens: a match may start inside a token, and a window's first token may decode differently


def stop_window(stop: Sequence[str]) -> int:
    """Trailing tokens that hold any match of ``stop`` ending in the newest token: every token adds at least
    one byte to the text, so a string of b UTF-8 bytes spans at most b tokens."""
    return max((len(x.encode()) for x in stop), default=0) + STOP_MARGIN


class HFEngine(Engine):
    name = "hf"

    def __init__(self, model: str, dtype: str, cfg: EngineConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path, self.cfg = model, cfg
        self.tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        self.base = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype), local_files_only=True)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.base.to(self.device).eval()
        self.model = self.base  # the base, or a PeftModel around it once an adapter is loaded
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def _ids(self, p: EngineInput) -> list[int]:
        return self.tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)

    @torch.no_grad()
    def generate(self, prompts: Sequence[EngineInput], sampling: Sampling) -> list[Generation]:
        gens = [Generation(self._ids(p)) for p in prompts]
        for g in gens:  # as vLLM refuses them
            if len(g.prompt_token_ids) >= self.cfg.max_model_len:
                raise ValueError(f"the prompt ({len(g.prompt_token_ids)} tokens) does not fit the engine's "
                                 f"max_model_len ({self.cfg.max_model_len})")
        rows = [g for g in gens for _ in range(sampling.n)]
        seed = sampling.seed if sampling.seed is not None else self.cfg.seed
        gen = torch.Generator(device=self.device).manual_seed(seed)
        for i in range(0, len(rows), self.cfg.batch_size):
            for g, c in zip(rows[i:i + self.cfg.batch_size],
                            self._batch([g.prompt_token_ids for g in rows[i:i + self.cfg.batch_size]], sampling, gen)):
                g.completions.append(c)
        return gens

    def _batch(self, prompts: list[list[int]], s: Sampling, gen: torch.Generator) -> list[Completion]:
        width = max(map(len, prompts))
        ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        eos = self.tokenizer.eos_token_id
        out_ids: list[list[int]] = [[] for _ in prompts]
        out_lp: list[list[float]] = [[] for _ in prompts]
        cut: list[str | None] = [None] * len(prompts)  # the text of a row a stop string ended
        window = stop_window(s.stop)
        done = [False] * len(prompts)
        reason = ["length"] * len(prompts)
        past, step_ids = None, ids
        for _ in range(s.max_tokens):
            res = self.model(input_ids=step_ids, attention_mask=mask, position_ids=pos, past_key_values=past,
                             use_cache=True)
            past, logits = res.past_key_values, res.logits[:, -1].float()
            logp = torch.log_softmax(logits / s.temperature if s.temperature > 0 else logits, -1)
            nxt = self._sample(logits, s, gen)
            chosen = logp.gather(-1, nxt[:, None])[:, 0].tolist()  # one device sync per token, not per row
            for r, t in enumerate(nxt.tolist()):
                if done[r]:
                    continue
                out_ids[r].append(t)
                out_lp[r].append(chosen[r])
                if t == eos:
                    done[r], reason[r] = True, "stop"
                elif s.stop and (text := self._stop_cut(out_ids[r], s, window)) is not None:
                    done[r], reason[r], cut[r] = True, "stop", text
            if all(done):
                break
            step_ids = nxt[:, None]
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype, device=self.device)], dim=1)
            pos = pos[:, -1:] + 1
        texts = [self.tokenizer.decode(i, skip_special_tokens=True) if c is None else c for c, i in zip(cut, out_ids)]
        return [Completion(t, i, lp if s.logprobs else None, r) for t, i, lp, r in zip(texts, out_ids, out_lp, reason)]

    def _stop_cut(self, ids: list[int], s: Sampling, window: int) -> str | None:
        """The text cut after (or before) the first stop string in it, or None while it holds none.

        A match that is new at this token ends within the last ``window`` tokens, so only they are decoded
        per step (decoding the whole text each step is quadratic in its length); the whole text is decoded
        once, on a match.
        """
        tail = self.tokenizer.decode(ids[-window:], skip_special_tokens=True)
        if not any(x in tail for x in s.stop):
            return None
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hit = next((x for x in s.stop if x in text), None)
        return None if hit is None else text[: text.index(hit) + (len(hit) if s.include_stop else 0)]

    @staticmethod
    def _sample(logits: torch.Tensor, s: Sampling, gen: torch.Generator) -> torch.Tensor:
        if s.temperature == 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / s.temperature, -1)
        if s.top_p < 1:
            sorted_p, order = probs.sort(-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < s.top_p
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
        return torch.multinomial(probs, 1, generator=gen)[:, 0]

    @torch.no_grad()
    def load_weights(self, weights: Weights, timeout_s: float | None = None) -> None:
        if isinstance(weights, (str, os.PathLike)):
            from safetensors.torch import load_file

            state = {k: v for f in sorted(Path(weights).glob("*.safetensors")) for k, v in load_file(f).items()}
        else:
            state = dict(weights)
        own = self.base.state_dict()
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise KeyError(f"weights not in the model: {unknown[:5]}")
        for name, value in state.items():
            own[name].copy_(torch.as_tensor(value))

    def load_adapter(self, path: str, adapter_id: int) -> None:
        from peft import PeftModel

        name = f"policy-{adapter_id}"
        if self.model is self.base:
            self.model = PeftModel.from_pretrained(self.base, path, adapter_name=name)
        else:
            self.model.load_adapter(path, adapter_name=name)
        self.model.set_adapter(name)
        self.model.eval()

    def health(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model_path, "device": str(self.device), "ok": True}
