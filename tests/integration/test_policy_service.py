"""The policy service on real Ray Serve, asked with the official ``openai`` client and httpx."""

from __future__ import annotations

import json
import os

import httpx
import openai
import pytest

from tagpr.evaluation import predict
from tagpr.lamp.io import load_split

from .conftest import serve_replicas, wait_for

pytestmark = pytest.mark.integration

TOKEN_ENV = "TAGPR_TEST_POLICY_TOKEN"
TOKEN = "policy-test-token"


@pytest.fixture(scope="module")
def policy_service(prmu_job, answering_policy, serve_port):
    """The answering policy served by the ``adapter`` backend with the PRMU job's LaMP files as
    profiles, behind a token, on the transformers engine (the same engine and greedy decoding as
    evaluation below)."""
    from ray import serve

    from services.policy.deploy import deploy

    base, _ = prmu_job
    cfg = base.model_copy(update={
        "data": base.data.model_copy(update={"prompt_profile_items": 4}),
        "rollout": base.rollout.model_copy(update={
            "num_cpus": 0.5, "max_tokens": 48,
            "engine": base.rollout.engine.model_copy(update={"kind": "hf", "max_model_len": 1024})}),
        "policy_service": base.policy_service.model_copy(update={
            "backend": "adapter", "limits": base.policy_service.limits.model_copy(update={"max_text_chars": 2000})}),
    })
    os.environ[TOKEN_ENV] = TOKEN
    deploy(cfg, str(answering_policy), profiles=cfg.data.root, token_env=TOKEN_ENV, name="policy",
           route_prefix="/policy")
    url = f"http://127.0.0.1:{serve_port}/policy"
    assert wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 120)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
    yield cfg, url, client
    serve.delete("policy")


def dev_question(cfg, task="LaMP_2", i=0):
    return load_split(cfg.data.root, task, cfg.data.dev_split).questions[i]


def test_chat_for_a_known_user_answers_as_evaluation_does(policy_service, answering_policy):
    cfg, _, client = policy_service
    q = dev_question(cfg)
    user = q.user_id or q.id
    out = client.chat.completions.create(model="tagpr-policy", user=user,
                                         messages=[{"role": "user", "content": q.input}])
    message = out.choices[0].message
    expected, _ = predict(str(answering_policy), cfg, q.task, [q])  # greedy, the prompt evaluation builds
    assert message.content == expected[q.id] and message.content  # the answering policy answers
    assert message.model_extra["reasoning_content"] is not None and out.usage.completion_tokens > 0
    assert [m.id for m in client.models.list().data] == ["tagpr-policy"]


def test_a_stream_carries_the_same_answer(policy_service):
    cfg, _, client = policy_service
    q = dev_question(cfg, i=1)
    ask = {"model": "tagpr-policy", "user": q.user_id or q.id, "messages": [{"role": "user", "content": q.input}]}
    whole = client.chat.completions.create(**ask).choices[0].message
    chunks = list(client.chat.completions.create(**ask, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks)
    assert content == whole.content and reasoning == whole.model_extra["reasoning_content"]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_an_inline_profile_is_remembered_for_the_user(policy_service):
    cfg, url, client = policy_service
    q = dev_question(cfg, i=2)
    profile = [dict(p) for p in q.profile]
    first = client.chat.completions.create(model="tagpr-policy", user="new-user",
                                           messages=[{"role": "user", "content": q.input}],
                                           extra_body={"tagpr": {"task": q.task, "profile": profile}})
    again = client.chat.completions.create(model="tagpr-policy", user="new-user",
                                           messages=[{"role": "user", "content": q.input}])
    assert first.choices[0].message.content == again.choices[0].message.content
    typed = httpx.post(f"{url}/v1/answer", json={"input": q.input, "user_id": "new-user"},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert typed.status_code == 200, typed.text
    body = typed.json()
    assert body["answer"] == first.choices[0].message.content and body["task"] == q.task
    assert isinstance(body["format_valid"], bool) and body["model"] == "tagpr-policy"


def test_a_sent_profile_outlives_the_ingress_replica(policy_service):
    """The ingress replica holding a sent profile is killed; the one Serve starts in its place
    answers the user from the application's sent profiles, as it did before."""
    import ray

    cfg, url, _ = policy_service
    q = dev_question(cfg, i=3)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    sent = httpx.post(f"{url}/v1/answer", json={"input": q.input, "user_id": "kept-user", "task": q.task,
                                                "profile": [dict(p) for p in q.profile]}, headers=headers, timeout=60)
    assert sent.status_code == 200, sent.text
    [old] = serve_replicas("policy", "PolicyIngress")
    ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)
    assert wait_for(lambda: serve_replicas("policy", "PolicyIngress") not in ([], [old]), 60)
    assert wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, 60)
    again = httpx.post(f"{url}/v1/answer", json={"input": q.input, "user_id": "kept-user"}, headers=headers,
                       timeout=60)
    assert again.status_code == 200, again.text
    assert again.json()["answer"] == sent.json()["answer"] and again.json()["task"] == q.task


@pytest.mark.parametrize("path, payload, status, field", [
    ("/v1/chat/completions", {"model": "tagpr-policy", "user": "ghost", "messages": [{"role": "user", "content": "x"}]},
     422, "user"),
    ("/v1/chat/completions", {"model": "tagpr-policy", "messages": [{"role": "user", "content": "x"}]}, 422, "user"),
    ("/v1/chat/completions", {"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ("/v1/chat/completions", {"model": "tagpr-policy", "messages": []}, 422, "messages"),
    ("/v1/chat/completions", {"model": "tagpr-policy", "messages": [{"role": "user", "content": "x"}],
                              "tagpr": {"task": "LaMP_9"}}, 422, "tagpr.task"),
    ("/v1/chat/completions", {"model": "tagpr-policy", "messages": [{"role": "user", "content": "x" * 2001}],
                              "tagpr": {"task": "LaMP_2", "profile": []}}, 413, "messages"),
    ("/v1/chat/completions", {"model": "tagpr-policy", "messages": [{"role": "user", "content": "a\ud800"}]}, 422,
     "messages[0].content"),
    ("/v1/answer", {"input": "x", "profile": [{"tag": "sci-fi"}], "task": "LaMP_2"}, 422, "profile[0].description"),
    ("/v1/answer", {"input": "x", "user_id": "ghost"}, 422, "user_id"),
])
def test_bad_requests_are_client_errors_and_the_service_keeps_serving(policy_service, path, payload, status, field):
    cfg, url, _ = policy_service
    headers = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    r = httpx.post(url + path, content=json.dumps(payload), headers=headers, timeout=60)
    assert r.status_code == status, r.text
    assert any(i["field"].startswith(field) for i in r.json()["issues"]), r.json()
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_a_prompt_over_the_context_fails_alone_in_its_batch(policy_service):
    """Sent together, so the server batches them: the one prompt the engine cannot take is a 400
    naming the input; the others are answered."""
    import concurrent.futures

    cfg, url, _ = policy_service
    q = dev_question(cfg)
    bodies = [{"input": q.input, "user_id": q.user_id or q.id} for _ in range(5)]
    bodies[2] = {**bodies[2], "input": "x " * 1000}  # within the 2,000-character limit, over 1,024 tokens
    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            replies = list(pool.map(lambda b: c.post("/v1/answer", json=b), bodies))
    assert [r.status_code for r in replies] == [200, 200, 400, 200, 200], [r.text for r in replies]
    assert replies[2].json()["issues"][0]["field"] == "input" and "max_model_len" in replies[2].text


def test_a_wrong_token_is_refused(policy_service):
    _, url, _ = policy_service
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_a_new_policy_is_swapped_in_under_traffic_without_a_failed_request(policy_service, answering_policy,
                                                                          tiny_policy):
    import threading

    from services.policy.deploy import swap_policy

    cfg, url, _ = policy_service
    q = dev_question(cfg)
    body = {"input": q.input, "user_id": q.user_id or q.id}
    statuses, policies, stop = [], [], threading.Event()

    def traffic():
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            while not stop.is_set():
                statuses.append(c.post("/v1/answer", json=body).status_code)
                policies.append(c.get("/readyz").json().get("policy"))

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(statuses) >= 3, 60)
    seconds = swap_policy(cfg, str(tiny_policy), name="policy")
    assert wait_for(lambda: policies and policies[-1] == str(tiny_policy), 30)
    stop.set()
    for t in threads:
        t.join()
    assert seconds < 120 and set(statuses) == {200}, sorted(set(statuses))
    assert policies[0] == str(answering_policy) and str(tiny_policy) in policies
    swap_policy(cfg, str(answering_policy), name="policy")
