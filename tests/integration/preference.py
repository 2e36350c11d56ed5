"""A "preference policy" for integration tests: the tiny policy fine-tuned briefly on CPU so that on a
LaMP-2 question mentioning both tags of ``PAIR`` it answers the one its user's profile prefers. The
question alone does not tell the two apart, so a right answer for each of two users with opposite
profiles shows the profile reached the policy."""

from __future__ import annotations

import random
from pathlib import Path

from tagpr.lamp.synthetic import MOVIE_PHRASES
from tagpr.lamp.tasks import LAMP2_LABELS, get_task

PAIR = ("comedy", "action")
OTHERS = tuple(t for t in LAMP2_LABELS if t not in PAIR)
SEED = 0
# Sized to train in about 25 s on two idle CPU cores; with 20 warmup steps and batches of 4, seeds 0-9 all
# learn the preference (smaller warmup or larger batches often stay at one tag for every user).
N_RECORDS = 256
SFT = {"epochs": 2, "lr": 2e-3, "lr_schedule": "cosine", "warmup_steps": 20, "batch_size": 4}


def _description(tags: list[str], rng: random.Random) -> str:
    p = [rng.choice(MOVIE_PHRASES[t]) for t in tags]
    return f"A film about {p[0]}, with {p[1]} and {p[2]}."


def user_profile(tag: str, n: int, rng: random.Random) -> list[dict]:
    """``n`` LaMP-2 profile items all tagged ``tag``; each description also names two tags outside
    ``PAIR``, so only the labels (and ``tag``'s phrases) point at the preference."""
    items = []
    for j in range(n):
        tags = [tag, *rng.sample(OTHERS, 2)]
        rng.shuffle(tags)
        items.append({"id": f"{tag}-{j:03d}", "description": _description(tags, rng), "tag": tag})
    return items


def question(rng: random.Random) -> str:
    """A LaMP-2 input naming both tags of ``PAIR`` and one other, in random order: ambiguous without a profile."""
    tags = [*PAIR, rng.choice(OTHERS)]
    rng.shuffle(tags)
    return get_task("LaMP_2").input_template.format(description=_description(tags, rng))


def records(n_users: int, rng: random.Random, tags, profile_size: int = 4) -> list[dict]:
    """SFT records, one question per user, users alternating between the tags of ``PAIR``; the
    response is the bare ``<answer>tag</answer>``."""
    out = []
    for i in range(n_users):
        tag = PAIR[i % 2]
        out.append({"task": "LaMP_2", "input": question(rng), "profile": user_profile(tag, profile_size, rng),
                    "response": tags.render((), tag)})
    return out


def train_preference_policy(cfg, tiny_policy_dir: str | Path, out_dir: str | Path) -> Path:
    """Fine-tune the tiny policy on :func:`records` (one process, no Ray, seeded, so the same weights
    every run); prompts show ``cfg.data.prompt_profile_items`` profile items, which serving must match."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.train_strategy import DDPStrategy
    from tagpr.sft.data import tokenize_chains
    from tagpr.sft.train import train_epochs
    from tagpr.tags import TagSet

    sft = cfg.sft.model_copy(update={**SFT, "precision": "fp32", "packing": False, "length_grouping": 0})
    tags = TagSet(cfg.tags)
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir)
    items = cfg.data.prompt_profile_items
    data = tokenize_chains(records(N_RECORDS, random.Random(SEED), tags, max(items, 1)), tokenizer, tags, items, 1024)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32)
    stepper = DDPStrategy(model, sft, sft.lr, 0.0, sft.batch_size, world=1, device=torch.device("cpu"))
    train_epochs(stepper, data, None, sft, tokenizer.pad_token_id, seed=SEED)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
