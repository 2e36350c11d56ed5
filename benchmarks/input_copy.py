"""Does the policy write a generation answer from its input, in the user's style, as the gold does?

On LaMP_4-7 the gold (a headline, a title, a subject line, a tweet) restates the input's content in
the user's style. For each policy, per generation task: greedy answers to the dev questions the demo
scores (``--limit`` per task, drawn across users), and

- ``input``: the share of each answer's words that occur in the input, counting only words the
  user's profile does not hold (so the user's own prefixes and stock phrases are left out); the same
  share for the gold beside it. A policy far below the gold writes its content from memory, where
  the ROUGE differences within a GRPO group are chance overlaps;
- ``style``: where the data is synthetic (``users.json`` holds each user's prefix and suffix), the
  share of answers that start with the user's prefix and end with the user's suffix: the
  personalization a policy can lose while its content stays chance.

Several ``--policy NAME=PATH`` compare on the same questions (SFT against RL). JSON in
``benchmarks/results/input_copy.json``.

    python -m benchmarks.input_copy --policy sft=runs/<demo run>/policy \
        --policy rl=runs/<demo run>/rl/stages/exploratory/policy
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path

from benchmarks.run import record

GENERATION = ("LaMP_4", "LaMP_5", "LaMP_6", "LaMP_7")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def input_share(answer: str, source: str, profile_texts: Iterable[str]) -> float:
    """The share of ``answer``'s words outside the profile that occur in ``source`` (0 when none are left)."""
    own = words(answer) - set().union(*map(words, profile_texts))
    return len(own & words(source)) / len(own) if own else 0.0


def styled(answer: str, user: dict | None) -> float | None:
    """1.0 when ``answer`` starts with the user's prefix and ends with the user's suffix (None
    without the user's latent style)."""
    if user is None:
        return None
    return float(answer.startswith(user.get("prefix", "")) and answer.endswith(user.get("suffix", "")))


def _policy(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    if name in ("gold", "n"):  # keys the result already uses per task
        raise argparse.ArgumentTypeError(f"the policy name {name!r} is taken; pick another")
    return name, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=_policy, action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--limit", type=int, default=32, help="dev questions per task (0: all)")
    args = parser.parse_args(argv)

    from tagpr.config import load_config
    from tagpr.engines import make_engine
    from tagpr.evaluation import respond, select_questions
    from tagpr.lamp.io import load_split
    from tagpr.tags import TagSet, parse

    cfg = load_config(args.config)
    answer_tag = TagSet(cfg.tags).answer_tag
    tasks = {t: {} for t in cfg.data.tasks if t in GENERATION}
    for name, path in args.policy:
        engine = make_engine(cfg.rollout.engine, path, cfg.model.dtype)
        try:
            for task, entry in tasks.items():
                questions = select_questions(load_split(cfg.data.root, task, cfg.data.dev_split).questions,
                                             args.limit, cfg.run.seed)
                users_file = Path(cfg.data.root) / task / "users.json"
                users = json.loads(users_file.read_text()) if users_file.exists() else {}
                answers = [(parse(text).texts(answer_tag) or [""])[-1]
                           for text in respond(engine, cfg, task, questions)]
                profile = lambda q: [json.dumps(item) for item in q.profile]  # noqa: E731
                style = [styled(a, users.get(q.user_id)) for a, q in zip(answers, questions)]
                entry.setdefault("n", len(questions))
                entry.setdefault("gold", {"input": statistics.mean(input_share(q.gold, q.input, profile(q))
                                                                   for q in questions)})
                entry[name] = {"input": statistics.mean(input_share(a, q.input, profile(q))
                                                        for a, q in zip(answers, questions)),
                               "style": statistics.mean(style) if None not in style else None,
                               "examples": [{"gold": q.gold, "answer": a} for q, a in zip(questions[:3], answers)]}
                kept = "" if entry[name]["style"] is None else f", user's prefix and suffix {entry[name]['style']:.2f}"
                print(f"{task} {name}: answer words outside the profile found in the input {entry[name]['input']:.2f} "
                      f"(gold {entry['gold']['input']:.2f}){kept}", flush=True)
        finally:
            engine.close()
    record("input_copy", "share of a generation answer's own words found in the input; share in the user's style",
           {"tasks": tasks, "policies": dict(args.policy), "config": args.config, "limit": args.limit})
    return 0


if __name__ == "__main__":
    sys.exit(main())
