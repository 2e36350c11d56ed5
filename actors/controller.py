"""The RL controller: builds the three roles and runs the stages (docs/method.md sections 6 and 8).

- the TrajectoryBuffer actor (named ``<run name>-buffer`` in the job's namespace): prompts out,
  groups in, staleness and back-pressure;
- the RolloutPool: vLLM rollout workers, watched by a thread that replaces dead ones and applies
  resizes: requests filed with the ``<run name>-control`` actor (``tagpr scale rollout N``) and,
  with ``rollout.autoscale.enabled``, the decisions of ``tagpr.rl.autoscale``;
- rewards: in the workers (``rollout.reward_via: local``), or through the PRMU reward service
  (``http``/``handle``), which the controller deploys on Ray Serve unless ``rollout.reward_url``
  names one already running;
- the learner: one Ray Train run per stage (``actors/learner.py``), each starting from the
  previous stage's final checkpoint; between stages and at the end the policy is exported and
  scored on the dev set.

Everything a run produces lives in its run directory: ``metrics.jsonl`` and ``tensorboard/``,
``checkpoints/step-<n>``, ``stages/<stage>/policy``, ``rl_report.json``.
``resume`` continues a run directory from its newest complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from tagpr.config import TagPRConfig
from tagpr.errors import TagPRError
from tagpr.rl.result import RLResult, RLStage

log = logging.getLogger("tagpr.controller")


METRICS_EVERY_S = 10
WORKER_START_S = 600
_TIMES = ("gen_s", "reward_s", "sync_s", "blocked_s")


def rollout_totals(health: list[dict]) -> dict[str, float]:
    return {k: sum(h[k] for h in health) for k in (*_TIMES, "tokens", "groups")}


def rollout_fractions(before: dict, after: dict, seconds: float, workers: int) -> dict[str, float]:
    """The pool's time split over a window: generating, scoring, loading weights, and blocked by
    back-pressure (``blocked_frac``), per worker-second; and its throughput. A call that
    straddles two windows counts in the one it ends in, so a fraction is capped at 1."""
    span = max(seconds * max(workers, 1), 1e-9)
    delta = {k: max(0.0, after[k] - before.get(k, 0)) for k in after}  # a replaced worker starts from 0
    out = {f"{k.removesuffix('_s')}_frac": min(1.0, delta[k] / span) for k in _TIMES}
    out.update(tokens_per_s=delta["tokens"] / seconds, groups_per_s=delta["groups"] / seconds, workers=workers)
    return out


def _evaluate(policy: str, config: dict, limit: int, sampled: bool, label: str) -> dict:
    from actors.cluster import use_all_cores
    from actors.progress import dev_progress
    from tagpr.evaluation import evaluate_policy

    use_all_cores()  # scoring runs between stages or after them, with the roles idle: 1.36x faster on 2 cores
    return evaluate_policy(policy, TagPRConfig.model_validate(config), limit=limit, sampled=sampled,
                           on_task=dev_progress(label))


def evaluate_remote(policy: str, cfg: TagPRConfig, limit: int, sampled: bool = True, label: str = "RL") -> dict:
    """Dev scores of ``policy`` (:func:`tagpr.evaluation.evaluate_policy`) in a fresh Ray worker process:
    an in-process vLLM engine keeps process-wide state, so each evaluation gets its own process."""
    import ray

    task = ray.remote(max_calls=1, num_cpus=1)(_evaluate)
    return ray.get(task.remote(policy, cfg.model_dump(mode="json"), limit, sampled, label))


class RLController:
    def __init__(self, cfg: TagPRConfig, run_dir: Path, log_fn: Callable[[str], None] = print):
        self.cfg, self.run_dir, self.log = cfg, run_dir, log_fn
        self.buffer = self.pool = self.control = None
        self.deployed_service = False  # the reward service this run started, and stops at its end
        self._watch_stop = threading.Event()
        # what the run's RLResult reports, filled in as the run goes
        self.stages: dict[str, RLStage] = {}
        self.evaluations: dict[str, dict[str, Any]] = {}
        self.pool_error: str | None = None
        self.buffer_stats: dict[str, Any] | None = None
        self.pool_events: list[dict[str, Any]] | None = None
        self.scale_decisions: list[dict[str, Any]] | None = None

    # ------------------------------------------------------------ roles

    def _check(self) -> None:
        cfg = self.cfg
        needs_prmu = any(s.weights.get("prmu") for s in cfg.rl.stages)
        if needs_prmu and not cfg.prmu.checkpoint and not (cfg.rollout.reward_via == "http" and cfg.rollout.reward_url):
            raise TagPRError("a stage weights the 'prmu' reward but prmu.checkpoint is not set (train one with "
                             "`tagpr prmu train`, or drop 'prmu' from rl.stages[*].weights)")
        if cfg.rollout.num_workers < 1:
            raise TagPRError("rollout.num_workers must be at least 1 for an RL run")

    def _cpu_layout(self) -> TagPRConfig:
        """The config with the roles pinned to separate cores where the cluster is this one node and it
        has them (``tagpr.rl.placement``); else unchanged."""
        import ray

        from tagpr.rl.placement import role_cores

        cfg = self.cfg
        r, lc = cfg.rollout, cfg.learner
        if cfg.cluster.cpu_layout == "off" or r.cpu_affinity or lc.cpu_affinity:
            return cfg
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        if nodes != [ray.get_runtime_context().get_node_id()]:
            return cfg
        layout = role_cores(os.sched_getaffinity(0), ray.cluster_resources().get("CPU", 0), r.num_workers,
                            r.num_cpus, lc.num_workers)
        if layout is None:
            return cfg
        self.log(f"rl: rollout worker(s) on CPUs {layout[0]}, the learner on {layout[1]} (cluster.cpu_layout)")
        return cfg.model_copy(update={"rollout": r.model_copy(update={"cpu_affinity": layout[0]}),
                                      "learner": lc.model_copy(update={"cpu_affinity": layout[1]})})

    def _reward_service(self) -> None:
        r = self.cfg.rollout
        if r.reward_via not in ("http", "handle") or r.reward_url:
            return
        from services.reward.deploy import deploy, serve_reward

        if r.reward_via == "http":
            url = serve_reward(self.cfg, self.cfg.prmu.checkpoint)
            self.log(f"rl: reward service at {url}")
        else:
            deploy(self.cfg, self.cfg.prmu.checkpoint)
        self.deployed_service = True

    def _start_roles(self, policy: str) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from actors.buffer import create_buffer
        from actors.control import RunControl, control_name
        from actors.pool import RolloutPool
        from tagpr.rl.data import load_prompts

        cfg = self.cfg
        ids = sorted(load_prompts(cfg))
        # The job's state lives on the driver's node: a zero-CPU actor could otherwise land on a rollout
        # node, which the autoscaler releases when the pool shrinks.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.buffer = create_buffer(cfg, ids, name=f"{cfg.run.name}-buffer", num_cpus=0,
                                    max_concurrency=2 * cfg.rollout.max_workers + 8, scheduling_strategy=here)
        self.initial_snapshot = ray.get(self.buffer.snapshot.remote())
        self._reward_service()
        self.pool = RolloutPool(cfg, self.buffer, policy)
        self.pool.scale(cfg.rollout.num_workers)
        self.log(f"rl: starting {self.pool.size} rollout worker(s), each asking for {self.pool.resources}")
        try:
            self.pool.wait_ready(timeout_s=WORKER_START_S)
        except ray.exceptions.GetTimeoutError:
            raise TagPRError(f"rollout workers did not start within {WORKER_START_S} s; each asks for "
                             f"{self.pool.resources} and the cluster has {ray.available_resources()} free "
                             "(lower rollout.num_cpus, or give Ray more: cluster.num_cpus)") from None
        r = cfg.rollout
        self.control = ray.remote(RunControl).options(name=control_name(cfg.run.name), num_cpus=0,
                                                      scheduling_strategy=here).remote(
            r.min_workers, r.max_workers, self.pool.size)
        self.log(f"rl: {len(ids)} prompts, {self.pool.size} rollout worker(s), "
                 f"max_staleness {cfg.rl.max_staleness}")
        threading.Thread(target=self._watch, daemon=True, name="pool-watch").start()

    def _watch(self) -> None:
        """Every second: replace dead workers and apply a requested size. Every ``METRICS_EVERY_S``:
        log the pool's time split and the learner's wait, and let the autoscaler (if on) decide."""
        import ray

        from actors.metrics import RunMetrics
        from tagpr.rl.autoscale import AutoscalePolicy

        a, r = self.cfg.rollout.autoscale, self.cfg.rollout
        autoscaler = (AutoscalePolicy(r.min_workers, r.max_workers, a.grow_above, a.shrink_above, a.window_s,
                                      a.cooldown_s) if a.enabled else None)
        sink = RunMetrics(self.run_dir, "rollout")
        last, last_wait, t_last, n = {}, 0.0, time.monotonic(), 0
        while not self._watch_stop.wait(1.0):
            n += 1
            try:
                for wid in self.pool.check():
                    self.log(f"rl: rollout worker {wid} died and was replaced")
                if request := ray.get(self.control.pending.remote()):
                    ticket, size = request
                    self._resize(size, "request", f"asked for {size}", sink, n, ticket)
                if n % METRICS_EVERY_S == 0:
                    now = time.monotonic()
                    totals = rollout_totals(self.pool.health())
                    waited = ray.get(self.buffer.stats.remote())["learner_wait_s"]
                    window = rollout_fractions(last, totals, now - t_last, self.pool.size)
                    window["learner_wait_frac"] = min(1.0, (waited - last_wait) / max(now - t_last, 1e-9))
                    sink.log(n, window)
                    if autoscaler and (d := autoscaler.observe(
                            now, now - t_last, waited - last_wait,
                            max(0.0, totals["blocked_s"] - last.get("blocked_s", 0.0)), self.pool.size)):
                        self._resize(d.size, "auto", d.reason, sink, n)
                    last, last_wait, t_last = totals, waited, now
            except Exception as exc:  # too many failures: the learner's take timeout ends the run
                log.error("rollout pool: %s", exc)
                self.pool_error = str(exc)
                break
        sink.close()

    def _resize(self, size: int, source: str, reason: str, sink, step: int, ticket: int | None = None) -> None:
        """Scale the pool, log the decision (console and ``metrics.jsonl``) and report it to the control actor."""
        previous = self.pool.size
        new = self.pool.scale(size)
        self.control.record.remote(new, previous, source, reason, ticket)
        if new != previous:
            self.log(f"rl: rollout pool {previous} -> {new} ({source}: {reason})")
            sink.log(step, {"scale_from": previous, "scale_to": new, "scale_source": source})

    def _pool_totals(self) -> dict[str, float] | None:
        """The pool's summed time and work counters; None while a worker cannot answer (being replaced)."""
        try:
            return rollout_totals(self.pool.health())
        except Exception:
            return None

    def _stop_roles(self) -> None:
        import ray

        self._watch_stop.set()
        if self.buffer is not None:
            ray.get(self.buffer.stop_producers.remote())
            self.buffer_stats = ray.get(self.buffer.stats.remote())
        if self.pool is not None:
            self.pool_events = self.pool.events
            self.pool.shutdown()
        if self.buffer is not None:
            ray.kill(self.buffer)
        if self.control is not None:
            self.scale_decisions = ray.get(self.control.status.remote())["decisions"]
            ray.kill(self.control)
        if self.deployed_service:
            from ray import serve

            from services.reward.deploy import APP_NAME

            serve.delete(APP_NAME)

    # ------------------------------------------------------------ stages

    def _evaluate(self, name: str, policy: str, known: dict | None = None) -> dict:
        """Score ``policy`` on dev (``rl.eval_limit``), or record ``known``, its scores on those questions."""
        result = known or evaluate_remote(policy, self.cfg, self.cfg.rl.eval_limit)
        self.evaluations[name] = result
        self.log(f"rl: dev at {name}: format {result['format_valid']:.3f} tag {result['tag_score']:.3f} "
                 f"task score {result['task_score']:.3f}")
        return result

    def run(self, resume: bool = False, start_evaluation: dict | None = None) -> RLResult:
        """Every stage (or the rest of them on ``resume``); ``start_evaluation``: the starting policy's
        dev scores on ``rl.eval_limit``'s questions where an earlier step has them (SFT's)."""
        import ray

        from actors.checkpoints import export_hf, read_state
        from actors.cluster import connect
        from actors.learner import latest_checkpoint, train_stage
        from tagpr.models import resolve_model_path

        cfg = self.cfg
        policy = resolve_model_path(cfg.model.policy, cfg.model.allow_hub)
        self._check()  # the policy folder itself is checked by resolve_model_path
        start_stage, resume_from = 0, None
        if resume:
            ckpt = latest_checkpoint(self.run_dir)
            if ckpt is None:
                raise TagPRError(f"--resume: no learner checkpoint under {self.run_dir / 'checkpoints'}")
            state = read_state(ckpt)
            start_stage = state["stage_index"] + int(state["stage_step"] >= cfg.rl.stages[state["stage_index"]].steps)
            resume_from = str(ckpt)
            self.log(f"rl: resuming from {ckpt} (step {state['step']}, stage {state['stage']})")
        connect(cfg.cluster)
        cfg = self.cfg = self._cpu_layout()
        start = time.perf_counter()
        try:
            self._start_roles(policy)
            if cfg.rl.eval_limit and start_stage == 0 and not resume:
                self._evaluate("start", policy, start_evaluation)
            for i in range(start_stage, len(cfg.rl.stages)):
                stage = cfg.rl.stages[i]
                ray.get(self.buffer.set_stage.remote(stage.name))
                t0, before = time.perf_counter(), self._pool_totals()
                snapshot = self.initial_snapshot if resume_from is None else None
                ckpt = train_stage(cfg, i, self.buffer, policy, policy, self.run_dir, resume_from, snapshot)
                seconds, after = time.perf_counter() - t0, self._pool_totals()
                split = (rollout_fractions(before, after, seconds, self.pool.size)
                         if before is not None and after is not None else None)
                resume_from = str(ckpt)
                exported = export_hf(ckpt, self.run_dir / "stages" / stage.name / "policy")
                self.stages[stage.name] = RLStage(**read_state(ckpt), seconds=round(seconds, 1), policy=str(exported),
                                                  rollout={k: round(v, 4) for k, v in split.items()} if split else None)
                if split:
                    self.log(f"rl: stage {stage.name}: rollout workers generating {split['gen_frac']:.0%} of the "
                             f"time, waiting for rewards {split['reward_frac']:.0%}, loading weights "
                             f"{split['sync_frac']:.0%}")
                if cfg.rl.eval_limit:
                    self._evaluate(stage.name, str(exported.resolve()))
        finally:
            self._stop_roles()
            result = RLResult(run_dir=str(self.run_dir), stages=self.stages, evaluations=self.evaluations,
                              pool_error=self.pool_error, buffer=self.buffer_stats, pool_events=self.pool_events,
                              scale_decisions=self.scale_decisions, seconds=round(time.perf_counter() - start, 1))
            (self.run_dir / "rl_report.json").write_text(json.dumps(result.to_json(), indent=1, default=str))
        return result
