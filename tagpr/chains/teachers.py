"""Teachers write free reasoning and an answer for a LaMP question; registered by name.

- ``programmatic``: for the synthetic users (``users.json`` names them). It writes short, plain,
  untagged prose from the profile items the policy's prompt shows, with deliberate mistakes
  (``mistake_rate``) so the filter has work.
- ``openai``: any OpenAI-compatible chat endpoint (``vllm serve``, a hosted API).
- ``vllm``: a vLLM engine in each actor of the chain job's Ray Data pool (``chains.vllm.num_engines``).

The two chat-model teachers also answer arbitrary conversations (:meth:`ChatTeacher.chat`), which
is how the ``llm`` labeler asks them to tag steps.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tagpr.credentials import read_secret
from tagpr.lamp.io import Prompt
from tagpr.lamp.synthetic import Citation, MovieTagging, Rating, Styled, generator
from tagpr.lamp.tasks import get_task
from tagpr.registry import Registry


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

    @classmethod
    def from_config(cls, cfg) -> "Teacher":
        return cls(cfg)

    @classmethod
    def pool(cls, cfg) -> tuple[int, dict[str, Any]]:
        """(actors, Ray resources per actor) of the chain job's pool when this teacher runs."""
        return 1, {}

    def generate(self, requests: Sequence[Prompt], n: int) -> list[TeacherOutput]:
        raise NotImplementedError


TEACHERS: Registry[type[Teacher]] = Registry("teacher")


@TEACHERS.register("programmatic")
class ProgrammaticTeacher(Teacher):
    """Writes short reasoning that reads the synthetic user's visible profile, sometimes wrongly. It
    serves only the synthetic users (``users.json`` names them)."""

    name = "programmatic"

    def __init__(self, data_root: str, mistake_rate: float = 0.15, seed: int = 0, max_items: int = 8):
        self.root, self.mistake_rate, self.seed, self.max_items = Path(data_root), mistake_rate, seed, max_items
        self._users: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_config(cls, cfg) -> "ProgrammaticTeacher":
        return cls(cfg.data.root, cfg.chains.mistake_rate, cfg.run.seed, cfg.data.prompt_profile_items)

    def _synthetic(self, task: str, user_id: str | None) -> bool:
        """Whether ``users.json`` of the task names this user: the teacher serves synthetic users only."""
        if task not in self._users:
            path = self.root / task / "users.json"
            self._users[task] = json.loads(path.read_text()) if path.exists() else {}
        return user_id is not None and user_id in self._users[task]

    def generate(self, requests, n):
        outs = []
        for req in requests:
            out = TeacherOutput(req.id)
            if not self._synthetic(req.task, req.user_id):
                out.errors["unknown user"] += 1
            else:
                out.samples += [self.write(req, random.Random(f"{self.seed}-{req.id}-{k}")) for k in range(n)]
            outs.append(out)
        return outs

    def write(self, req: Prompt, rng: random.Random) -> str:
        """Reasoning from the profile items the policy's prompt shows (the first ``max_items``), so
        SFT never teaches the policy to state what it cannot see; where those items mislead, the
        answer is wrong and the chain filter drops it."""
        t = get_task(req.task)
        wrong = rng.random() < self.mistake_rate
        steps = WRITERS[t.name](list(req.profile[: self.max_items]), req, wrong, rng)
        if rng.random() < self.mistake_rate / 3:
            steps.pop(rng.randrange(len(steps) - 1))  # a forgotten step
        *reasoning, answer = steps
        return "\n".join(reasoning) + f"\nAnswer: {answer}"


TEACHER_PROMPT = (
    "You are given a user's history and a task. Reason step by step, one step per line, about what the "
    "history shows of this user's preferences, then give the final answer on the last line as "
    "'Answer: <answer>'. The answer must follow the task's format exactly."
)
_THINK = re.compile(r"</?think>")


@dataclass
class ChatReply:
    texts: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


class ChatTeacher(Teacher):
    """A teacher backed by a chat model: asked the teacher prompt for each question, or anything else."""

    def __init__(self, cfg, options):
        self.options = options
        self.max_items = cfg.data.prompt_profile_items

    def chat(self, conversations: Sequence[list[dict[str, str]]], n: int = 1,
             max_tokens: int | None = None) -> list[ChatReply]:
        raise NotImplementedError

    def generate(self, requests, n):
        from tagpr.prompts import user_message

        convs = [[{"role": "system", "content": TEACHER_PROMPT},
                  {"role": "user", "content": user_message(r.task, r.input, r.profile, self.max_items)}]
                 for r in requests]
        outs = []
        for req, reply in zip(requests, self.chat(convs, n)):
            out = TeacherOutput(req.id, errors=reply.errors)
            for text in reply.texts:
                text = _THINK.sub("", text).strip()  # a thinking model's reasoning counts as reasoning
                if split_answer(text)[1]:
                    out.samples.append(text)
                else:
                    out.errors["malformed"] += 1
            outs.append(out)
        return outs


@TEACHERS.register("openai")
class OpenAITeacher(ChatTeacher):
    """Any OpenAI-compatible ``/chat/completions`` endpoint, with concurrency, retries and a rate limit.

    Malformed or empty replies (no ``Answer:`` line, an error body) are counted in the output's
    ``errors`` and dropped; they never stop the run.
    """

    name = "openai"

    def __init__(self, cfg, client=None):
        import threading

        import httpx

        super().__init__(cfg, cfg.chains.openai)
        key = read_secret(self.options.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = client or httpx.Client(base_url=self.options.base_url.rstrip("/"), headers=headers,
                                           timeout=self.options.timeout_s)
        self._lock, self._next = threading.Lock(), 0.0

    def _wait_turn(self) -> None:
        import time

        if not self.options.rate_limit_rps:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + 1.0 / self.options.rate_limit_rps
        time.sleep(max(0.0, slot - now))

    def _ask(self, messages: list[dict[str, str]], n: int, max_tokens: int) -> ChatReply:
        import time

        import httpx

        o, reply = self.options, ChatReply()
        body = {"model": o.model, "n": n, "temperature": o.temperature, "max_tokens": max_tokens,
                "messages": messages}
        for attempt in range(o.retries + 1):
            if attempt:
                time.sleep(o.backoff_s * 2 ** (attempt - 1))
            self._wait_turn()
            try:
                resp = self.http.post("/chat/completions", json=body)
            except httpx.HTTPError:
                reply.errors["connection"] += 1
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                reply.errors[f"http {resp.status_code}"] += 1
                continue
            try:
                choices = resp.json()["choices"] if resp.status_code == 200 else None
            except (ValueError, KeyError, TypeError):
                choices = None
            if not choices:
                reply.errors[f"bad reply (http {resp.status_code})"] += 1
                return reply
            reply.texts = [((c.get("message") or {}).get("content") or "").strip() for c in choices]
            return reply
        return reply

    def chat(self, conversations, n=1, max_tokens=None):
        from concurrent.futures import ThreadPoolExecutor

        budget = max_tokens or self.options.max_tokens
        with ThreadPoolExecutor(self.options.concurrency) as pool:
            return list(pool.map(lambda c: self._ask(c, n, budget), conversations))


@TEACHERS.register("vllm")
class VLLMTeacher(ChatTeacher):
    """A vLLM engine inside this process: the chain job runs ``num_engines`` of these as its actor pool."""

    name = "vllm"

    def __init__(self, cfg):
        from tagpr.engines import make_engine

        super().__init__(cfg, cfg.chains.vllm)
        self.engine = make_engine(self.options.engine, self.options.model, self.options.dtype)

    @classmethod
    def pool(cls, cfg):
        o = cfg.chains.vllm
        return o.num_engines, {"num_cpus": o.num_cpus, "num_gpus": o.num_gpus}

    def chat(self, conversations, n=1, max_tokens=None):
        from tagpr.engines import Sampling

        tok = self.engine.tokenizer
        prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True,
                                           **self.options.chat_template_kwargs) for c in conversations]
        sampling = Sampling(n=n, temperature=self.options.temperature,
                            max_tokens=max_tokens or self.options.max_tokens, logprobs=False)
        replies = []
        for gen in self.engine.generate(prompts, sampling):
            reply = ChatReply()
            for c in gen.completions:
                if c.text.strip():
                    reply.texts.append(c.text.strip())
                else:
                    reply.errors["empty"] += 1
            replies.append(reply)
        return replies


def _counts(values: Sequence[Any]) -> str:
    return ", ".join(f"{v} ({n}x)" for v, n in Counter(values).most_common(3))


def _citation(visible, req, wrong, rng):
    bag, hits = Citation.evidence(visible, req.input)
    common = [w for w, _ in bag.most_common(4)]
    right = Citation.choose(hits)
    answer = ("[2]" if right == "[1]" else "[1]") if wrong else right
    return [
        f"Looking through the user's profile items, frequent words are {', '.join(common)}.",
        "Across the history, the papers keep to these words.",
        f"Reading the current input, [1] matches the user's words {hits[0]} times and [2] {hits[1]} times.",
        "Inferring this author's preference: papers on these words.",
        f"Weighing the two candidates against that preference, {answer} fits best.",
        answer,
    ]


def _movie(visible, req, wrong, rng):
    cands = MovieTagging.candidates(req.input)
    counts = Counter(p.get("tag") for p in visible)
    best = max(cands, key=lambda t: counts[t])
    answer = rng.choice([c for c in cands if c != best] or cands) if wrong else best
    return [
        f"Looking through the user's profile items, past films were tagged {_counts(p.get('tag') for p in visible)}.",
        f"Across the history, the user keeps choosing {', '.join(t for t, _ in counts.most_common(2))}.",
        f"Reading the current input, the candidate tags are {', '.join(cands)}.",
        f"Inferring this user's preference: {best} among the candidates.",
        f"Weighing the candidate tags against that preference, {answer} fits best.",
        answer,
    ]


def _rating(visible, req, wrong, rng):
    diffs, median = Rating.bias_evidence(visible)
    bias = round(median)
    s = Rating.sentiment(req.input)
    answer = max(1, min(5, s + bias))
    if wrong:
        answer = max(1, min(5, answer + rng.choice([-1, 1]))) if answer not in (1, 5) else 3
    tone = "harsher" if bias < 0 else "more generous" if bias > 0 else "neither harsher nor kinder"
    return [
        f"Looking through the user's profile items, scores minus the words' sentiment were "
        f"{', '.join(f'{d:+.0f}' for d in diffs)}.",
        f"Across the history, this user rates {tone} than the words suggest ({bias:+d}).",
        f"Reading the current input, the words alone suggest {s}.",
        f"Inferring this user's bias: {bias:+d} on top of the words.",
        f"Weighing the possible scores against that bias, {answer} fits best.",
        str(answer),
    ]


def _styled(visible, req, wrong, rng):
    gen = generator(req.task)
    assert isinstance(gen, Styled)
    outputs = [str(p.get(get_task(req.task).profile_output, "")).split() for p in visible]
    prefix, core, suffix = gen.styled_answer(outputs, gen.source_of(req.input))
    answer = core if wrong else " ".join(x for x in (prefix, core, suffix) if x)
    return [
        f'Looking through the user\'s profile items, a past output was "{" ".join(outputs[0]) if outputs else ""}".',
        f"Across the history, every output starts with {prefix!r} and ends with {suffix!r}.",
        f"Reading the current input, the content to convey is: {core}.",
        "Inferring this user's writing style: that prefix and suffix around the content.",
        f"A candidate output in the user's style: {answer}",
        answer,
    ]


WRITERS = {"LaMP_1": _citation, "LaMP_2": _movie, "LaMP_3": _rating, "LaMP_4": _styled, "LaMP_5": _styled,
           "LaMP_6": _styled, "LaMP_7": _styled}
