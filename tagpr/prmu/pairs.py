"""Preference pairs for Bradley-Terry training and held-out evaluation.

Chosen = the user's gold. Rejected = a *hard negative* where one exists: an answer that is right
for someone else given the same input, so (input, answer) alone cannot separate the pair and
only the user's profile can:

- tasks with a candidate set (LaMP-1's two references, LaMP-2's tags): the other candidates of
  this input, the ones other users chose for the most similar inputs first. LaMP-2 inputs of the
  synthetic data name three tags in the description (``MovieTagging.candidates``); real LaMP-2
  inputs name no subset, so there the candidates are the whole label set.
- LaMP-3 ratings: gold +-1, then +-2, within 1..5.
- generation tasks (LaMP-4..7): the same content in another user's style, i.e. another user's
  gold for the same input (input embeddings at cosine >= ``SAME_INPUT``).

Where no hard negative exists (a generation input nobody else was asked) the rejected answers
are other users' golds for the most similar inputs (nearest by embedding, distinct answers).
Chosen and rejected always share the user's profile and input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from tagpr.lamp.io import LampSplit
from tagpr.lamp.synthetic import MovieTagging
from tagpr.lamp.tasks import LampTask, parse_rating
from tagpr.prmu.encoder import SentenceEncoder
from tagpr.prmu.features import PRMUExample, make_example, without_user

SAME_INPUT = 0.99  # input-embedding cosine from which two inputs count as the same (near-identical text)


@dataclass(frozen=True)
class Pair:
    chosen: PRMUExample
    rejected: PRMUExample
    hard: bool = False  # the rejected answer fits the same input (see the module docstring)

    @property
    def task(self) -> str:
        return self.chosen.task

    def without_user(self) -> Pair:
        """The pair as the user-blind baseline sees it: no profile, no user id."""
        return Pair(without_user(self.chosen), without_user(self.rejected), self.hard)


def _distinct(answers: Sequence[str], gold: str) -> list[str]:
    """``answers`` in order, without repeats and without ``gold``."""
    return [a for a in dict.fromkeys(answers) if a != gold]


def candidate_answers(task: LampTask, input_text: str, gold: str) -> list[str] | None:
    """The other answers the task allows for this input, best first; None for open-ended tasks."""
    if task.name == "LaMP_2":
        named = MovieTagging.candidates(input_text)
        return _distinct(named if gold in named else list(task.labels or ()), gold)
    if task.labels is not None:
        return _distinct(task.labels, gold)
    if task.task_type == "rating":
        value = parse_rating(gold)
        if value is None or value != int(value):
            return []
        g = int(value)
        return [str(r) for r in (g - 1, g + 1, g - 2, g + 2) if 1 <= r <= 5]
    return None


def hard_negatives(task: LampTask, input_text: str, gold: str, neighbour_golds: Sequence[str],
                   same_input_golds: Sequence[str], k: int) -> list[str]:
    """Up to ``k`` answers right for someone else given this input. ``neighbour_golds``: other users'
    golds for the most similar inputs, nearest first; ``same_input_golds``: those for the same input."""
    candidates = candidate_answers(task, input_text, gold)
    if candidates is None:
        return _distinct(same_input_golds, gold)[:k]
    if task.labels is not None:  # equally valid labels: those other users chose for similar inputs first
        rank = {a: i for i, a in enumerate(dict.fromkeys(neighbour_golds))}
        candidates = sorted(candidates, key=lambda a: rank.get(a, len(rank)))
    return candidates[:k]


def pairs_from_split(split: LampSplit, encoder: SentenceEncoder, negatives: int = 3,
                     same_input: float = SAME_INPUT) -> list[Pair]:
    if split.golds is None:
        raise ValueError(f"{split.task.name} {split.split}: pairs need golds")
    qs = split.questions
    golds = [q.gold.strip() for q in qs]
    emb = encoder.encode([q.input for q in qs])
    sim = emb @ emb.T
    order = torch.argsort(sim, dim=1, descending=True)
    pairs = []
    for i, q in enumerate(qs):
        row = sim[i].tolist()
        others = [j for j in order[i].tolist() if qs[j].user_id != q.user_id]
        neighbours = [golds[j] for j in others]
        same = [golds[j] for j in others if row[j] >= same_input]
        rejected = hard_negatives(split.task, q.input, golds[i], neighbours, same, negatives)
        hard = bool(rejected)
        if not hard:
            rejected = _distinct(neighbours, golds[i])[:negatives]
        chosen = make_example(split.task.name, q.profile, q.input, golds[i], q.user_id)
        pairs += [Pair(chosen, make_example(split.task.name, q.profile, q.input, r, q.user_id), hard)
                  for r in rejected]
    return pairs


def pairs_for_tasks(root: str, tasks: Sequence[str], split: str, encoder: SentenceEncoder, negatives: int,
                    skip_invalid: bool = False, max_users: int = 0) -> tuple[list[Pair], list[str]]:
    """Pairs of every task's ``split`` (of its first ``max_users`` users when given), and the user ids
    seen (in order of first appearance)."""
    from dataclasses import replace

    from tagpr.lamp.io import load_split

    pairs: list[Pair] = []
    users: dict[str, None] = {}
    for task in tasks:
        s = load_split(root, task, split, skip_invalid)
        if max_users:
            keep = set(list(dict.fromkeys(q.user_id for q in s.questions))[:max_users])
            s = replace(s, questions=[q for q in s.questions if q.user_id in keep])
        pairs += pairs_from_split(s, encoder, negatives)
        users.update((q.user_id, None) for q in s.questions if q.user_id)
    return pairs, list(users)
