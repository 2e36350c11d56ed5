"""Does the PRMU term point where the task reward points, on the policy's own samples?

GRPO moves the policy along differences *within* a group of samples, so what matters about a reward
term is how it orders a group's samples. For a policy (an SFT policy, say) and a PRMU checkpoint,
per task: sample ``--group`` responses at the rollout temperature for ``--questions`` train
questions, score them with the guided stage's terms, and report, over the pairs of samples whose
task scores differ, the fraction the calibrated PRMU reward orders the same way (1.0: the PRMU adds
no direction of its own; 0.5: none in common), with the mean within-group correlation of the two.
JSON in ``benchmarks/results/prmu_agreement.json``.

    python -m benchmarks.prmu_agreement --policy runs/<demo run>/policy --prmu runs/<demo run>/prmu
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from itertools import combinations

from benchmarks.run import record


def agreement(task_scores: list[float], prmu_scores: list[float]) -> tuple[int, int]:
    """(pairs ordered alike, pairs compared): pairs whose task scores and PRMU rewards both differ."""
    same = total = 0
    for i, j in combinations(range(len(task_scores)), 2):
        dt_, dp = task_scores[i] - task_scores[j], prmu_scores[i] - prmu_scores[j]
        if abs(dt_) > 1e-6 and abs(dp) > 1e-9:
            total += 1
            same += (dt_ > 0) == (dp > 0)
    return same, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--prmu", required=True, help="a PRMU checkpoint folder")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--questions", type=int, default=16, help="train questions per task")
    parser.add_argument("--group", type=int, default=8, help="samples per question")
    args = parser.parse_args(argv)

    from tagpr.config import load_config
    from tagpr.engines import Sampling, make_engine
    from tagpr.lamp.io import load_split
    from tagpr.prmu.scorer import PRMUScorer
    from tagpr.rewards import CompositeReward, RewardInput
    from tagpr.sft.data import prompt_text
    from tagpr.tags import TagSet

    cfg = load_config(args.config)
    tags, guided = TagSet(cfg.tags), cfg.rl.stages[0].name
    reward = CompositeReward.for_stage(cfg, guided, PRMUScorer.load(args.prmu, score_with_user_id=False))
    engine = make_engine(cfg.rollout.engine, args.policy, cfg.model.dtype)
    sampling = Sampling(n=args.group, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                        max_tokens=cfg.rollout.max_tokens, logprobs=False)
    tasks = {}
    try:
        for task in cfg.data.tasks:
            questions = load_split(cfg.data.root, task, cfg.data.train_split).questions
            questions = random.Random(cfg.run.seed).sample(questions, min(args.questions, len(questions)))
            prompts = [prompt_text(engine.tokenizer, tags, task, q.input, q.profile, cfg.data.prompt_profile_items)
                       for q in questions]
            same = total = 0
            correlations = []
            for q, gen in zip(questions, engine.generate(prompts, sampling)):
                results = reward.score([RewardInput(q, c.text) for c in gen.completions])
                t = [r.components.get("task", 0.0) for r in results]
                p = [r.components.get("prmu", 0.0) for r in results]
                s, n = agreement(t, p)
                same, total = same + s, total + n
                if statistics.pstdev(t) > 1e-9 and statistics.pstdev(p) > 1e-9:
                    correlations.append(statistics.correlation(t, p))
            tasks[task] = {"pairs": total, "agreement": same / total if total else None,
                           "groups_correlated": len(correlations),
                           "mean_correlation": statistics.mean(correlations) if correlations else None}
            print(f"{task}: PRMU orders {tasks[task]['agreement'] or 0:.3f} of {total} pairs as the task does, "
                  f"within-group correlation {tasks[task]['mean_correlation'] or 0:.3f}", flush=True)
    finally:
        engine.close()
    record("prmu_agreement", "pairs of a group's samples the PRMU orders as the task does",
           {"tasks": tasks, "policy": args.policy, "prmu": args.prmu, "config": args.config,
            "questions": args.questions, "group": args.group, "temperature": cfg.rollout.temperature})
    return 0


if __name__ == "__main__":
    sys.exit(main())
