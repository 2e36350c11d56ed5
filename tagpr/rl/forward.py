"""How the learner runs the policy on a :class:`~tagpr.rl.batch.PolicyBatch`: the logits that
predicted each response token, ``(B, T, V)``, and nothing more.

Two ways, the same numbers:

- per sequence: each row's prompt and response in one pass;
- shared prefix: each distinct prompt runs once with its key/value cache kept, the cache is
  expanded to the rows that continue that prompt, and the responses run on it. A GRPO group's G
  samples share their prompt, and TagPR's prompts carry the user's profile, so the prompt is most
  of a row's tokens. Gradients reach the prompt's activations from every row that continues it (the
  sum), so the gradient equals the per-sequence path's.

A micro-batch whose prompts are all distinct (one row each) runs per sequence: one pass does the
same work as the two. Either way the LM head runs only where the loss reads (``logits_to_keep``).
The wrapper is the module the training strategy wraps (DDP, DeepSpeed), so both passes are one
``forward``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from tagpr.config import Switch

log = logging.getLogger(__name__)


class ResponseLM(torch.nn.Module):
    """A causal LM (HF, or PEFT over one) scoring responses; ``lm`` is the model to save and publish."""

    def __init__(self, lm: torch.nn.Module, shared_prefix: bool):
        super().__init__()
        self.lm, self.shared_prefix = lm, shared_prefix

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor, prompt_index: Tensor, response_ids: Tensor,
                response_attention: Tensor) -> Tensor:
        if self.shared_prefix and len(prompt_ids) < len(prompt_index):  # some prompt continues in several rows
            return self._shared(prompt_ids, prompt_mask, prompt_index, response_ids, response_attention)
        return self._per_sequence(prompt_ids, prompt_mask, prompt_index, response_ids, response_attention)

    def _per_sequence(self, prompt_ids, prompt_mask, prompt_index, response_ids, response_attention) -> Tensor:
        t = response_ids.shape[1]
        mask = torch.cat([prompt_mask[prompt_index], response_attention], 1)
        out = self.lm(input_ids=torch.cat([prompt_ids[prompt_index], response_ids], 1), attention_mask=mask,
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0), logits_to_keep=t + 1, use_cache=False)
        return out.logits[:, :t]  # the last kept position predicts past the response

    def _shared(self, prompt_ids, prompt_mask, prompt_index, response_ids, response_attention) -> Tensor:
        p, t = prompt_ids.shape[1], response_ids.shape[1]
        first = self.lm(input_ids=prompt_ids, attention_mask=prompt_mask,
                        position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, logits_to_keep=1)
        logits = first.logits[prompt_index]  # the prompt's last position predicts the first response token
        if t == 1:
            return logits
        cache = first.past_key_values
        cache.reorder_cache(prompt_index)  # one copy of the prompt's keys/values per row
        lengths = prompt_mask.sum(-1)[prompt_index, None]
        rest = self.lm(input_ids=response_ids[:, :-1],
                       attention_mask=torch.cat([prompt_mask[prompt_index], response_attention[:, :-1]], 1),
                       position_ids=lengths + torch.arange(t - 1, device=lengths.device), past_key_values=cache,
                       cache_position=torch.arange(p, p + t - 1, device=lengths.device), use_cache=True)
        return torch.cat([logits, rest.logits], 1)


def response_lm(lm: torch.nn.Module, mode: Switch) -> ResponseLM:
    """``lm`` wrapped for scoring; ``auto`` shares prompts when this model gives the per-sequence
    logits that way on a small probe (models whose attention or cache do not, fall back with a warning)."""
    if mode != "auto":
        return ResponseLM(lm, mode == "on")
    ok, why = probe_shared_prefix(lm)
    if not ok:
        log.warning("shared-prefix scoring is off for this model (%s); each response runs with its prompt", why)
    return ResponseLM(lm, ok)


@torch.no_grad()
def probe_shared_prefix(lm: torch.nn.Module, atol: float = 1e-4) -> tuple[bool, str]:
    """Whether both paths agree on a batch mixing prompt and response lengths (and left padding),
    on the device ``lm`` is on."""
    from tagpr.rl.batch import Row, collate
    from tagpr.rl.trajectory import PromptRef, Trajectory

    vocab = lm.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    prompts = [ids(7), ids(4)]
    rows = [Row(Trajectory(PromptRef(i, str(i)), prompts[i % 2], ids(n), [0.0] * n, "", {}, 0, "probe"), 1.0)
            for i, n in enumerate((3, 5, 1, 4))]
    b = collate(rows, pad_id=0).to(next(lm.parameters()).device)
    training = lm.training
    lm.eval()  # no dropout between the two passes
    try:
        got = ResponseLM(lm, True)(**b.model_inputs())
        want = ResponseLM(lm, False)(**b.model_inputs())
    except Exception as exc:  # noqa: BLE001  any failure means: not this way
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        lm.train(training)
    mask = b.response_attention.bool()
    err = (got.float() - want.float()).abs()[mask].max().item()
    return err <= atol, f"max logit difference {err:.2e} on the probe"
