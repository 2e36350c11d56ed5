"""Typed configuration: pydantic models loaded from YAML with ``--set a.b=c`` overrides.

This module must stay importable without torch, Ray or vLLM (a test checks it): the CLI, the
Ray job entrypoints and the Serve app all read configs before anything heavy is imported.

A section may be given inline or as the path of a YAML file (relative to the config file that
names it); ``configs/default.yaml`` loads the tag set from ``configs/tags.yaml`` that way. The
fully resolved config, with every include expanded, is what ``write_resolved`` puts in a run
directory, so a run can be reproduced from that one file.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from tagpr.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"

TaskType = Literal["classification", "rating", "generation"]

TaskName = Literal["LaMP_1", "LaMP_2", "LaMP_3", "LaMP_4", "LaMP_5", "LaMP_6", "LaMP_7"]
LAMP_TASKS: tuple[str, ...] = TaskName.__args__

# The names each plug-in registry accepts, so a typo fails when the config loads, not inside a Ray
# worker after the first rollouts. The built-in names are listed here (this module cannot import
# the registries, which need torch; tests/unit/test_config.py keeps the lists equal to them), and
# ``tagpr.registry.Registry`` adds every name registered later: a plug-in imported before the
# config loads is accepted by name.
KNOWN_NAMES: dict[str, set[str]] = {
    "reward term": {"format_task", "tag", "prmu"},
    "advantage estimator": {"grpo"},
    "policy loss": {"ppo_clip"},
    "engine": {"vllm", "hf"},
    "weight transport": {"object_store", "shm", "collective", "cuda_ipc"},
    "teacher": {"programmatic", "openai", "vllm"},
    "labeler": {"embedding", "llm"},
}


def _registered(kind: str) -> AfterValidator:
    def check(name: str) -> str:
        if name not in KNOWN_NAMES[kind]:
            known = ", ".join(sorted(KNOWN_NAMES[kind]))
            raise ValueError(f"unknown {kind} {name!r} (known: {known}; a plug-in's module must be imported "
                             "before the config loads)")
        return name

    return AfterValidator(check)


RewardTermName = Annotated[str, _registered("reward term")]
AdvantageName = Annotated[str, _registered("advantage estimator")]
LossName = Annotated[str, _registered("policy loss")]
EngineKind = Annotated[str, _registered("engine")]
TransportName = Annotated[str, _registered("weight transport")]
TeacherName = Annotated[str, _registered("teacher")]
LabelerName = Annotated[str, _registered("labeler")]


def _yaml_switch(value: Any) -> Any:
    """YAML 1.1 reads an unquoted on/off as a boolean: take it back as the word."""
    return ("on" if value else "off") if isinstance(value, bool) else value


Switch = Annotated[Literal["auto", "on", "off"], BeforeValidator(_yaml_switch)]
AutoOff = Annotated[Literal["auto", "off"], BeforeValidator(_yaml_switch)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------- model


class TinyModelConfig(Section):
    """Shape of the embedded default policy built by ``tagpr model init``."""

    family: Literal["qwen2", "llama"] = "qwen2"
    hidden_size: int = Field(256, ge=32)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(768, ge=1)
    vocab_size: int = Field(2048, ge=300, le=65536)
    max_position_embeddings: int = Field(2048, ge=128)
    corpus_lines: int = Field(6000, ge=100)
    seed: int = 0

    @model_validator(mode="after")
    def _heads(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if not 32 <= self.hidden_size // self.num_heads <= 512:
            raise ValueError("head size (hidden_size / num_heads) must be in 32..512 for vLLM's CPU attention")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        return self


class ModelConfig(Section):
    policy: str = Field("artifacts/tiny-policy", description="HF folder or hub id of the policy")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    allow_hub: bool = Field(False, description="allow hub downloads (off: local files only)")
    tiny: TinyModelConfig = TinyModelConfig()


# ---------------------------------------------------------------- data


class SyntheticConfig(Section):
    seed: int = 0
    users: dict[str, int] = Field(default_factory=lambda: {"train": 192, "dev": 64},
                                  description="users per split; dev 64 x 4 questions: 256 per task to compare on; "
                                              "train 192: SFT on 48 users' chains memorised their content")
    questions_per_user: int = Field(4, ge=1)
    profile_size: int = Field(8, ge=2, le=500)

    @model_validator(mode="after")
    def _splits(self) -> SyntheticConfig:
        for split, n in self.users.items():
            if n < 1:
                raise ValueError(f"users.{split} must be at least 1")
        return self


class DataConfig(Section):
    root: str = Field("data/synthetic", description="folder with LaMP_k/{split}_questions.json")
    tasks: list[TaskName] = Field(default_factory=lambda: list(LAMP_TASKS), min_length=1)
    train_split: str = "train"
    dev_split: str = "dev"
    rl_split: str | None = Field(None, description=(
        "split RL draws its prompts from (None: train_split); users SFT never saw, so RL earns its reward on "
        "questions the policy cannot have memorised from the chains"))
    skip_invalid: bool = False
    prompt_profile_items: int = Field(8, ge=0, description="profile items shown in the policy prompt")
    synthetic: SyntheticConfig = SyntheticConfig()

    @model_validator(mode="after")
    def _rl_not_on_dev(self) -> DataConfig:
        if self.rl_split is not None and self.rl_split == self.dev_split:
            raise ValueError(f"rl_split {self.rl_split!r} is the dev split: RL would train on the questions it is "
                             "scored on")
        return self


# ---------------------------------------------------------------- tags


class TagSpec(Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = Field(min_length=1)


class TagsConfig(Section):
    """The tag set and its constraints (docs/method.md section 2); lives in ``configs/tags.yaml``."""

    primary: list[TagSpec] = Field(min_length=1)
    answer: str = Field("answer", pattern=r"^[a-z][a-z0-9_]*$")
    required: dict[str, list[str]] = Field(default_factory=dict)
    order: list[str] = Field(default_factory=list)
    penalty: float = Field(0.25, ge=0, le=1, description="R_tag lost per empty section or order violation")

    @model_validator(mode="after")
    def _consistent(self) -> TagsConfig:
        names = [t.name for t in self.primary]
        if len(set(names)) != len(names):
            raise ValueError("primary tag names must be unique")
        if self.answer in names:
            raise ValueError("the answer tag must not also be a primary tag")
        allowed_keys = {"always", "classification", "rating", "generation"}
        for key, tags in self.required.items():
            if key not in allowed_keys:
                raise ValueError(f"required: unknown task type {key!r} (use {sorted(allowed_keys)})")
            for tag in tags:
                if tag not in names:
                    raise ValueError(f"required.{key}: {tag!r} is not a primary tag")
        for tag in self.order:
            if tag not in names:
                raise ValueError(f"order: {tag!r} is not a primary tag")
        return self


# ---------------------------------------------------------------- rewards and RL stages


class RewardConfig(Section):
    generation_metric: Literal["rougeL", "mean_rouge1_rougeL"] = "rougeL"
    prmu_transform: Literal["calibrated", "group"] = Field(
        "calibrated", description="raw PRMU score to [0, 1]: sigmoid of the score standardised by the PRMU's "
                                  "training-set statistics (calibrated) or within the GRPO group (group)")


CpuList = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
CPU_AFFINITY_HELP = ("CPU ids this role's processes run on (all their threads); for roles sharing a CPU node, "
                     "pinning them to separate cores keeps each one's caches warm (null: cluster.cpu_layout decides)")


class StageConfig(Section):
    """One RL stage; ``weights`` maps registered reward-term names to their coefficients."""

    name: str = Field(min_length=1)
    steps: int = Field(ge=1)
    weights: dict[RewardTermName, float]
    lr_scale: float = Field(1.0, gt=0, description="multiplies rl.lr (after its schedule) during this stage")
    plateau_patience: int = Field(0, ge=0, description="0: never stop early")
    plateau_delta: float = Field(0.005, ge=0)


def _default_stages() -> list[StageConfig]:
    return [
        StageConfig(name="guided", steps=40, weights={"format_task": 1.0, "tag": 0.2, "prmu": 0.3}),
        StageConfig(name="exploratory", steps=40, weights={"format_task": 1.0}),
    ]


class RLConfig(Section):
    stages: list[StageConfig] = Field(default_factory=_default_stages, min_length=1)
    group_size: int = Field(8, ge=2)
    prompts_per_step: int = Field(8, ge=1)
    lr: float = Field(1e-5, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="after warmup, over all stages' steps")
    warmup_steps: int = Field(0, ge=0)
    clip_eps_low: float = Field(0.2, ge=0)
    clip_eps_high: float = Field(0.28, ge=0)
    kl_coef: float = Field(0.0, ge=0)
    is_cap: float = Field(2.0, ge=1.0, description="truncated importance-sampling cap")
    scale_by_std: bool = True
    mini_batches: int = Field(1, ge=1, description="optimizer updates per pass over a step's rollouts")
    ppo_epochs: int = Field(1, ge=1, description="passes over a step's rollouts (old logprobs from one no-grad "
                                                 "pass, so the clip acts from the second update on)")
    skip_uniform_groups: bool = Field(True, description=(
        "groups whose rewards are all equal carry no advantage and are left out of the step, so they do not "
        "dilute the token normaliser (false: trained on like the others, their KL term acting, as TRL does)"))
    dynamic_sampling: bool = Field(False, description="groups whose rewards are all equal are not trained on; the "
                                                      "buffer refills the step with fresh groups instead")
    dynamic_sampling_max_filtered: int = Field(3, ge=0, description=(
        "per step, groups filtered out by dynamic sampling before the step takes what comes, in units of "
        "prompts_per_step (a policy whose groups are nearly all uniform would otherwise use up the prompts)"))
    max_staleness: int = Field(1, ge=0, description="0: strictly on-policy and synchronous")
    eval_limit: int = Field(16, ge=0, description="dev questions per task scored at the start and after each "
                                                  "stage (0: no evaluation)")
    advantage: AdvantageName = Field("grpo", description="registered advantage estimator (tagpr.algos)")
    loss: LossName = Field("ppo_clip", description="registered policy loss (tagpr.algos)")
    std_eps: float = Field(0.05, gt=0, description="added to the group std before dividing (so a group whose "
                                                   "rewards barely differ is not blown up to unit variance)")


# ---------------------------------------------------------------- PRMU, SFT


class PRMUConfig(Section):
    """The personalization reward model (docs/method.md section 4); the sentence encoder stays frozen."""

    variant: Literal["encoder", "causal_lm"] = "encoder"
    encoder: str = Field("minilm", description="'minilm' (packaged all-MiniLM-L6-v2) or an HF path/id")
    backbone: str | None = Field(None, description="causal_lm variant: backbone HF folder (default: model.policy)")
    max_length: int = Field(128, ge=8, le=512, description="encoder tokens per text")
    hidden_size: int = Field(256, ge=8)
    user_id_embedding: bool = True
    user_id_dropout: float = Field(0.5, ge=0, le=1, description="train the history-only (cold-start) path this often")
    score_with_user_id: bool = Field(False, description=(
        "whether the scorer adds the learned user-id embedding for known users; off by default, so RL rewards "
        "come from the profile alone"))
    prefix_tokens: int = Field(4, ge=1, description="soft prefix tokens (causal_lm variant)")
    include_reasoning: bool = Field(False, description=(
        "score the reasoning sections with the answer; PRMU training refuses it, since its pairs are gold "
        "answers with no reasoning (a checkpoint records the value it was built with, and the scorer uses that)"))
    negatives_per_question: int = Field(3, ge=1)
    train_users: int = Field(0, ge=0, description="train on the first N users of each task's train split (0: all); "
                                                  "the PRMU needs fewer users than SFT, and embeds every pair's texts")
    checkpoint: str | None = None
    epochs: int = Field(30, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(1, ge=1, le=64, description="Ray Train workers")
    embedding_cache: int = Field(50000, ge=0, description="texts whose embeddings are kept in memory")
    seed: int = 0


class LoraConfig(Section):
    enabled: bool = False
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class TrainStrategyConfig(Section):
    """How Ray Train workers share the model: DDP, or DeepSpeed ZeRO-2/3 (gloo on CPUs, NCCL on GPUs)."""

    strategy: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: Literal[2, 3] = 2
    precision: Literal["fp32", "bf16", "auto"] = Field("fp32", description=(
        "bf16: bf16 matmuls on fp32 weights; auto: bf16 where the device computes it natively (a GPU with bf16, a "
        "CPU with AVX512-BF16 or AMX), else fp32: emulated bf16 on a CPU is many times slower than fp32"))
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm (0: no clipping)")
    num_workers: int = Field(1, ge=1, le=64, description="Ray Train workers")
    resources: dict[str, float] = Field(default_factory=dict, description=(
        "Ray resources each worker requests besides its device, e.g. {learner: 1} for cluster.yaml's learner "
        "node, or {GPU: 0.5} to share one GPU with a rollout engine"))


class SFTConfig(TrainStrategyConfig):
    epochs: int = Field(6, ge=1)
    lr: float = Field(2e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field("cosine", description="after warmup: constant, or cosine to 0")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(1024, ge=16)
    packing: bool = Field(False, description=(
        "lay each batch's examples out in rows of up to max_length tokens, position ids restarting per "
        "example so none attends to another: the same examples and loss with fewer pad tokens (the model's "
        "attention must build its mask from position ids, as transformers' Qwen2/Llama/Qwen3 do). Rows are no "
        "wider than the batch's longest example; the block mask is slower than plain causal attention, so it "
        "pays where the dense layers dominate (wide models); the demo's tiny policy trains 0.95x as fast "
        "packed (benchmarks/bench_sft.py)"))
    length_grouping: int = Field(0, ge=0, description=(
        "cut each epoch's shuffled order into runs of this many batches and sort each run by length before "
        "batching (transformers' group_by_length, with megabatches): fewer pad tokens, each batch drawing "
        "from fewer tasks, whose prompts differ in length; 0 or 1: batches as shuffled. On the demo, 4 trained "
        "1.12x the tokens/s and scored 0.508 on dev against 0.585 shuffled (README)"))
    shared_prefix: Switch = Field("auto", description=(
        "where several chains answer one question, train them in one batch and run their prompt once, the "
        "chains on its key/value cache (tagpr.rl.forward); auto: when a probe at start shows this model gives "
        "the per-sequence logits that way. Not with packing; chains whose prompts all differ train as before"))
    resume_from: str | None = Field(None, description="an SFT epoch checkpoint folder to continue from")
    dev_loss_examples: int = Field(256, ge=0, description="dev examples (a seeded sample) whose loss is measured "
                                                          "after each epoch (0: all)")
    eval_limit: int = Field(0, ge=0, description="dev questions per task scored before and after training, "
                                                "drawn across users (0: all)")
    lora: LoraConfig = LoraConfig()

    @model_validator(mode="after")
    def _prompts_or_packing(self) -> SFTConfig:
        if self.shared_prefix == "on" and self.packing:
            raise ValueError("shared_prefix on needs packing false: packed rows hold no prompt to share")
        return self


class EngineConfig(Section):
    """How a generation engine is built (rollout workers, the ``vllm`` teacher, evaluation)."""

    kind: EngineKind = Field("vllm", description="vllm, or hf (transformers generate)")
    max_model_len: int = Field(2048, ge=16, description="prompt + completion tokens")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="GPU share for weights and KV cache")
    kv_cache_gib: int = Field(1, ge=1, description="KV cache on a CPU host (VLLM_CPU_KVCACHE_SPACE)")
    enforce_eager: bool | None = Field(None, description="skip CUDA graphs (default: on for CPU, off for GPU)")
    seed: int = 0
    batch_size: int = Field(32, ge=1, description="hf: prompts per generate call")
    enable_lora: bool = Field(False, description="serve PEFT adapters (LoRA training pushes only the adapter)")
    max_lora_rank: int = Field(16, ge=1)


class ChatTeacherConfig(Section):
    """Sampling shared by the chat-model teachers (``openai``, ``vllm``)."""

    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(1024, ge=1)
    label_max_tokens: int = Field(256, ge=1, description="reply budget when the teacher labels steps (llm labeler)")


class OpenAITeacherConfig(ChatTeacherConfig):
    """An OpenAI-compatible chat endpoint (``vllm serve``, a hosted API) used as the teacher."""

    base_url: str = "http://127.0.0.1:8001/v1"
    model: str = "Qwen/Qwen3-8B"
    api_key_env: str = Field("OPENAI_API_KEY", description="env var holding the key (unset: no key sent)")
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(120, gt=0)
    retries: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    rate_limit_rps: float = Field(0, ge=0, description="requests per second at most (0: no limit)")


class VLLMTeacherConfig(ChatTeacherConfig):
    """An in-cluster pool of vLLM engines (one per Ray Data actor) used as the teacher."""

    model: str = Field("artifacts/tiny-policy", description="HF folder of the teacher model")
    num_engines: int = Field(1, ge=1, description="engine actors in the pool")
    num_cpus: float = Field(1, ge=0, description="CPUs per engine actor")
    num_gpus: float = Field(0, ge=0, description="GPUs per engine actor (0 on CPU hosts)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict,
                                                 description="e.g. {enable_thinking: true} for Qwen3")
    engine: EngineConfig = EngineConfig(max_model_len=4096)


class ChainsConfig(Section):
    """Tagged-chain generation (docs/method.md section 5)."""

    teacher: TeacherName = Field("programmatic", description="registered teacher: programmatic, openai, vllm")
    labeler: LabelerName = Field("embedding", description="registered labeler: embedding, llm (asks the teacher)")
    samples_per_question: int = Field(2, ge=1)
    mistake_rate: float = Field(0.15, ge=0, le=1, description="programmatic teacher: wrong answers/steps")
    min_score: dict[str, float] = Field(
        default_factory=lambda: {"classification": 1.0, "rating": 1.0, "generation": 0.95},
        description="task metric a chain's answer must reach, per task type (generation: high enough that an "
                    "answer without the user's style does not pass)")
    out: str = "data/chains"
    batch_size: int = Field(64, ge=1)
    openai: OpenAITeacherConfig = OpenAITeacherConfig()
    vllm: VLLMTeacherConfig = VLLMTeacherConfig()

    @model_validator(mode="after")
    def _types(self) -> "ChainsConfig":
        missing = {"classification", "rating", "generation"} - set(self.min_score)
        if missing:
            raise ValueError(f"min_score needs a threshold for {sorted(missing)}")
        return self


# ---------------------------------------------------------------- the Ray roles


class AutoscaleConfig(Section):
    """The pool's automatic size (``tagpr.rl.autoscale``): grow when the learner waits on the buffer,
    shrink when workers are blocked by back-pressure; within ``min_workers..max_workers``."""

    enabled: bool = False
    grow_above: float = Field(0.3, ge=0, le=1, description="learner's waiting share of the window that adds a worker")
    shrink_above: float = Field(0.5, ge=0, le=1,
                                description="workers' blocked share of the window that removes a worker")
    window_s: float = Field(60, gt=0, description="seconds of measurements behind a decision")
    cooldown_s: float = Field(60, ge=0, description="seconds after a decision before the next")


class RolloutConfig(Section):
    engine: EngineConfig = EngineConfig()
    num_workers: int = Field(1, ge=0)
    num_cpus: float = Field(1, ge=0, description="CPUs each rollout worker reserves")
    num_gpus: float = Field(0, ge=0, description="GPUs each rollout worker reserves (1 for a CUDA vLLM engine)")
    cpu_affinity: CpuList | None = Field(None, description=CPU_AFFINITY_HELP)
    resources: dict[str, float] = Field(default_factory=dict, description=(
        "custom Ray resources each worker requests, e.g. {rollout_worker: 1} to land on (and make the autoscaler "
        "start) the rollout node type of cluster.yaml"))
    min_workers: int = Field(0, ge=0)
    max_workers: int = Field(4, ge=1)
    autoscale: AutoscaleConfig = AutoscaleConfig()
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    stop: list[str] = Field(default_factory=lambda: ["</answer>"])
    prompts_per_request: int = Field(4, ge=1, description="prompts a worker takes from the buffer at once")
    reward_via: Literal["local", "http", "handle", "none"] = Field(
        "local", description="local: in the worker; http: the reward service at reward_url; handle: Serve handle; "
                             "none: rewards off (0)")
    reward_url: str | None = Field(None, description="default: http://<service.host>:<service.port>")
    reward_failure_policy: Literal["raise", "default"] = Field(
        "raise", description="a reward call that fails after its retries: raise (the worker is replaced, its prompts "
                             "re-queued) or default (the group is not trained on, its prompts re-queued)")
    reward_timeout_s: float = Field(30, gt=0, description="http: seconds per reward call attempt")
    reward_retries: int = Field(3, ge=0, description="http: retries of a failed or timed-out reward call")
    weight_transport: TransportName = Field("object_store", description=(
        "how the learner publishes weights: object_store, shm; collective and cuda_ipc on GPUs"))
    sync_timeout_s: float = Field(120, gt=0, description="a weight load slower than this marks the worker unhealthy")
    capacity: int = Field(64, ge=1, description="groups buffered plus in flight (back-pressure on producers)")
    max_replacements: int = Field(10, ge=0, description="dead workers replaced before the pool gives up")

    @model_validator(mode="after")
    def _bounds(self) -> RolloutConfig:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers must not exceed max_workers")
        if not self.min_workers <= self.num_workers <= self.max_workers:
            raise ValueError("num_workers must lie within [min_workers, max_workers]")
        return self


class LearnerConfig(TrainStrategyConfig):
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step, per worker")
    max_tokens_per_micro_batch: int = Field(0, ge=0, description=(
        "split each optimizer step into as many micro-batches as keep each within this many padded "
        "positions (prompts and responses), so memory is bounded whatever the prompt lengths; 0: split "
        "into grad_accum micro-batches"))
    weight_decay: float = Field(0.0, ge=0)
    sync_every: int = Field(1, ge=1, description="publish weights every k optimizer steps")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0: at each stage's end only)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept in <run dir>/checkpoints")
    max_failures: int = Field(2, ge=-1, description="learner worker crashes Ray Train retries from the last "
                                                    "checkpoint (-1: unlimited)")
    take_timeout_s: float = Field(600, gt=0, description="fail when no step's groups arrive for this long")
    fault_crash_at_step: int = Field(0, ge=0, description="fault injection for tests and drills: rank 0 kills "
                                                          "itself (SIGKILL) at this step, once per run directory "
                                                          "(0: off)")
    fault_crash_point: Literal["after_take", "checkpoint_write"] = Field(
        "after_take", description="where in that step: right after taking its groups, or halfway through writing "
                                  "its checkpoint (model and optimizer written, not yet published)")
    cpu_affinity: CpuList | None = Field(None, description=CPU_AFFINITY_HELP)
    shared_prefix: Switch = Field("auto", description=(
        "run each distinct prompt of a micro-batch once and its responses on its key/value cache "
        "(tagpr.rl.forward); auto: when a probe at start shows this model gives the per-sequence logits that way"))
    lora: LoraConfig = LoraConfig()

    @model_validator(mode="after")
    def _one_split(self) -> LearnerConfig:
        if self.grad_accum > 1 and self.max_tokens_per_micro_batch:
            raise ValueError("set grad_accum or max_tokens_per_micro_batch, not both")
        return self


class ServiceLimits(Section):
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_batch_items: int = Field(256, ge=1)
    max_text_chars: int = Field(16384, ge=1)
    max_profile_items: int = Field(512, ge=1)


class ServiceConfig(Section):
    host: str = Field("127.0.0.1", description="bind address; loopback unless told otherwise")
    port: int = Field(8000, ge=1, le=65535)
    token_env: str = Field("TAGPR_REWARD_TOKEN", description="env var holding the bearer token")
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(32, gt=0)
    max_queued_requests: int = Field(256, ge=1, description=(
        "requests waiting for a busy replica; beyond it the service sheds load with 503 and Retry-After "
        "instead of letting requests time out"))
    retry_after_s: float = Field(1.0, ge=0, description="the Retry-After a shed request gets")
    strip_tokens: list[str] | None = Field(None, description=(
        "special-token strings cut from OpenRLHF queries before the tags are parsed (the EOS would be text "
        "outside every section); unset: model.policy's tokenizer's special tokens when it can be read, else "
        "common chat models' EOS, padding and turn markers"))
    limits: ServiceLimits = ServiceLimits()


class PolicyServiceConfig(Section):
    """``tagpr serve policy``: the trained policy answering users over an OpenAI-compatible API. It
    shares the cluster's Serve proxy with the reward service (the first one started binds
    host:port), so the two need different route prefixes when both run."""

    host: str = Field("127.0.0.1", description="bind address; loopback unless told otherwise")
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = Field("/", pattern=r"^/", description="where the app's routes start on the Serve proxy")
    token_env: str = Field("TAGPR_POLICY_TOKEN", description="env var holding the bearer token")
    model_name: str = Field("tagpr-policy", min_length=1, description="the model id of /v1/models and requests")
    backend: Literal["serve_llm", "adapter"] = Field("serve_llm", description=(
        "serve_llm: Ray Serve's LLM serving (vLLM's async engine, continuous batching, tokens streamed as "
        "generated); adapter: a Serve deployment over the project's engine adapter (whole responses; the one "
        "that runs rollout.engine.kind hf)"))
    max_batch_size: int = Field(16, ge=1, description="adapter: requests merged into one generate call")
    batch_wait_timeout_s: float = Field(0.02, ge=0, description="adapter: how long a batch waits to fill")
    min_replicas: int = Field(1, ge=1, description="engine replicas (each holds the policy)")
    max_replicas: int = Field(1, ge=1, description="above min_replicas: Serve autoscales between the two")
    target_ongoing_requests: float = Field(16, gt=0, description="autoscaling: requests in flight per replica")
    max_tokens: int | None = Field(None, ge=1, description="default completion budget (unset: rollout.max_tokens)")
    limits: ServiceLimits = ServiceLimits()

    @model_validator(mode="after")
    def _replica_range(self) -> "PolicyServiceConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self

    def replicas(self) -> dict[str, Any]:
        """Serve's deployment options for the engine replicas: a fixed count, or autoscaling."""
        if self.max_replicas == self.min_replicas:
            return {"num_replicas": self.min_replicas}
        return {"autoscaling_config": {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                       "target_ongoing_requests": self.target_ongoing_requests}}


class ClusterConfig(Section):
    address: str = Field("local", description="'local' starts Ray here; 'auto' or ray://host:port joins")
    namespace: str = "tagpr"
    num_cpus: int | None = Field(None, ge=1)
    cpu_layout: AutoOff = Field("auto", description=(
        "RL on one node: auto pins the rollout workers and the learner to separate cores (rollout.num_cpus "
        "each for the workers, the rest for the learner) where the node has a core for every logical CPU "
        "Ray declares and neither role sets cpu_affinity; off: the OS places them"))


class RunConfig(Section):
    name: str = Field("tagpr", pattern=r"^[A-Za-z0-9_.-]+$")
    root: str = "runs"
    seed: int = 0
    steps: list[str] = Field(default_factory=lambda: ["data", "model"], min_length=1,
                             description="pipeline steps of `tagpr run`, in order")
    report_eval_limit: int = Field(0, ge=0, description="dev questions per task the report scores, drawn across "
                                                       "users (0: all)")


# ---------------------------------------------------------------- root


class TagPRConfig(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    tags: TagsConfig
    reward: RewardConfig = RewardConfig()
    prmu: PRMUConfig = PRMUConfig()
    chains: ChainsConfig = ChainsConfig()
    sft: SFTConfig = SFTConfig()
    rl: RLConfig = RLConfig()
    rollout: RolloutConfig = RolloutConfig()
    learner: LearnerConfig = LearnerConfig()
    service: ServiceConfig = ServiceConfig()
    policy_service: PolicyServiceConfig = PolicyServiceConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _rl_roles(self) -> TagPRConfig:
        if self.learner.sync_every - 1 > self.rl.max_staleness:
            raise ValueError(f"learner.sync_every ({self.learner.sync_every}) may exceed rl.max_staleness "
                             f"({self.rl.max_staleness}) by at most 1: rollout waits for weights within the bound")
        if self.learner.lora.enabled and not self.rollout.engine.enable_lora:
            raise ValueError("learner.lora.enabled needs rollout.engine.enable_lora (workers load the adapter)")
        if self.rl.prompts_per_step > self.rollout.capacity:
            raise ValueError(f"rollout.capacity ({self.rollout.capacity}) must hold one step "
                             f"(rl.prompts_per_step = {self.rl.prompts_per_step} groups)")
        return self


# ---------------------------------------------------------------- loading


def _read_yaml(path: Path, source: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "", f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot read {path}: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, "", f"invalid YAML{where}: {problem}") from None


def _expand_includes(raw: dict[str, Any], base: Path, source: str) -> dict[str, Any]:
    """Replace a top-level section given as a string with the YAML file it names."""
    out = dict(raw)
    for key, value in raw.items():
        if isinstance(value, str) and key in TagPRConfig.model_fields:
            path = (base / value).resolve()
            loaded = _read_yaml(path, f"{source} -> {value}")
            if not isinstance(loaded, dict):
                raise ConfigError(str(path), key, "an included section must be a YAML mapping")
            out[key] = loaded
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` -> (["a", "b", "0", "c"], parsed YAML value)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", text, "expected KEY.PATH=VALUE")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def _apply_override(data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError("--set", ".".join(path[: i + 1]), f"no list item {part!r}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                nxt = node.get(part)
                if not isinstance(nxt, (dict, list)):
                    nxt = node[part] = {}
                node = nxt
        else:
            raise ConfigError("--set", ".".join(path[:i]), f"is a value, cannot set {text!r} inside it")


def _describe(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = err.get("msg", "invalid value")
    if kind.startswith("value_error"):
        msg = msg.removeprefix("Value error, ")
    if "input" in err and kind not in ("model_type",) and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return msg


def validate_config(data: dict[str, Any], source: str) -> TagPRConfig:
    try:
        return TagPRConfig.model_validate(data)
    except ValidationError as exc:
        issues = [(source, ".".join(str(p) for p in e["loc"] if p != "[key]") or "(root)", _describe(e))
                  for e in exc.errors()]  # "[key]": pydantic's mark of a bad mapping key, named by the path
        raise ConfigError(*issues[0], more=issues[1:]) from None


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> TagPRConfig:
    """Load a YAML config (default: ``configs/default.yaml``), apply overrides, validate.

    The file is validated first, so its errors name the file; overrides then apply to the
    resolved values (defaults included, so ``--set rl.stages.0.steps=5`` works without the file
    spelling out the stages) and their errors name ``--set``.
    """
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG
    source = str(cfg_path)
    raw = _read_yaml(cfg_path, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, "", "the top level must be a YAML mapping of sections")
    cfg = validate_config(_expand_includes(raw, cfg_path.resolve().parent, source), source)
    if not overrides:
        return cfg
    data = cfg.model_dump(mode="json")
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(data, keys, value, text)
    return validate_config(data, "--set")


def dump_config(cfg: TagPRConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


RESOLVED_NAME = "tagpr_config.yaml"


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")


def write_resolved(cfg: TagPRConfig, run_dir: str | os.PathLike[str], resumed: bool = False) -> Path:
    """Write the fully resolved config into ``run_dir/tagpr_config.yaml``; a resumed run keeps the
    one it started with and writes its own beside it as ``tagpr_config.resume-<UTC time>.yaml``."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / (RESOLVED_NAME.replace(".yaml", f".resume-{_stamp()}.yaml") if resumed else RESOLVED_NAME)
    target.write_text(dump_config(cfg), encoding="utf-8")
    return target


def new_run_dir(cfg: TagPRConfig, kind: str) -> Path:
    """A fresh ``runs/<name>-<kind>-<UTC time>`` folder holding the resolved config."""
    run_dir = Path(cfg.run.root) / f"{cfg.run.name}-{kind}-{_stamp()}"
    write_resolved(cfg, run_dir)
    return run_dir
