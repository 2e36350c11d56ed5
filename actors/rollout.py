"""The RolloutWorker actor: prompts from the buffer -> G samples each (vLLM) -> rewards -> groups.

One loop serves both modes: :meth:`run` repeats :meth:`step` until stopped (asynchronous
training), and a synchronous controller calls :meth:`step` itself. Before any prompt, a worker
holding older weights than the buffer's newest loads them. A load slower than
``rollout.sync_timeout_s``, or failing, marks the worker unhealthy and raises :class:`SyncFailed`:
the pool then replaces the whole actor, whose fresh engine loads the current version before its
first prompt. (An in-process vLLM engine keeps process-wide state, so a second engine in the same
process is not a clean restart.)
"""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from actors.cluster import pin_cpus
from actors.weights import WeightLoader, WeightUpdate
from tagpr.config import TagPRConfig
from tagpr.rewards import RewardInput
from tagpr.rl.buffer import LoadWeights, Stop
from tagpr.rl.trajectory import Group, Trajectory

PROMPT_CACHE = 4096  # prompts whose token ids a worker keeps
WAIT_S = 0.5  # how long the buffer holds a request for work when there is no room
UNSCORED = "reward unavailable"  # the buffer's drop reason for a group the reward service could not score


class SyncFailed(RuntimeError):
    pass


def _publisher_gone(exc: BaseException) -> bool:
    """The update's objects died with the process that published them (a learner run that ended or
    crashed): not this worker's fault; the buffer waits for the next learner's publish."""
    from ray.exceptions import ObjectLostError

    return isinstance(exc, ObjectLostError) or isinstance(getattr(exc, "cause", None), ObjectLostError)


class RolloutWorker:
    def __init__(self, worker_id: str, config: dict[str, Any], buffer, policy: str):
        from services.reward.client import make_reward_client
        from tagpr.engines import Sampling, make_engine
        from tagpr.rl.data import load_prompts
        from tagpr.tags import TagSet

        self.id, self.buffer, self.policy = worker_id, buffer, policy
        self.cfg = cfg = TagPRConfig.model_validate(config)
        pin_cpus(cfg.rollout.cpu_affinity, "rollout.cpu_affinity")
        self.engine = make_engine(cfg.rollout.engine, policy, cfg.model.dtype)
        self.rewards = make_reward_client(cfg, cfg.rollout.reward_via)
        # a reward service scores elsewhere: a batch's group calls go out together, on a thread of
        # their own, while the engine samples the next batch
        remote = getattr(self.rewards, "remote", False)
        self._reward_calls = ThreadPoolExecutor(cfg.rollout.prompts_per_request, "reward") if remote else None
        self._scoring = ThreadPoolExecutor(1, "scoring") if remote else None
        self._pending: Future | None = None  # the previous batch's groups, being scored
        self.prompts = load_prompts(cfg)
        self.tags = TagSet(cfg.tags)
        r = cfg.rollout
        self.sampling = Sampling(n=cfg.rl.group_size, temperature=r.temperature, top_p=r.top_p,
                                 max_tokens=r.max_tokens, stop=tuple(r.stop))
        self.prompt_tokens = functools.lru_cache(maxsize=PROMPT_CACHE)(self._render)
        self.version, self.healthy = 0, True  # version 0: the policy on disk
        self.weights = WeightLoader()
        self._stop = threading.Event()
        self.counters = {"batches": 0, "groups": 0, "admitted": 0, "unscored": 0, "tokens": 0, "syncs": 0,
                         "gen_s": 0.0, "reward_s": 0.0, "sync_s": 0.0, "blocked_s": 0.0}

    # ------------------------------------------------------------ weights

    def _load(self, update: WeightUpdate) -> None:
        self.weights.apply(self.engine, update, self.cfg.rollout.sync_timeout_s)

    def sync(self, update: WeightUpdate) -> int:
        """Load ``update`` within ``rollout.sync_timeout_s``, or raise :class:`SyncFailed`; an update
        whose publisher is gone is reported to the buffer instead."""
        start = time.perf_counter()
        error: list[BaseException] = []

        def load() -> None:
            try:
                self._load(update)
            except BaseException as exc:  # reported to the waiting thread below
                error.append(exc)

        t = threading.Thread(target=load, daemon=True)
        t.start()
        t.join(self.cfg.rollout.sync_timeout_s)
        if error and _publisher_gone(error[0]):
            import ray

            ray.get(self.buffer.weights_lost.remote(update.version))
            return self.version
        if t.is_alive() or error:
            self.healthy = False
            why = f"took over {self.cfg.rollout.sync_timeout_s}s" if t.is_alive() else repr(error[0])
            raise SyncFailed(f"{self.id}: loading weight version {update.version} failed: {why}")
        self.version = update.version
        self.counters["syncs"] += 1
        self.counters["sync_s"] += time.perf_counter() - start
        return self.version

    # ------------------------------------------------------------ generation

    def step(self) -> int:
        """One round with the buffer: groups offered (0 after a weight load or a wait), -1 once stopped.

        With a reward service, a batch's groups are offered one round later: the engine samples the
        next batch while the service scores this one. Groups still being scored are offered before a
        weight load, before the worker waits for work, and when it stops."""
        import ray

        start = time.perf_counter()
        work = ray.get(self.buffer.request_work.remote(self.id, self.cfg.rollout.prompts_per_request, self.version,
                                                       wait_s=0.0 if self._pending else WAIT_S))
        if isinstance(work, Stop):
            self._offer_pending()
            return -1
        if isinstance(work, LoadWeights):
            offered = self._offer_pending()
            self.sync(work.update)
            return offered
        if not work.refs:  # back-pressure: the buffer held the request until it gave up
            if self._pending:
                return self._offer_pending()
            self.counters["blocked_s"] += time.perf_counter() - start
            return 0
        gens, gen_s = self._sample(work.refs)
        offered = self._offer_pending()
        if self._scoring is None:
            return offered + self._offer(self._score_now(work.refs, gens, work.stage, gen_s))
        self._pending = self._scoring.submit(self._score, work.refs, gens, work.stage, self.version, gen_s)
        return offered

    def _offer_pending(self) -> int:
        """Wait for the batch being scored (the wait counts as ``reward_s``) and offer its groups."""
        if self._pending is None:
            return 0
        start = time.perf_counter()
        try:
            groups = self._pending.result()
        finally:
            self._pending = None
            self.counters["reward_s"] += time.perf_counter() - start
        return self._offer(groups)

    def _offer(self, groups: list[Group]) -> int:
        import ray

        scored = [g for g in groups if g.scored]
        unscored = [g.prompt for g in groups if not g.scored]
        admitted = ray.get([self.buffer.offer.remote(g) for g in scored]
                           + [self.buffer.give_back.remote(r, UNSCORED) for r in unscored])
        self.counters["admitted"] += sum(admitted[:len(scored)])
        self.counters["unscored"] += len(unscored)
        return len(groups)

    def generate(self, refs, stage: str) -> list[Group]:
        """G samples for each prompt and their rewards, now (tests and benchmarks call it directly)."""
        gens, gen_s = self._sample(refs)
        return self._score_now(refs, gens, stage, gen_s)

    def _score_now(self, refs, gens, stage: str, gen_s: float) -> list[Group]:
        """Score in this thread; the whole scoring time is time waiting for rewards."""
        start = time.perf_counter()
        groups = self._score(refs, gens, stage, self.version, gen_s)
        self.counters["reward_s"] += time.perf_counter() - start
        return groups

    def _sample(self, refs) -> tuple[list, float]:
        start = time.perf_counter()
        gens = self.engine.generate([self.prompt_tokens(r.id) for r in refs], self.sampling)
        gen_s = time.perf_counter() - start
        self.counters["gen_s"] += gen_s
        self.counters["batches"] += 1
        self.counters["tokens"] += sum(len(c.token_ids) for gen in gens for c in gen.completions)
        return gens, gen_s

    def _score(self, refs, gens, stage: str, version: int, gen_s: float) -> list[Group]:
        """The groups of one sampled batch, with one reward call per group (the PRMU term is
        normalised within a group), the calls in flight together where the client allows it. A group
        whose rewards the failure policy filled in (``defaulted``) is marked not ``scored``: it is
        not trained on, and its prompt goes back to the queue."""
        start = time.perf_counter()
        calls = [[RewardInput(self.prompts[r.id], c.text) for c in gen.completions] for r, gen in zip(refs, gens)]
        score = functools.partial(self.rewards.reward, stage=stage)
        scored = list(self._reward_calls.map(score, calls)) if self._reward_calls else [score(c) for c in calls]
        reward_s = time.perf_counter() - start
        groups = []
        for ref, gen, outcomes in zip(refs, gens, scored):
            trajs = [Trajectory(ref, gen.prompt_token_ids, c.token_ids, c.logprobs or [], c.text,
                                o.components, version, self.id, self._tags(c.text), c.finish_reason,
                                {"gen_s": gen_s / len(gens), "reward_s": reward_s / len(gens)})
                     for c, o in zip(gen.completions, outcomes)]
            groups.append(Group(ref, trajs, version, self.id, scored=not any(o.defaulted for o in outcomes)))
        self.counters["groups"] += len(groups)
        return groups

    def _render(self, prompt_id: str) -> tuple[int, ...]:
        """The chat-templated prompt's token ids; cached in :attr:`prompt_tokens`, since every pass over the
        prompts revisits each one with the same template and tokenizer."""
        from tagpr.sft.data import prompt_text

        p = self.prompts[prompt_id]
        text = prompt_text(self.engine.tokenizer, self.tags, p.task, p.input, p.profile,
                           self.cfg.data.prompt_profile_items)
        return tuple(self.engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    @staticmethod
    def _tags(text: str) -> list[str]:
        from tagpr.tags import parse

        return [s.tag for s in parse(text).sections]

    # ------------------------------------------------------------ lifecycle

    def run(self, max_steps: int | None = None) -> dict[str, Any]:
        """Step until stopped (by :meth:`stop` or the buffer) or after ``max_steps`` rounds."""
        n = 0
        while not self._stop.is_set() and (max_steps is None or n < max_steps):
            if self.step() < 0:
                break
            n += 1
        self._offer_pending()
        return self.health()

    def stop(self) -> None:
        """Finish the current batch, then leave :meth:`run`."""
        self._stop.set()

    def health(self) -> dict[str, Any]:
        return {"worker": self.id, "version": self.version, "healthy": self.healthy, **self.counters,
                "engine": self.engine.health()}
