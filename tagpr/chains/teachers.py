"""Teachers write free reasoning and an answer for a LaMP question; registered by name.

- ``programmatic``: for the synthetic users. It knows each user's latent preferences
  (``users.json``) and writes plain, untagged prose that cites the profile, with deliberate
  mistakes (``mistake_rate``) so the filter has work.
- ``openai``: any OpenAI-compatible chat endpoint (``vllm serve``, a hosted API).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tagpr.lamp.synthetic import TOPICS, Citation, MovieTagging, Rating, Styled, generator
from tagpr.lamp.tasks import get_task
from tagpr.registry import Registry


@dataclass(frozen=True)
class TeacherRequest:
    id: str
    task: str
    input: str
    profile: tuple[Mapping[str, Any], ...]
    user_id: str | None = None


@dataclass
class TeacherOutput:
    id: str
    samples: list[str] = field(default_factory=list)  # free reasoning ending in "Answer: ..."
    errors: Counter[str] = field(default_factory=Counter)


ANSWER_RE = re.compile(r"(?:^|\n)\s*Answer:\s*(.+?)\s*$", re.S)


def split_answer(text: str) -> tuple[str, str | None]:
    """(reasoning, answer) of a teacher sample that ends with ``Answer: ...``."""
    m = ANSWER_RE.search(text)
    if not m:
        return text.strip(), None
    return text[: m.start()].strip(), m.group(1).strip()


class Teacher:
    name: str

    def generate(self, requests: Sequence[TeacherRequest], n: int) -> list[TeacherOutput]:
        raise NotImplementedError


TEACHERS: Registry[type[Teacher]] = Registry("teacher")


@TEACHERS.register("programmatic")
class ProgrammaticTeacher(Teacher):
    """Writes the reasoning the synthetic user's latent preferences imply, sometimes wrongly."""

    name = "programmatic"

    def __init__(self, data_root: str, mistake_rate: float = 0.15, seed: int = 0):
        self.root, self.mistake_rate, self.seed = Path(data_root), mistake_rate, seed
        self._users: dict[str, dict[str, Any]] = {}

    def _latent(self, task: str, user_id: str | None) -> dict[str, Any]:
        if task not in self._users:
            path = self.root / task / "users.json"
            self._users[task] = json.loads(path.read_text()) if path.exists() else {}
        if user_id is None or user_id not in self._users[task]:
            raise ValueError(f"{task}: no latent preferences for user {user_id!r} (programmatic teacher "
                             "only works on synthetic users)")
        return self._users[task][user_id]

    def generate(self, requests, n):
        outs = []
        for req in requests:
            out = TeacherOutput(req.id)
            try:
                user = self._latent(req.task, req.user_id)
            except ValueError:
                out.errors["unknown user"] += 1
                outs.append(out)
                continue
            for k in range(n):
                rng = random.Random(f"{self.seed}-{req.id}-{k}")
                out.samples.append(self.write(req, user, rng))
            outs.append(out)
        return outs

    def write(self, req: TeacherRequest, user: dict[str, Any], rng: random.Random) -> str:
        t = get_task(req.task)
        wrong = rng.random() < self.mistake_rate
        steps = WRITERS[t.name](req, user, wrong, rng)
        if rng.random() < self.mistake_rate / 3:
            steps.pop(rng.randrange(len(steps) - 1))  # a forgotten step
        *reasoning, answer = steps
        return "\n".join(reasoning) + f"\nAnswer: {answer}"


TEACHER_PROMPT = (
    "You are given a user's history and a task. Reason step by step, one step per line, about what the "
    "history shows of this user's preferences, then give the final answer on the last line as "
    "'Answer: <answer>'. The answer must follow the task's format exactly."
)


@TEACHERS.register("openai")
class OpenAITeacher(Teacher):
    """Any OpenAI-compatible ``/chat/completions`` endpoint, with concurrency, retries and a rate limit.

    Malformed or empty replies (no ``Answer:`` line, an error body) are counted in the output's
    ``errors`` and dropped; they never stop the run.
    """

    name = "openai"

    def __init__(self, cfg, client=None):
        import os
        import threading

        import httpx

        self.cfg = cfg.chains.openai
        self.max_items = cfg.data.prompt_profile_items
        key = os.environ.get(self.cfg.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = client or httpx.Client(base_url=self.cfg.base_url.rstrip("/"), headers=headers,
                                           timeout=self.cfg.timeout_s)
        self._lock, self._next = threading.Lock(), 0.0

    def _wait_turn(self) -> None:
        import time

        if not self.cfg.rate_limit_rps:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + 1.0 / self.cfg.rate_limit_rps
        time.sleep(max(0.0, slot - now))

    def _ask(self, req: TeacherRequest, n: int) -> TeacherOutput:
        import time

        import httpx

        from tagpr.prompts import user_message

        out = TeacherOutput(req.id)
        body = {"model": self.cfg.model, "n": n, "temperature": self.cfg.temperature,
                "max_tokens": self.cfg.max_tokens,
                "messages": [{"role": "system", "content": TEACHER_PROMPT},
                             {"role": "user", "content": user_message(req.task, req.input, req.profile,
                                                                      self.max_items)}]}
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            self._wait_turn()
            try:
                resp = self.http.post("/chat/completions", json=body)
            except httpx.HTTPError:
                out.errors["connection"] += 1
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                out.errors[f"http {resp.status_code}"] += 1
                continue
            try:
                choices = resp.json()["choices"] if resp.status_code == 200 else None
            except (ValueError, KeyError, TypeError):
                choices = None
            if not choices:
                out.errors[f"bad reply (http {resp.status_code})"] += 1
                return out
            for choice in choices:
                text = ((choice.get("message") or {}).get("content") or "").strip()
                if split_answer(text)[1]:
                    out.samples.append(text)
                else:
                    out.errors["malformed"] += 1
            return out
        return out

    def generate(self, requests, n):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.cfg.concurrency) as pool:
            return list(pool.map(lambda r: self._ask(r, n), requests))


def _quote(profile: Sequence[Mapping[str, Any]], field_: str, k: int = 2) -> str:
    return "; ".join(f'"{p.get(field_, "")}"' for p in profile[:k])


def _citation(req, user, wrong, rng):
    refs = Citation.references(req.input)
    topic_words = set(TOPICS[user["topic"]].split())
    hits = [sum(w in topic_words for w in r.lower().split()) for r in refs]
    right = "[1]" if hits[0] >= hits[1] else "[2]"
    answer = ("[2]" if right == "[1]" else "[1]") if wrong else right
    chosen = refs[int(answer[1]) - 1]
    return [
        f"Looking through the user's profile items, the relevant papers are {_quote(req.profile, 'title')}.",
        f"Across the history, a regularity stands out: every paper is about {user['topic']}.",
        f"Reading the current input, it asks which reference relates to this author: {refs[0]!r} or {refs[1]!r}.",
        f"Inferring this author's preference: research on {user['topic']}.",
        f"Weighing the two candidates against that preference, {chosen!r} fits best.",
        f"In conclusion, the answer is {answer}.",
        answer,
    ]


def _movie(req, user, wrong, rng):
    cands = MovieTagging.candidates(req.input)
    counts = Counter(p.get("tag") for p in req.profile)
    favs = [t for t in user["favorites"] if t in cands] or cands[:1]
    answer = rng.choice([c for c in cands if c not in favs] or cands) if wrong else favs[0]
    seen = ", ".join(f"{t} ({n}x)" for t, n in counts.most_common(3))
    return [
        f"Looking through the user's profile items, past films were tagged {seen}.",
        f"Across the history, the user keeps choosing {', '.join(user['favorites'])}.",
        f"Reading the current input, the film's themes point to {', '.join(cands)}.",
        f"Inferring this user's preference: {favs[0]} when it is on offer.",
        f"Weighing the candidate tags against that preference, {answer} fits best.",
        f"In conclusion, the tag is {answer}.",
        answer,
    ]


def _rating(req, user, wrong, rng):
    s = Rating.sentiment(req.input)
    answer = max(1, min(5, s + user["bias"]))
    if wrong:
        answer = max(1, min(5, answer + rng.choice([-1, 1]))) if answer not in (1, 5) else 3
    bias = user["bias"]
    tone = "harsher" if bias < 0 else "more generous" if bias > 0 else "neither harsher nor kinder"
    return [
        f"Looking through the user's profile items, past reviews such as {_quote(req.profile, 'text')} got "
        f"scores {', '.join(str(p.get('score')) for p in req.profile[:4])}.",
        f"Across the history, this user rates {tone} than the words of the review suggest ({bias:+d}).",
        f"Reading the current input, the review's words alone suggest {s} out of 5.",
        f"Inferring this user's bias: {bias:+d} on top of the words.",
        f"Weighing the possible scores against that bias, {answer} fits best.",
        f"In conclusion, the score is {answer}.",
        str(answer),
    ]


def _styled(req, user, wrong, rng):
    gen = generator(req.task)
    assert isinstance(gen, Styled)
    core = gen.core(gen.source_of(req.input))
    styled = Styled.style(user, core)
    answer = core if wrong else styled
    out = get_task(req.task).profile_output
    return [
        f"Looking through the user's profile items, past outputs were {_quote(req.profile, out)}.",
        f"Across the history, every output starts with {user['prefix']!r} and ends with {user['suffix']!r}.",
        f"Reading the current input, the content to convey is: {core}.",
        "Inferring this user's writing style: a fixed prefix and suffix around the content.",
        f"A candidate output in the user's style: {answer}",
        "Checking the candidate against the profile evidence, the prefix and suffix match.",
        answer,
    ]


WRITERS = {"LaMP_1": _citation, "LaMP_2": _movie, "LaMP_3": _rating, "LaMP_4": _styled, "LaMP_5": _styled,
           "LaMP_6": _styled, "LaMP_7": _styled}
