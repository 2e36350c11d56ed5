"""Generation engines behind one interface: vLLM (``vllm_engine``, the only module that imports vLLM)
and HF transformers (``hf_engine``, for machines without vLLM and as the logprob reference).

Rollout workers, the ``vllm`` teacher and evaluation all build engines through :func:`make_engine`.
"""

from tagpr.engines.base import ENGINES, Completion, Engine, Generation, Sampling, make_engine

__all__ = ["ENGINES", "Completion", "Engine", "Generation", "Sampling", "make_engine"]
