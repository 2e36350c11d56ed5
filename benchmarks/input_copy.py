"""Does the policy write a generation answer from its input, as the gold does?

On LaMP_4-7 the gold (a headline, a title, a subject line, a tweet) restates the input's content in
the user's style. For a policy, per generation task: greedy answers to the dev questions the demo
scores (``--limit`` per task, drawn across users), and the share of each answer's words that occur
in the input, counting only words the user's profile does not hold (so the user's own prefixes and
stock phrases are left out); the same share for the gold beside it. A policy far below the gold
writes its content from memory, where the ROUGE differences within a GRPO group are chance overlaps.
JSON in ``benchmarks/results/input_copy.json``.

    python -m benchmarks.input_copy --policy runs/<demo run>/policy
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Iterable

from benchmarks.run import record

GENERATION = ("LaMP_4", "LaMP_5", "LaMP_6", "LaMP_7")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def input_share(answer: str, source: str, profile_texts: Iterable[str]) -> float:
    """The share of ``answer``'s words outside the profile that occur in ``source`` (0 when none are left)."""
    own = words(answer) - set().union(*map(words, profile_texts))
    return len(own & words(source)) / len(own) if own else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True)
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
    engine = make_engine(cfg.rollout.engine, args.policy, cfg.model.dtype)
    tasks = {}
    try:
        for task in (t for t in cfg.data.tasks if t in GENERATION):
            questions = select_questions(load_split(cfg.data.root, task, cfg.data.dev_split).questions,
                                         args.limit, cfg.run.seed)
            answers = [(parse(text).texts(answer_tag) or [""])[-1] for text in respond(engine, cfg, task, questions)]
            profile = lambda q: [json.dumps(item) for item in q.profile]  # noqa: E731
            policy = [input_share(a, q.input, profile(q)) for a, q in zip(answers, questions)]
            gold = [input_share(q.gold, q.input, profile(q)) for q in questions]
            tasks[task] = {"n": len(questions), "policy": statistics.mean(policy), "gold": statistics.mean(gold),
                           "examples": [{"gold": q.gold, "answer": a} for q, a in zip(questions[:3], answers)]}
            print(f"{task}: answer words outside the profile found in the input: policy "
                  f"{tasks[task]['policy']:.2f}, gold {tasks[task]['gold']:.2f}", flush=True)
    finally:
        engine.close()
    record("input_copy", "share of a generation answer's own words found in the input",
           {"tasks": tasks, "policy": args.policy, "config": args.config, "limit": args.limit})
    return 0


if __name__ == "__main__":
    sys.exit(main())
