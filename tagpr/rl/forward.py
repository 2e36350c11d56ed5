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
from collections.abc import Sequence

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


def response_inputs(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                    pad_id: int) -> dict[str, Tensor]:
    """:class:`ResponseLM`'s keyword arguments for rows of (prompt, response) token ids: each distinct
    prompt once, left-padded, with the index of the prompt each response continues, and the responses
    right-padded."""
    table: dict[tuple[int, ...], int] = {}
    index = [table.setdefault(tuple(x), len(table)) for x in prompts]
    p, t = max(map(len, table)), max(1, max(map(len, responses)))
    return {"prompt_ids": torch.tensor([[pad_id] * (p - len(x)) + list(x) for x in table]),
            "prompt_mask": torch.tensor([[0] * (p - len(x)) + [1] * len(x) for x in table]),
            "prompt_index": torch.tensor(index),
            "response_ids": torch.tensor([list(r) + [pad_id] * (t - len(r)) for r in responses]),
            "response_attention": torch.tensor([[1] * len(r) + [0] * (t - len(r)) for r in responses])}


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
    vocab = lm.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    prompts = [ids(7), ids(4)]
    device = next(lm.parameters()).device
    b = {k: v.to(device) for k, v in response_inputs([prompts[i % 2] for i in range(4)],
                                                     [ids(n) for n in (3, 5, 1, 4)], pad_id=0).items()}
    training = lm.training
    lm.eval()  # no dropout between the two passes
    try:
        got, want = ResponseLM(lm, True)(**b), ResponseLM(lm, False)(**b)
    except Exception as exc:  # noqa: BLE001  any failure means: not this way
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        lm.train(training)
    mask = b["response_attention"].bool()
    err = (got.float() - want.float()).abs()[mask].max().item()
    return err <= atol, f"max logit difference {err:.2e} on the probe"
