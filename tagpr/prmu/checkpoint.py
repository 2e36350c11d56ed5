"""PRMU checkpoints: building a network from config, saving and loading it.

Layout of a checkpoint folder::

    prmu.json           format, version string, variant, encoder, sizes, training config, metrics,
                        ``user_blind``, and ``score_stats`` (mean and std of the raw score on the
                        training pairs, for mapping raw scores to [0, 1] in the reward)
    users.json          user id -> row of the learned user table (users seen in training)
    model.safetensors   the network's weights (the frozen sentence encoder is referenced, not copied)
    backbone/           causal_lm variant only: the backbone's HF config and tokenizer
    user_blind/         the separately trained user-blind baseline, a checkpoint folder of its own
    embeddings.pt       optional: the sentence encoder's embeddings of the texts training and
                        evaluation read (profile items, inputs, answers), preloaded by the scorer

The version string (``prmu-<UTC time>-<first 8 hex of the weights' sha256>``) is what the reward
service reports, so a client can tell which model scored it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from tagpr.config import PRMUConfig
from tagpr.errors import TagPRError
from tagpr.models import resolve_model_path
from tagpr.prmu.model import VARIANTS, PRMUNet

FORMAT = 1
META = "prmu.json"
USERS = "users.json"
WEIGHTS = "model.safetensors"
BLIND = "user_blind"
EMBEDDINGS = "embeddings.pt"


def build_net(cfg: PRMUConfig, dim: int, num_users: int, backbone_path: str | None = None,
              allow_hub: bool = False, user_blind: bool = False) -> PRMUNet:
    cls = VARIANTS.get(cfg.variant)
    users = num_users if cfg.user_id_embedding and not user_blind else 0
    if cfg.variant == "causal_lm":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if backbone_path is None:
            raise TagPRError("PRMU variant 'causal_lm' needs a backbone (prmu.backbone or model.policy)")
        path = resolve_model_path(backbone_path, allow_hub)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=not allow_hub)
        backbone = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=not allow_hub)
        return cls(dim, cfg.hidden_size, users, backbone, tokenizer, cfg.prefix_tokens, cfg.max_length,
                   user_blind=user_blind)
    return cls(dim, cfg.hidden_size, users, user_blind=user_blind)


def save(net: PRMUNet, out_dir: str | Path, cfg: PRMUConfig, encoder: str, dim: int, user_index: dict[str, int],
         metrics: dict[str, Any] | None = None, score_stats: dict[str, float] | None = None) -> str:
    """Write a checkpoint folder; returns its version string."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, out / WEIGHTS)
    digest = hashlib.sha256((out / WEIGHTS).read_bytes()).hexdigest()[:8]
    now = dt.datetime.now(dt.timezone.utc)
    version = f"prmu-{now.strftime('%Y%m%dT%H%M%SZ')}-{digest}"
    if net.variant == "causal_lm":
        net.backbone.config.save_pretrained(out / "backbone")
        net.tokenizer.save_pretrained(out / "backbone")
    (out / USERS).write_text(json.dumps(user_index))
    meta = {
        "format": FORMAT, "version": version, "created": now.isoformat(), "variant": net.variant,
        "encoder": encoder, "dim": dim, "num_users": len(user_index), "config": cfg.model_dump(mode="json"),
        "user_blind": net.user_blind, "metrics": metrics or {},
    }
    if score_stats is not None:
        meta["score_stats"] = score_stats
    (out / META).write_text(json.dumps(meta, indent=1))
    return version


def load_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``prmu.json``, after checking that the folder is a checkpoint this code reads."""
    ckpt = Path(path)
    if not (ckpt / META).is_file() or not (ckpt / WEIGHTS).is_file():
        raise TagPRError(f"{ckpt} is not a PRMU checkpoint (expected {META} and {WEIGHTS})")
    meta = json.loads((ckpt / META).read_text())
    if meta.get("format") != FORMAT:
        raise TagPRError(f"{ckpt}: checkpoint format {meta.get('format')!r}, this version reads {FORMAT}")
    return meta


def load(path: str | Path) -> tuple[PRMUNet, dict[str, Any], dict[str, int]]:
    """(network in eval mode, metadata, user index) of a checkpoint folder."""
    from safetensors.torch import load_file

    ckpt = Path(path)
    meta = load_meta(ckpt)
    cfg = PRMUConfig.model_validate(meta["config"])
    user_index = json.loads((ckpt / USERS).read_text())
    blind = bool(meta.get("user_blind", False))
    if meta["variant"] == "causal_lm":
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from tagpr.prmu.model import CausalPRMU

        tokenizer = AutoTokenizer.from_pretrained(ckpt / "backbone", local_files_only=True)
        backbone = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ckpt / "backbone"))
        users = meta["num_users"] if cfg.user_id_embedding else 0
        net: PRMUNet = CausalPRMU(meta["dim"], cfg.hidden_size, users, backbone, tokenizer, cfg.prefix_tokens,
                                  cfg.max_length, user_blind=blind)
    else:
        net = build_net(cfg, meta["dim"], meta["num_users"], user_blind=blind)
    net.load_state_dict(load_file(ckpt / WEIGHTS), strict=True)
    return net.eval(), meta, user_index
