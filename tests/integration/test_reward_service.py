"""The reward service on real Ray Serve over HTTP, inside the session's Ray cluster."""

from __future__ import annotations

import asyncio
import json
import math
import os
import threading
import time

import aiohttp
import httpx
import pytest
import requests
import torch

from actors.cluster import free_port
from services.reward.client import HandleRewardClient, RewardClient, RewardServiceError
from services.reward.deploy import deploy, swap_checkpoint
from tagpr.config import load_config
from tagpr.lamp.io import Prompt
from tagpr.prmu import checkpoint
from tagpr.prmu.scorer import PRMUScorer
from tagpr.rewards import CompositeReward, RewardInput

from .conftest import wait_for

pytestmark = pytest.mark.integration

TOKEN_ENV = "TAGPR_TEST_REWARD_TOKEN"
PROFILE = [{"id": "p1", "description": "A film about a starship crew, with two lovers.", "tag": "sci-fi"},
           {"id": "p2", "description": "A film about alien contact, with grim jokes.", "tag": "sci-fi"}]
LAMP2_INPUT = "Which tag does this movie relate to? description: A film about a distant galaxy, with a wedding plan."
TAGGED = ("<examine_examples>Both past films are sci-fi.</examine_examples><identify_patterns>sci-fi recurs"
          "</identify_patterns><infer_preference>Likes sci-fi.</infer_preference><compare_options>sci-fi over "
          "romance</compare_options><answer>{}</answer>")


def service_cfg(base):
    return base.model_copy(update={"service": base.service.model_copy(update={
        "max_batch_size": 16, "batch_wait_timeout_s": 0.005,
        "limits": base.service.limits.model_copy(update={
            "max_body_bytes": 65536, "max_batch_items": 8, "max_text_chars": 2000, "max_profile_items": 20}),
    })})


@pytest.fixture(scope="module")
def service(prmu_job, serve_port, tmp_path_factory):
    cfg, result = prmu_job
    cfg = service_cfg(cfg)
    # no policy tokenizer, wherever the tests run (a checkout that ran the demo has one at the default
    # model.policy): OpenRLHF queries lose the common chat models' special tokens
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={
        "policy": str(tmp_path_factory.mktemp("no-policy-tokenizer"))})})
    secret = tmp_path_factory.mktemp("secret") / "token"  # as a mounted secret: $<token_env>_FILE
    secret.write_text("s3cret-test-token\n")
    os.environ[f"{TOKEN_ENV}_FILE"] = str(secret)
    deploy(cfg, result.checkpoint, token_env="TAGPR_NO_SUCH_ENV", name="reward-open", route_prefix="/")
    deploy(cfg, result.checkpoint, token_env=TOKEN_ENV, name="reward-secure", route_prefix="/secure")
    client = httpx.Client(base_url=f"http://127.0.0.1:{serve_port}", timeout=60)
    assert wait_for(lambda: client.get("/readyz").status_code == 200, 60)
    yield cfg, result, client
    client.close()
    from ray import serve

    for app in ("reward-open", "reward-secure"):  # free the session cluster's CPUs for later modules
        serve.delete(app)


def score_item(response, **kw):
    return {"task": "LaMP_2", "input": LAMP2_INPUT, "response": response, "profile": PROFILE, **kw}


def reward_input(item, i=0):
    """A JSON item of the service as the reward and its clients take it."""
    prompt = Prompt(str(i), item["task"], item["input"], tuple(item["profile"]), item.get("gold"), item.get("user_id"))
    return RewardInput(prompt, item["response"])


def reward_items():
    return [
        {**score_item(TAGGED.format("sci-fi")), "gold": "sci-fi"},
        {**score_item(TAGGED.format("romance")), "gold": "sci-fi"},
        {**score_item("<answer>sci-fi</answer>"), "gold": "sci-fi"},
        {"task": "LaMP_3", "input": "review: Works well, solid build.", "response": "<answer>4</answer>",
         "gold": "5", "profile": [{"id": "r", "text": "Good value.", "score": "5"}]},
    ]


def test_health_model_and_scores_match_in_process(service):
    cfg, result, client = service
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["model_version"] == result.version
    info = client.get("/v1/model").json()
    assert info["version"] == result.version and info["encoder"] == "minilm" and info["variant"] == "encoder"
    items = [score_item(TAGGED.format("sci-fi")), score_item("romance")]
    r = client.post("/v1/score", json={"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    local = PRMUScorer.load(result.checkpoint)
    tags = CompositeReward.for_stage(cfg, "exploratory")
    expected = local.score([tags.judge(reward_input(x, i)) for i, x in enumerate(items)])
    assert body["scores"] == pytest.approx(expected, abs=1e-4) and body["model_version"] == result.version


@pytest.mark.parametrize("stage", ["guided", "exploratory"])
def test_reward_matches_tagpr_rewards(service, stage):
    cfg, result, client = service
    items = reward_items()
    r = client.post("/v1/reward", json={"stage": stage, "items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    prmu = PRMUScorer.load(result.checkpoint) if stage == "guided" else None
    expected = CompositeReward.for_stage(cfg, stage, prmu).score([reward_input(x, i) for i, x in enumerate(items)])
    assert body["stage"] == stage and len(body["results"]) == len(items)
    for got, want in zip(body["results"], expected):
        assert got["reward"] == pytest.approx(want.reward, abs=1e-4)
        assert set(got["components"]) == set(want.components)
    assert body["results"][0]["reward"] > body["results"][1]["reward"]  # right label beats wrong one
    assert (body["model_version"] == result.version) == (stage == "guided")


def test_cached_user_id(service):
    _, _, client = service
    first = client.post("/v1/score", json={"items": [score_item("sci-fi", user_id="cached-user")]}).json()
    again = client.post("/v1/score", json={"items": [{"task": "LaMP_2", "input": LAMP2_INPUT, "response": "sci-fi",
                                                      "user_id": "cached-user"}]})
    assert again.status_code == 200 and again.json()["scores"] == pytest.approx(first["scores"], abs=1e-5)


# ---------------------------------------------------------------- OpenRLHF conformance
# Written from the protocol its client speaks (docs/reward-service.md, "OpenRLHF"): one item per
# request and many at once (aiohttp), queries decoded with the special tokens kept, labels as the
# dataset stores them, empty lists for the second of several URLs, the token in the URL (Basic).

CHATML = "<|im_start|>user\nWhich tag does this movie relate to?<|im_end|>\n<|im_start|>assistant\n"
LABEL = {"task": "LaMP_2", "gold": "sci-fi", "input": LAMP2_INPUT, "profile": PROFILE}
WRONG = ("romance", "comedy", "action")


def openrlhf_body(answers, label=LABEL, prompt=CHATML, eos="<|im_end|>"):
    return {"query": [prompt + TAGGED.format(a) + eos for a in answers], "prompts": [prompt] * len(answers),
            "labels": [label] * len(answers)}


def openrlhf_answer(body, n):
    """The answer OpenRLHF reads: rewards, scores and extra_logs, one finite number per query."""
    assert set(body) == {"rewards", "scores", "extra_logs"}, body
    assert len(body["rewards"]) == len(body["scores"]) == n
    assert all(isinstance(x, float) and math.isfinite(x) for x in body["rewards"] + body["scores"])
    assert all(len(v) == n for v in body["extra_logs"].values())
    return body


async def post_all(url, bodies):
    async with aiohttp.ClientSession() as session:
        async def one(body):
            async with session.post(url, json=body) as r:
                return r.status, await r.json()

        return await asyncio.gather(*(one(b) for b in bodies))


def test_openrlhf_one_item_per_request_at_concurrency_is_graded(service, serve_port):
    _, _, client = service
    answers = ["sci-fi", *WRONG] * 4
    results = asyncio.run(post_all(f"http://127.0.0.1:{serve_port}/get_reward", [openrlhf_body([a]) for a in answers]))
    assert [status for status, _ in results] == [200] * len(answers)
    got: dict[str, set] = {}
    for a, (_, body) in zip(answers, results):
        openrlhf_answer(body, 1)
        assert body["extra_logs"]["format"] == [1.0]  # the EOS at the end of the query is not text outside tags
        got.setdefault(a, set()).add((round(body["rewards"][0], 5), round(body["extra_logs"]["prmu"][0], 5)))
    assert all(len(v) == 1 for v in got.values()), got  # one answer, one reward, however the requests batched
    reward = {a: next(iter(v))[0] for a, v in got.items()}
    prmu = {a: next(iter(v))[1] for a, v in got.items()}
    assert all(reward["sci-fi"] > reward[a] for a in WRONG), reward
    # R_PRMU of one item alone is graded by the PRMU's calibration, and the same as in a batch
    assert len(set(prmu.values())) > 1 and all(0.0 < v < 1.0 for v in prmu.values()), prmu
    together = openrlhf_answer(client.post("/get_reward", json=openrlhf_body(list(got))).json(), len(got))
    assert together["extra_logs"]["prmu"] == pytest.approx([prmu[a] for a in got], abs=1e-4)


@pytest.mark.parametrize("chat", ["chatml", "llama3", "mistral", "gemma"])
def test_openrlhf_queries_ending_in_the_eos_score_as_the_bare_response(service, chat):
    _, _, client = service
    prompt, eos = {
        "chatml": (CHATML, "<|im_end|>"),
        "llama3": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhich tag?<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"),
        "mistral": ("<s>[INST] Which tag? [/INST]", "</s>"),
        "gemma": ("<bos><start_of_turn>user\nWhich tag?<end_of_turn>\n<start_of_turn>model\n", "<eos>"),
    }[chat]
    with_eos = client.post("/get_reward", json=openrlhf_body(["sci-fi", "romance"], prompt=prompt, eos=eos))
    bare = client.post("/get_reward", json=openrlhf_body(["sci-fi", "romance"], prompt="", eos=""))
    assert with_eos.status_code == bare.status_code == 200, with_eos.text
    assert openrlhf_answer(with_eos.json(), 2)["extra_logs"]["format"] == [1.0, 1.0]
    assert with_eos.json()["rewards"] == pytest.approx(bare.json()["rewards"], abs=1e-5)
    truncated = {**openrlhf_body(["sci-fi"], prompt=prompt, eos=eos), "prompts": [prompt + "a longer original"]}
    assert client.post("/get_reward", json=truncated).json()["rewards"] == pytest.approx(bare.json()["rewards"][:1],
                                                                                          abs=1e-5)


def test_openrlhf_labels_as_objects_encoded_strings_or_plain_golds(service):
    _, _, client = service
    as_object = client.post("/get_reward", json=openrlhf_body(["sci-fi", "romance"]))
    as_string = client.post("/get_reward", json=openrlhf_body(["sci-fi", "romance"], label=json.dumps(LABEL)))
    assert as_object.status_code == as_string.status_code == 200
    assert as_object.json() == as_string.json()
    plain = client.post("/get_reward?task=LaMP_2&stage=exploratory", json=openrlhf_body(["sci-fi", "romance"],
                                                                                          label="sci-fi"))
    assert plain.status_code == 200 and openrlhf_answer(plain.json(), 2)["rewards"][0] > plain.json()["rewards"][1]


def test_openrlhf_several_urls_with_the_token_in_the_url(service, serve_port):
    """Two URLs, the second holding the token as OpenRLHF users write it (``user:token@``): the client
    splits a batch over them, some shards empty; aiohttp (current client) and requests (legacy)
    both turn the URL's userinfo into HTTP Basic."""
    secure = f"http://tagpr:s3cret-test-token@127.0.0.1:{serve_port}/secure/get_reward"
    first = requests.post(f"http://127.0.0.1:{serve_port}/get_reward", json=openrlhf_body(["sci-fi", "romance"]))
    empty = requests.post(secure, json={"query": [], "prompts": [], "labels": []})
    assert first.status_code == 200 and openrlhf_answer(first.json(), 2)
    assert empty.status_code == 200 and empty.json() == {"rewards": [], "scores": [], "extra_logs": {}}
    [(status, body)] = asyncio.run(post_all(secure, [openrlhf_body(["sci-fi", "romance"])]))
    assert status == 200 and body == first.json()
    assert requests.post(secure.replace("s3cret", "wrong"), json=openrlhf_body(["sci-fi"])).status_code == 401
    assert requests.post(secure.replace("tagpr:s3cret-test-token@", ""), json=openrlhf_body(["x"])).status_code == 401


def test_a_bad_request_never_fails_the_requests_batched_with_it(service):
    cfg, _, client = service
    good = {"items": [score_item(TAGGED.format("sci-fi"))]}
    bad = {"items": [score_item(TAGGED.format("sci-fi\ud800"))]}

    async def burst():
        async with httpx.AsyncClient(base_url=client.base_url, timeout=60) as c:
            bodies = [good] * 6 + [bad] + [good] * 6
            return await asyncio.gather(*(c.post("/v1/score", content=json.dumps(b),
                                                 headers={"content-type": "application/json"}) for b in bodies))

    statuses = [r.status_code for r in asyncio.run(burst())]
    assert statuses == [200] * 6 + [422] + [200] * 6, statuses
    # behind the edge, the scorer isolates a request its encoder cannot take from the rest of its batch
    from ray import serve

    scorer = serve.get_deployment_handle("PRMUScorer", app_name="reward-open")
    reward = CompositeReward.for_stage(cfg, "exploratory")
    ok = reward.judge(reward_input(score_item(TAGGED.format("sci-fi"))))
    poison = reward.judge(reward_input(score_item(TAGGED.format("sci-fi\ud800"))))
    calls = [scorer.score.remote([j]) for j in (ok, ok, poison, ok, ok)]
    outcomes = []
    for call in calls:
        try:
            outcomes.append(len(call.result(timeout_s=60).scores))
        except Exception:
            outcomes.append("failed")
    assert outcomes == [1, 1, "failed", 1, 1], outcomes


BIG = "word " * 500


@pytest.mark.parametrize(
    "path, payload, status, field",
    [
        ("/v1/score", {"items": []}, 422, "items"),
        ("/v1/score", {"items": [score_item("x", task="LaMP_9")]}, 422, "items[0].task"),
        ("/v1/score", {"items": [{"task": "LaMP_2", "input": "x", "response": "y"}]}, 422, "items[0]"),
        ("/v1/score", {"items": [{"task": "LaMP_2", "input": "x", "response": "y", "user_id": "ghost"}]}, 422,
         "items[0].user_id"),
        ("/v1/score", {"items": [score_item("x", profile=[{"tag": "sci-fi"}])]}, 422,
         "items[0].profile[0].description"),
        ("/v1/score", {"items": [score_item("x", extra=1)]}, 422, "items[0].extra"),
        ("/v1/score", {"items": [score_item("x")], "checkpoint": "/etc/passwd"}, 422, "checkpoint"),  # no paths
        ("/v1/score", {"items": [score_item(1.5)]}, 422, "items[0].response"),
        ("/v1/reward", {"stage": "warmup", "items": [{**score_item("x"), "gold": "y"}]}, 422, "stage"),
        ("/v1/reward", {"items": [score_item("x")]}, 422, "items[0].gold"),
        ("/v1/reward", {"items": [{**score_item("x", task="LaMP_3", profile=[{"text": "fine", "score": "4"}]),
                                   "gold": "five"}]}, 422, "items[0].gold"),  # a rating gold must be a number
        ("/get_reward", {"query": ["a"], "labels": ['{"task": "LaMP_3", "gold": ""}']}, 422, "labels[0].gold"),
        ("/get_reward", {"query": ["a", "b"], "labels": ["x"]}, 422, "labels"),
        ("/get_reward", {"query": ["a"], "labels": ["plain gold, no task"]}, 422, "labels[0]"),
        ("/get_reward", {"query": ["a"], "labels": ['{"task": "LaMP_2"}']}, 422, "labels[0].gold"),
        ("/get_reward", {"query": ["a"], "labels": [{"task": "LaMP_2", "gold": "x", "response": "y"}]}, 422,
         "labels[0].response"),
        ("/v1/score", {"items": [score_item("x")] * 9}, 413, "items"),
        ("/v1/score", {"items": [score_item("bad \ud800 text")]}, 422, "items[0].response"),  # lone surrogates
        ("/v1/score", {"items": [score_item("x", profile=[{"description": "a\udfff", "tag": "t"}])]}, 422,
         "items[0].profile[0].description"),
        ("/get_reward", {"query": ["<answer>x</answer>\ud83d"], "labels": ["x"]}, 422, "query[0]"),
        ("/get_reward?task=LaMP_3", {"query": ["<answer>4</answer>"], "labels": [""]}, 422, "labels[0].gold"),
        ("/get_reward", {"query": ["<answer>4</answer>"], "labels": [""]}, 422, "labels[0]"),  # no label key
        ("/get_reward", {"query": ["<answer>x</answer>"], "labels": [{"task": "LaMP_2", "gold": "x"}]}, 422,
         "labels[0].profile"),  # the guided stage weights the PRMU, which needs the user
        ("/get_reward", {"query": ["<answer>x</answer>"],
                         "labels": [{"task": "LaMP_2", "gold": "x", "user_id": "ghost"}]}, 422, "labels[0].user_id"),
        ("/get_reward?stage=exploratory", {"query": ["x" * 2001], "labels": [{"task": "LaMP_2", "gold": "x"}]}, 413,
         "query[0]"),
        ("/v1/score", {"items": [score_item("x" * 2001)]}, 413, "items[0].response"),
        ("/v1/score", {"items": [score_item("x", profile=PROFILE * 11)]}, 413, "items[0].profile"),
        ("/v1/score", {"items": [score_item(BIG * 6)] * 5}, 413, "body"),
    ],
)
def test_bad_input_is_a_client_error_and_the_service_keeps_serving(service, path, payload, status, field):
    _, _, client = service
    r = client.post(path, content=json.dumps(payload), headers={"content-type": "application/json"})  # \u escapes
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] and field in [i["field"] for i in body["issues"]], body
    assert "Traceback" not in r.text
    assert client.post("/v1/score", json={"items": [score_item("sci-fi")]}).status_code == 200


def test_openapi_documents_every_route(service):
    _, _, client = service
    spec = client.get("/openapi.json").json()
    assert {"/v1/score", "/v1/reward", "/get_reward", "/healthz", "/readyz", "/v1/model"} <= set(spec["paths"])
    assert "ScoreRequest" in spec["components"]["schemas"] and client.get("/docs").status_code == 200
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer" and schemes["basic"]["scheme"] == "basic"
    assert {"bearer": []} in spec["security"] and spec["paths"]["/healthz"]["get"]["security"] == []
    assert "tagpr_ingress_requests_total" in spec["paths"]["/metrics"]["get"]["description"]
    # requests carry data only: no parameter or body field names a file
    names = {p["name"] for route in spec["paths"].values() for op in route.values() for p in op.get("parameters", [])}
    names |= {f for schema in spec["components"]["schemas"].values() for f in schema.get("properties", {})}
    pathlike = {"path", "file", "filename", "dir", "folder", "checkpoint", "ckpt", "url"}
    assert "stage" in names and not {f for f in names if pathlike & set(f.lower().split("_"))}, names


@pytest.mark.parametrize("body, reason", [
    (b'{"items": [', "invalid JSON"),
    (b'{"items": ["\xff"]}', "not UTF-8"),
    (b"[" * 30000 + b"]" * 30000, "nested too deeply"),
])
def test_an_unparseable_body_is_one_422_shape(service, body, reason):
    _, _, client = service
    for path in ("/v1/score", "/get_reward"):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == "invalid request", r.text
        assert [i["field"] for i in r.json()["issues"]] == ["body"] and reason in r.json()["issues"][0]["reason"]


def test_malformed_json_and_wrong_method(service):
    _, _, client = service
    assert client.get("/v1/score").status_code == 405
    assert client.get("/nope").status_code == 404


def test_bearer_token(service):
    _, _, client = service
    body = {"items": [score_item("sci-fi")]}
    assert client.get("/secure/healthz").status_code == 200
    missing = client.post("/secure/v1/score", json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    wrong = client.post("/secure/v1/score", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = client.post("/secure/v1/score", json=body, headers={"Authorization": "Bearer s3cret-test-token"})
    assert ok.status_code == 200, ok.text
    assert client.post("/v1/score", json=body).status_code == 200  # the open app needs no token


def test_clients(service, serve_port):
    cfg, result, _ = service
    with RewardClient(f"http://127.0.0.1:{serve_port}") as c:
        scores, version = c.score([reward_input(score_item("sci-fi"))])
        assert len(scores) == 1 and version == result.version
        outcomes = c.reward([reward_input(score_item("<answer>sci-fi</answer>", gold="sci-fi"))], stage="exploratory")
        assert outcomes[0].reward == 1.0 and not outcomes[0].defaulted
        with pytest.raises(RewardServiceError) as e:
            c.reward([reward_input(score_item("x", gold="y"))], stage="warmup")
        assert e.value.status == 422
    dead = RewardClient(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01, failure_policy="default",
                        default_reward=-1.0)
    out = dead.reward([reward_input(score_item("x", gold="y"))] * 3)
    assert [o.reward for o in out] == [-1.0] * 3 and all(o.defaulted for o in out) and dead.failed_items == 3
    in_cluster = HandleRewardClient("reward-open")
    got = in_cluster.reward([reward_input(score_item("<answer>sci-fi</answer>", gold="sci-fi"))], stage="exploratory")
    assert got[0].reward == 1.0


def test_checkpoint_swap_under_traffic(service, tmp_path):
    cfg, result, client = service
    net, meta, users = checkpoint.load(result.checkpoint)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01)
    new_version = checkpoint.save(net, tmp_path / "v2", cfg.prmu, meta["encoder"], meta["dim"], users,
                                  score_stats=meta["score_stats"])
    statuses, versions, stop = [], [], threading.Event()

    def traffic():
        with httpx.Client(base_url=client.base_url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/v1/score", json={"items": [score_item("sci-fi")]})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model_version"])

    threads = [threading.Thread(target=traffic) for _ in range(3)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(versions) >= 5, 60)
    swap_checkpoint(str(tmp_path / "v2"), name="reward-open")
    assert wait_for(lambda: client.get("/v1/model").json()["version"] == new_version, 60)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    assert versions[0] == result.version and versions[-1] == new_version
    assert set(versions) == {result.version, new_version}
    swap_checkpoint(result.checkpoint, name="reward-open")
    assert wait_for(lambda: client.get("/v1/model").json()["version"] == result.version, 60)


def test_metrics_on_rays_endpoint_and_ingress(service, ray_cluster):
    from prometheus_client.parser import text_string_to_metric_families

    _, _, client = service
    for _ in range(3):
        client.post("/v1/score", json={"items": [score_item("sci-fi")]})
    client.post("/v1/score", json={"items": []})
    url = f"http://127.0.0.1:{ray_cluster['metrics_port']}/metrics"

    def routes(found):
        return {(s.labels.get("route"), s.labels.get("code")) for s in found["ray_tagpr_reward_requests"].samples}

    def families():
        text = httpx.get(url, timeout=10).text
        found = {f.name: f for f in text_string_to_metric_families(text)}
        if {"ray_tagpr_reward_requests", "ray_tagpr_prmu_batch_size", "ray_tagpr_prmu_model_info"} <= set(found):
            return found if {("/v1/score", "200"), ("/v1/score", "422")} <= routes(found) else None
        return None

    found = wait_for(families, 60, 2.0)
    assert found, "tagpr request series (200 and 422) never appeared on Ray's metrics endpoint"
    assert any(s.name.endswith("_count") and s.value > 0 for s in found["ray_tagpr_prmu_batch_size"].samples)
    ingress = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert any(s.labels.get("route") == "/v1/score" for s in ingress["tagpr_ingress_requests"].samples)


def test_service_binds_loopback_by_default():
    assert load_config().service.host == "127.0.0.1"
