"""Synthetic LaMP users: the embedded default data set, deterministic by seed.

Every user has latent preferences, and each gold answer is a function of the input *and* those
preferences, written so that the preference can be read back from the user's profile:

- LaMP-1: the user works on one research topic; the related reference is the one on that topic.
- LaMP-2: the user has three favourite tags; each movie mentions one favourite and two others.
- LaMP-3: the user rates with a personal bias (-2..+2) on top of the review's sentiment.
- LaMP-4..7: the user writes outputs with a personal prefix and suffix around the content.

Each generator also carries two baselines, which make the dependence measurable: a *profile
reader* (rules that read the profile) and a *user-blind* one (majority label, global mean or the
generic output). ``tagpr data synth --report`` prints both; the gap is what personalization can
gain. Files are written in the official format plus ``users.json`` with each user's latent
preferences (read by the programmatic teacher, never by the policy).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagpr.config import SyntheticConfig
from tagpr.lamp.io import Prompt, load_split, write_outputs, write_questions
from tagpr.lamp.metrics import score_task
from tagpr.lamp.tasks import LAMP2_LABELS, LampTask, get_task
from tagpr.registry import Registry

Predictor = Callable[[Prompt], str]


@dataclass
class Example:
    input: str
    gold: str


class Generator:
    """One task's synthetic users, examples and baselines."""

    task_name: str

    @property
    def task(self) -> LampTask:
        return get_task(self.task_name)

    def latent(self, rng: random.Random) -> dict[str, Any]:
        raise NotImplementedError

    def profile_item(self, user: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        raise NotImplementedError

    def example(self, user: dict[str, Any], rng: random.Random) -> Example:
        raise NotImplementedError

    def profile_reader(self) -> Predictor:
        """Rules that read the question's profile."""
        raise NotImplementedError

    def user_blind(self, train: list[Prompt]) -> Predictor:
        """A predictor that ignores the profile, fitted on the train split's questions and golds."""
        raise NotImplementedError


GENERATORS: Registry[type[Generator]] = Registry("synthetic generator")


def generator(task: str) -> Generator:
    return GENERATORS.get(get_task(task).name)()


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


# ---------------------------------------------------------------- LaMP-1


TOPICS = {
    "vision": "image pixel segmentation detection camera convolutional visual scene depth video object recognition",
    "language": "language translation parsing sentence token dialogue summarization lexical grammar text corpus speech",
    "robotics": "robot grasping locomotion manipulation motion planning control sensor actuator trajectory "
    "navigation arm",
    "databases": "query index transaction database storage join schema relational cache sql replication consistency",
    "security": "attack encryption malware privacy authentication vulnerability adversary cipher intrusion "
    "firewall key exploit",
    "biology": "protein gene cell genome molecular sequencing enzyme tissue neuron mutation dna organism",
    "networks": "routing packet bandwidth wireless latency protocol congestion throughput router network mesh "
    "spectrum",
    "theory": "complexity graph algorithm approximation lattice polynomial proof combinatorial bound hardness "
    "randomized matrix",
}
_ADJ = ["Efficient", "Robust", "Scalable", "Adaptive", "Fast", "Practical", "Provable", "Unified"]
_GENERIC = ["modern systems", "practical problems", "real applications", "large scale data", "open challenges"]


@GENERATORS.register("LaMP_1")
class Citation(Generator):
    task_name = "LaMP_1"

    def _title(self, topic: str, rng: random.Random) -> str:
        w = rng.sample(TOPICS[topic].split(), 3)
        return f"{rng.choice(_ADJ)} {w[0]} {w[1]} for {w[2]}"

    def latent(self, rng):
        return {"topic": rng.choice(sorted(TOPICS))}

    def profile_item(self, user, rng):
        w = rng.sample(TOPICS[user["topic"]].split(), 4)
        abstract = f"We study {w[0]} and {w[1]}. Our method improves {w[2]} {w[3]} on standard benchmarks."
        return {"title": self._title(user["topic"], rng), "abstract": abstract}

    def example(self, user, rng):
        other = rng.choice([t for t in sorted(TOPICS) if t != user["topic"]])
        refs = [self._title(user["topic"], rng), self._title(other, rng)]
        gold = rng.choice(["[1]", "[2]"])
        if gold == "[2]":
            refs.reverse()
        title = f"{rng.choice(_ADJ)} methods for {rng.choice(_GENERIC)}"
        return Example(self.task.input_template.format(title=title, ref1=refs[0], ref2=refs[1]), gold)

    @staticmethod
    def references(text: str) -> tuple[str, str]:
        m = re.search(r'\[1\]: "(.*)" \[2\]: "(.*)"', text)
        return (m.group(1), m.group(2)) if m else ("", "")

    @classmethod
    def evidence(cls, profile: Sequence[Mapping[str, Any]], text: str) -> tuple[Counter[str], tuple[int, int]]:
        """The words of the profile's papers, and how often each reference's words occur among them."""
        bag = Counter(w for item in profile for w in words(f"{item.get('title', '')} {item.get('abstract', '')}"))
        r1, r2 = cls.references(text)
        return bag, (sum(bag[w] for w in words(r1)), sum(bag[w] for w in words(r2)))

    @staticmethod
    def choose(hits: tuple[int, int]) -> str:
        return "[2]" if hits[1] > hits[0] else "[1]"

    def profile_reader(self):
        return lambda q: self.choose(self.evidence(q.profile, q.input)[1])

    def user_blind(self, train):
        majority = Counter(q.gold for q in train).most_common(1)[0][0]
        return lambda q: majority


# ---------------------------------------------------------------- LaMP-2


MOVIE_PHRASES = {
    "sci-fi": ["a starship crew", "alien contact", "a distant galaxy"],
    "based on a book": ["a bestselling novel adaptation", "the famous book", "pages of a beloved novel"],
    "comedy": ["hilarious mishaps", "a bumbling hero", "slapstick chaos"],
    "action": ["explosive car chases", "a daring heist", "nonstop fistfights"],
    "twist ending": ["a shocking final reveal", "a last minute surprise", "nothing as it seems"],
    "dystopia": ["a totalitarian future state", "a ruined society", "rebels against the regime"],
    "dark comedy": ["morbid humor", "a funeral gone wrong", "grim jokes"],
    "classic": ["a golden age masterpiece", "the black and white era", "a timeless studio film"],
    "psychology": ["a troubled mind", "a therapist and patient", "obsession and memory"],
    "fantasy": ["wizards and dragons", "an enchanted kingdom", "a magic sword"],
    "romance": ["two lovers", "a summer love affair", "a wedding plan"],
    "thought-provoking": ["big questions about life", "a moral dilemma", "the meaning of existence"],
    "social commentary": ["class inequality", "a corrupt city hall", "workers on strike"],
    "violence": ["brutal gang wars", "bloody revenge", "a ruthless killer"],
    "true story": ["real events", "a real life survivor", "a historical account"],
}
assert tuple(MOVIE_PHRASES) == LAMP2_LABELS


@GENERATORS.register("LaMP_2")
class MovieTagging(Generator):
    task_name = "LaMP_2"

    def latent(self, rng):
        return {"favorites": rng.sample(LAMP2_LABELS, 3)}

    def _movie(self, user, rng) -> tuple[str, str]:
        gold = rng.choice(user["favorites"])
        others = rng.sample([t for t in LAMP2_LABELS if t not in user["favorites"]], 2)
        tags = [gold, *others]
        rng.shuffle(tags)
        p = [rng.choice(MOVIE_PHRASES[t]) for t in tags]
        return f"A film about {p[0]}, with {p[1]} and {p[2]}.", gold

    def profile_item(self, user, rng):
        description, tag = self._movie(user, rng)
        return {"description": description, "tag": tag}

    def example(self, user, rng):
        description, gold = self._movie(user, rng)
        return Example(self.task.input_template.format(description=description), gold)

    @staticmethod
    def candidates(text: str) -> list[str]:
        description = text.rsplit("description:", 1)[-1]
        found = [(description.find(p), t) for t, ps in MOVIE_PHRASES.items() for p in ps if p in description]
        return [t for _, t in sorted(found)] or list(LAMP2_LABELS)

    def profile_reader(self):
        def predict(q: Prompt) -> str:
            counts = Counter(item["tag"] for item in q.profile)
            cands = self.candidates(q.input)
            return max(cands, key=lambda t: counts[t])

        return predict

    def user_blind(self, train):
        freq = Counter(q.gold for q in train)
        return lambda q: max(self.candidates(q.input), key=lambda t: freq[t])


# ---------------------------------------------------------------- LaMP-3


SENTIMENT = {
    1: ["terrible product", "broke after one day", "complete waste of money", "awful quality"],
    2: ["disappointing", "below expectations", "flimsy build", "not worth the price"],
    3: ["okay overall", "average quality", "does the job", "mixed feelings"],
    4: ["good value", "works well", "solid build", "pleased with it"],
    5: ["amazing product", "absolutely love it", "best purchase ever", "flawless quality"],
}
PRODUCTS = ["blender", "headphones", "backpack", "lamp", "kettle", "keyboard", "jacket", "phone case", "tent", "mug"]


def _clip(x: float) -> int:
    return int(min(5, max(1, round(x))))


@GENERATORS.register("LaMP_3")
class Rating(Generator):
    task_name = "LaMP_3"

    def latent(self, rng):
        return {"bias": rng.choice([-2, -1, 0, 1, 2])}

    def _review(self, user, rng) -> tuple[str, int]:
        s = rng.randint(1, 5)
        a, b = rng.sample(SENTIMENT[s], 2)
        return f"I bought this {rng.choice(PRODUCTS)}. {a.capitalize()}, {b}.", _clip(s + user["bias"])

    def profile_item(self, user, rng):
        text, score = self._review(user, rng)
        return {"text": text, "score": str(score)}

    def example(self, user, rng):
        text, score = self._review(user, rng)
        return Example(self.task.input_template.format(review=text), str(score))

    @staticmethod
    def sentiment(text: str) -> int:
        hits = [s for s, ps in SENTIMENT.items() for p in ps if p in text.lower()]
        return round(sum(hits) / len(hits)) if hits else 3

    @classmethod
    def bias_evidence(cls, profile: Sequence[Mapping[str, Any]]) -> tuple[list[float], float]:
        """Each past score minus its review's sentiment (sorted), and their median: the user's bias."""
        diffs = sorted(float(item.get("score", 3)) - cls.sentiment(str(item.get("text", ""))) for item in profile)
        return diffs, diffs[len(diffs) // 2] if diffs else 0.0

    def profile_reader(self):
        return lambda q: str(_clip(self.sentiment(q.input) + self.bias_evidence(q.profile)[1]))

    def user_blind(self, train):
        mean_bias = sum(float(q.gold) - self.sentiment(q.input) for q in train) / len(train)
        return lambda q: str(_clip(self.sentiment(q.input) + mean_bias))


# ---------------------------------------------------------------- LaMP-4..7


class Styled(Generator):
    """Generation tasks: gold = the user's prefix + the generic output (core) + the user's suffix."""

    prefixes: list[str]
    suffixes: list[str]
    profile_text_field: str | None  # the field holding the source text; None for LaMP-7

    def source(self, rng: random.Random) -> tuple[str, str]:
        """(source text, core output)."""
        raise NotImplementedError

    def core(self, source: str) -> str:
        """The generic, user-blind output for a source text."""
        raise NotImplementedError

    def input_of(self, source: str) -> str:
        field = re.search(r"\{(\w+)\}", self.task.input_template).group(1)
        return self.task.input_template.format(**{field: source})

    def source_of(self, text: str) -> str:
        head = self.task.input_template.split("{")[0]
        return text.removeprefix(head)

    def latent(self, rng):
        return {"prefix": rng.choice(self.prefixes), "suffix": rng.choice(self.suffixes)}

    @staticmethod
    def style(user: dict[str, Any], core: str) -> str:
        return " ".join(x for x in (user["prefix"], core, user["suffix"]) if x)

    def profile_item(self, user, rng):
        source, core = self.source(rng)
        out = self.task.profile_output
        item = {out: self.style(user, core)}
        if self.profile_text_field:
            item[self.profile_text_field] = source
        return item

    def example(self, user, rng):
        source, core = self.source(rng)
        return Example(self.input_of(source), self.style(user, core))

    @staticmethod
    def affix(outputs: list[list[str]], from_end: bool) -> list[str]:
        """The longest word sequence that starts (or ends) at least 60% of the outputs."""
        best: list[str] = []
        for k in range(1, 6):
            seqs = Counter(tuple(o[-k:] if from_end else o[:k]) for o in outputs if len(o) > k)
            if not seqs:
                break
            seq, n = seqs.most_common(1)[0]
            if n < 0.6 * len(outputs):
                break
            best = list(seq)
        return best

    def styled_answer(self, outputs: list[list[str]], source: str) -> tuple[str, str, str]:
        """(prefix, core, suffix) for ``source`` in the style the past ``outputs`` share. Words the
        core itself starts or ends with (LaMP-7 tweets all start "finished") are not style."""
        core = self.core(source)
        words_ = core.split()
        prefix, suffix = self.affix(outputs, False), self.affix(outputs, True)
        for k in range(min(len(prefix), len(words_)), 0, -1):
            if prefix[-k:] == words_[:k]:
                prefix = prefix[:-k]
                break
        for k in range(min(len(suffix), len(words_)), 0, -1):
            if suffix[:k] == words_[-k:]:
                suffix = suffix[k:]
                break
        return " ".join(prefix), core, " ".join(suffix)

    def profile_reader(self):
        def predict(q: Prompt) -> str:
            outputs = [str(item[self.task.profile_output]).split() for item in q.profile]
            return " ".join(x for x in self.styled_answer(outputs, self.source_of(q.input)) if x)

        return predict

    def user_blind(self, train):
        return lambda q: self.core(self.source_of(q.input))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@GENERATORS.register("LaMP_4")
class Headline(Styled):
    task_name = "LaMP_4"
    profile_text_field = "text"
    prefixes = ["Breaking news:", "Exclusive report:", "Watch live:", "Latest update:", "In depth:", "Opinion piece:"]
    suffixes = ["says new report", "amid growing criticism", "in surprise move", "as critics react", "for now"]
    subjects = ["The city council", "Local farmers", "The central bank", "Tech workers", "The national team",
                "School officials", "Health experts", "The mayor", "Airline staff", "State lawmakers"]
    verbs = [("approved", "approves"), ("rejected", "rejects"), ("announced", "announces"),
             ("delayed", "delays"), ("celebrated", "celebrates"), ("questioned", "questions")]
    objects = ["new budget plan", "water tax", "stadium project", "rail expansion", "school reform",
               "trade deal", "climate policy", "housing rules", "wage increase", "cyber law"]
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]

    def source(self, rng):
        s, (past, present), o = rng.choice(self.subjects), rng.choice(self.verbs), rng.choice(self.objects)
        text = (f"{s} {past} the {o} on {rng.choice(self.days)}, according to officials. "
                f"Critics said the {o} could change the region for years. More details are expected soon.")
        return text, f"{s} {present} {o}"

    def core(self, source):
        m = re.match(r"(.+?) (\w+)ed the (.+?) on \w+,", source)
        if not m:
            return source.split(".")[0]
        past = m.group(2) + "ed"
        present = next((p for v, p in self.verbs if v == past), m.group(2) + "s")
        return f"{m.group(1)} {present} {m.group(3)}"


@GENERATORS.register("LaMP_5")
class ScholarlyTitle(Styled):
    task_name = "LaMP_5"
    profile_text_field = "abstract"
    prefixes = ["Towards better", "Rethinking", "On the use of", "Revisiting", "Understanding"]
    suffixes = ["a practical survey", "at scale", "with provable guarantees", "lessons learned", "made simple"]
    methods = ["graph networks", "sparse attention", "contrastive learning", "bayesian inference",
               "meta learning", "diffusion models", "reinforcement learning", "kernel methods"]
    problems = ["anomaly detection", "image retrieval", "protein folding", "traffic forecasting",
                "code generation", "speech enhancement", "drug discovery", "fraud detection"]
    domains = ["low resource settings", "noisy data", "edge devices", "medical records", "streaming data"]

    def source(self, rng):
        m, p, d = rng.choice(self.methods), rng.choice(self.problems), rng.choice(self.domains)
        text = (f"We study {p} in {d}. We propose a new approach based on {m}. "
                f"Experiments show strong gains over prior work on {p}.")
        return text, f"{_cap(m)} for {p} in {d}"

    def core(self, source):
        m = re.match(r"We study (.+?) in (.+?)\. We propose a new approach based on (.+?)\.", source)
        return f"{_cap(m.group(3))} for {m.group(1)} in {m.group(2)}" if m else source.split(".")[0]


@GENERATORS.register("LaMP_6")
class EmailSubject(Styled):
    task_name = "LaMP_6"
    profile_text_field = "text"
    prefixes = ["Re:", "FYI:", "Urgent:", "Quick ask:", "Reminder:"]
    suffixes = ["by Friday please", "thanks in advance", "action needed", "when you can", "before the call"]
    actions = ["review", "approve", "update", "sign", "check", "finalize"]
    objects = ["quarterly report", "travel budget", "hiring plan", "client contract", "server migration",
               "team offsite", "design mockups", "sales forecast"]
    days = ["Monday", "Wednesday", "Friday", "next week", "the deadline"]

    def source(self, rng):
        a, o = rng.choice(self.actions), rng.choice(self.objects)
        text = (f"Hi all, please {a} the {o} before {rng.choice(self.days)}. "
                f"Let me know if anything is unclear. Thanks.")
        return text, f"{_cap(a)} the {o}"

    def core(self, source):
        m = re.match(r"Hi all, please (\w+) the (.+?) before ", source)
        return f"{_cap(m.group(1))} the {m.group(2)}" if m else source.split(".")[0]


@GENERATORS.register("LaMP_7")
class TweetParaphrase(Styled):
    task_name = "LaMP_7"
    profile_text_field = None
    prefixes = ["ugh honestly", "omg", "lol ok so", "yay", "not gonna lie"]
    suffixes = ["#blessed", "#mondays", "#nofilter life", "!!! cannot wait", "#life goes on"]
    activities = ["my morning run", "the new album", "a long shift", "my exams", "the marathon",
                  "spring cleaning", "the book club read", "a road trip"]
    feelings = ["great", "exhausting", "amazing", "rough", "fun", "weird"]

    def source(self, rng):
        a, f = rng.choice(self.activities), rng.choice(self.feelings)
        return f"Just finished {a} and honestly it was {f}.", f"finished {a} and it was {f}"

    def core(self, source):
        m = re.match(r"Just finished (.+?) and honestly it was (\w+)\.", source)
        return f"finished {m.group(1)} and it was {m.group(2)}" if m else source


# ---------------------------------------------------------------- writing and reporting


@dataclass
class SynthSplit:
    questions: list[dict[str, Any]]
    golds: dict[str, str]
    users: dict[str, dict[str, Any]]


def generate_split(task: str, split_index: int, n_users: int, cfg: SyntheticConfig) -> SynthSplit:
    gen = generator(task)
    rng = random.Random(f"{cfg.seed}-{task}-{split_index}")
    k = gen.task.number
    questions, golds, users = [], {}, {}
    for u in range(n_users):
        user_id = f"{k}{split_index}{u:04d}"
        user = gen.latent(rng)
        users[user_id] = user
        profile = [{"id": f"{user_id}{j:03d}", **gen.profile_item(user, rng)} for j in range(cfg.profile_size)]
        for n in range(cfg.questions_per_user):
            ex = gen.example(user, rng)
            qid = f"{user_id}{n:03d}"
            questions.append({"id": qid, "input": ex.input, "profile": profile, "user_id": user_id})
            golds[qid] = ex.gold
    return SynthSplit(questions, golds, users)


SETTINGS_FILE = "synthetic.json"


def write_synthetic(root: str | Path, cfg: SyntheticConfig, tasks: list[str]) -> dict[str, dict[str, int]]:
    """Write ``root/LaMP_k/{split}_questions.json``, ``{split}_outputs.json``, ``users.json`` and
    the settings they were made with (``synthetic.json``, read by :func:`stale_tasks`)."""
    counts: dict[str, dict[str, int]] = {}
    for task in tasks:
        users: dict[str, Any] = {}
        for i, (split, n_users) in enumerate(cfg.users.items(), start=1):
            s = generate_split(task, i, n_users, cfg)
            base = Path(root) / task
            write_questions(base / f"{split}_questions.json", s.questions)
            write_outputs(base / f"{split}_outputs.json", task, s.golds)
            users.update(s.users)
            counts.setdefault(task, {})[split] = len(s.questions)
        (Path(root) / task / "users.json").write_text(json.dumps(users, indent=1), encoding="utf-8")
        (Path(root) / task / SETTINGS_FILE).write_text(cfg.model_dump_json(indent=1), encoding="utf-8")
    return counts


def stale_tasks(root: str | Path, cfg: SyntheticConfig, tasks: list[str]) -> list[str]:
    """Tasks whose synthetic users under ``root`` were written with other settings (or before the
    settings were recorded), so reusing them would silently train on another data set. Folders
    without ``users.json`` are not synthetic (a user's own LaMP files) and never stale."""
    stale = []
    for task in tasks:
        base = Path(root) / task
        if not (base / "users.json").exists():
            continue
        settings = base / SETTINGS_FILE
        if not settings.exists() or SyntheticConfig.model_validate_json(settings.read_text()) != cfg:
            stale.append(task)
    return stale


def baseline_report(task: str, train: list[Prompt], dev: list[Prompt]) -> dict[str, dict[str, float]]:
    """Official scores on ``dev`` of the profile reader and the user-blind baseline (fitted on ``train``);
    both splits' questions carry their golds."""
    gen = generator(task)
    out = {}
    predictors = {"profile_reader": gen.profile_reader(), "user_blind": gen.user_blind(train)}
    golds = {q.id: q.gold for q in dev}
    for name, predictor in predictors.items():
        preds = {q.id: predictor(q) for q in dev}
        out[name] = score_task(gen.task, preds, golds)
    return out


def dev_baselines(
    root: str | Path, tasks: list[str], train_split: str, dev_split: str, skip_invalid: bool = False
) -> dict[str, dict[str, dict[str, float]]]:
    """``baseline_report`` for every task of a data root: task -> baseline -> official scores."""
    out = {}
    for task in tasks:
        train = load_split(root, task, train_split, skip_invalid)
        dev = load_split(root, task, dev_split, skip_invalid)
        out[task] = baseline_report(task, train.questions, dev.questions)
    return out
