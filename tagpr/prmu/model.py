"""PRMU networks over frozen sentence embeddings.

Both variants build the same *user vector*: attention over the user's profile-item embeddings
with the current input's embedding as the query (which past items matter depends on what is
asked), plus, for users seen in training, a learned user-id embedding. Unseen users get the
history-pooled vector alone; training drops the id at random so that path is learned too.

- ``encoder`` (default): an MLP head over ``[u; h; u*h; m]`` where ``h`` encodes (input, answer)
  and ``m`` are match features: cosine similarities between the answer and the labels the user
  gave in the past (max, mean, and weighted by how similar each past item is to the input).
  They carry the inductive bias that generalizes to unseen users; without them a small head
  memorizes training users through ``h``.
- ``causal_lm`` (large scale): a causal LM backbone reads ``k`` soft prefix tokens projected
  from ``u`` followed by the input and answer tokens; a value head on the last token scores it.

``user_blind=True`` builds the ablation the PRMU is measured against: the same network without
its user path (no pooling, no id table, no match features; zeros stand in for ``u`` and ``m``),
whose ``featurize`` drops the profile and user id, so it is trained and tested on (input, answer)
alone. Zeroing a trained PRMU's user vector at test time would instead measure a network that
never learned to work without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from tagpr.prmu.encoder import SentenceEncoder
from tagpr.prmu.features import PRMUBatch, PRMUExample, embed_examples, without_user
from tagpr.registry import Registry


class UserPooling(nn.Module):
    """Query-aware attention pooling of profile items, plus an optional learned id embedding."""

    def __init__(self, dim: int, hidden: int, num_users: int):
        super().__init__()
        self.q = nn.Linear(dim, hidden)  # from the input
        self.k, self.v = nn.Linear(2 * dim, hidden), nn.Linear(2 * dim, hidden)  # from [label; context]
        self.ids = nn.Embedding(num_users, hidden) if num_users > 0 else None
        self.scale = 1.0 / math.sqrt(hidden)

    def forward(self, b: PRMUBatch) -> torch.Tensor:
        logits = torch.einsum("bh,bph->bp", self.q(b.query), self.k(b.items)) * self.scale
        logits = logits.masked_fill(~b.mask, float("-inf"))
        weights = torch.nan_to_num(torch.softmax(logits, dim=-1))  # an empty profile pools to zero
        u = torch.einsum("bp,bph->bh", weights, self.v(b.items))
        if self.ids is not None:
            known = b.user_idx >= 0
            u = u + self.ids(b.user_idx.clamp(min=0)) * known.unsqueeze(-1)
        return u


class PRMUNet(nn.Module):
    """Common interface: ``featurize`` examples once, then ``forward(features)``."""

    variant: str

    def __init__(self, dim: int, hidden: int, num_users: int, user_blind: bool):
        super().__init__()
        self.user_blind, self.hidden = user_blind, hidden
        self.user = None if user_blind else UserPooling(dim, hidden, num_users)

    def featurize(self, examples: Sequence[PRMUExample], encoder: SentenceEncoder, user_index: dict[str, int]) -> Any:
        raise NotImplementedError

    def visible(self, examples: Sequence[PRMUExample], user_index: dict[str, int]
                ) -> tuple[Sequence[PRMUExample], dict[str, int]]:
        """What this network may read of the examples: everything, or (input, answer) when user-blind."""
        if self.user_blind:
            return [without_user(e) for e in examples], {}
        return examples, user_index

    def user_vector(self, b: PRMUBatch) -> torch.Tensor:
        return torch.zeros(b.query.shape[0], self.hidden) if self.user is None else self.user(b)


@dataclass
class EncoderFeatures:
    batch: PRMUBatch

    def index(self, rows: torch.Tensor) -> "EncoderFeatures":
        return EncoderFeatures(self.batch.index(rows))

    def drop_users(self, drop: torch.Tensor) -> "EncoderFeatures":
        b = self.batch
        return EncoderFeatures(PRMUBatch(b.items, b.mask, b.query, b.answer, b.user_idx.masked_fill(drop, -1)))

    def __len__(self) -> int:
        return self.batch.query.shape[0]


def match_features(b: PRMUBatch, temperature: float = 0.1) -> torch.Tensor:
    """[B, 3]: answer-to-past-label cosine similarity: max, mean, and input-relevance weighted."""
    dim = b.query.shape[-1]
    labels, contexts = b.items[..., :dim], b.items[..., dim:]
    sim = torch.einsum("bd,bpd->bp", b.answer, labels)
    count = b.mask.sum(-1).clamp(min=1)
    best = sim.masked_fill(~b.mask, -1.0).max(-1).values.masked_fill(~b.mask.any(-1), 0.0)
    mean = (sim * b.mask).sum(-1) / count
    relevance = torch.einsum("bd,bpd->bp", b.query, contexts) / temperature
    weights = torch.nan_to_num(torch.softmax(relevance.masked_fill(~b.mask, float("-inf")), dim=-1))
    return torch.stack([best, mean, (weights * sim).sum(-1)], dim=-1)


class EncoderPRMU(PRMUNet):
    variant = "encoder"

    def __init__(self, dim: int, hidden: int, num_users: int, user_blind: bool = False):
        super().__init__(dim, hidden, num_users, user_blind)
        self.response = nn.Sequential(nn.Linear(2 * dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.head = nn.Sequential(nn.Linear(3 * hidden + 3, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def featurize(self, examples, encoder, user_index):
        examples, user_index = self.visible(examples, user_index)
        return EncoderFeatures(embed_examples(examples, encoder, user_index))

    def forward(self, f: EncoderFeatures) -> torch.Tensor:
        b = f.batch
        u = self.user_vector(b)
        m = torch.zeros(u.shape[0], 3) if self.user_blind else match_features(b)
        h = self.response(torch.cat([b.query, b.answer], dim=-1))
        return self.head(torch.cat([u, h, u * h, m], dim=-1)).squeeze(-1)


@dataclass
class CausalFeatures:
    batch: PRMUBatch
    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def index(self, rows: torch.Tensor) -> "CausalFeatures":
        return CausalFeatures(self.batch.index(rows), self.input_ids[rows], self.attention_mask[rows])

    def drop_users(self, drop: torch.Tensor) -> "CausalFeatures":
        return CausalFeatures(EncoderFeatures(self.batch).drop_users(drop).batch, self.input_ids, self.attention_mask)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class CausalPRMU(PRMUNet):
    variant = "causal_lm"

    def __init__(self, dim: int, hidden: int, num_users: int, backbone: nn.Module, tokenizer: Any,
                 prefix_tokens: int, max_length: int = 256, user_blind: bool = False):
        super().__init__(dim, hidden, num_users, user_blind)
        self.backbone, self.tokenizer = backbone, tokenizer
        width = backbone.config.hidden_size
        self.prefix = nn.Linear(hidden, prefix_tokens * width)
        self.value = nn.Linear(width, 1)
        self.k, self.width, self.max_length = prefix_tokens, width, max_length

    def featurize(self, examples, encoder, user_index):
        examples, user_index = self.visible(examples, user_index)
        texts = [f"{e.input}\n{e.answer}" for e in examples]
        self.tokenizer.padding_side = "right"
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
                             add_special_tokens=False)
        return CausalFeatures(embed_examples(examples, encoder, user_index), tok["input_ids"], tok["attention_mask"])

    def forward(self, f: CausalFeatures) -> torch.Tensor:
        u = self.user_vector(f.batch)
        n = u.shape[0]
        prefix = self.prefix(u).view(n, self.k, self.width)
        tokens = self.backbone.get_input_embeddings()(f.input_ids)
        embeds = torch.cat([prefix, tokens], dim=1)
        mask = torch.cat([torch.ones(n, self.k, dtype=f.attention_mask.dtype), f.attention_mask], dim=1)
        out = self.backbone(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
        last = mask.sum(1) - 1  # right padding: the last real position
        hidden = out.hidden_states[-1][torch.arange(n), last]
        return self.value(hidden).squeeze(-1)


VARIANTS: Registry[type[PRMUNet]] = Registry("PRMU variant")
VARIANTS.add("encoder", EncoderPRMU)
VARIANTS.add("causal_lm", CausalPRMU)
