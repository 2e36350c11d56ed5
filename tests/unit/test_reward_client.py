"""RewardClient's retry and failure policy against a scripted HTTP server on loopback.

The server is a stand-in for faults the real service rarely shows on demand (a 503 burst, a 502
from a proxy); the happy path against the real Serve app is in tests/integration.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.reward.client import RewardClient, RewardServiceError
from tagpr.lamp.io import Prompt
from tagpr.rewards import RewardInput

OK = {"stage": "guided", "results": [{"reward": 0.5, "components": {"format": 1.0}}], "model_version": "v"}


@pytest.fixture
def scripted():
    """A server answering POSTs with the queued (status, body, headers); records requests."""
    state = {"queue": [], "calls": 0, "auth": [], "bodies": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            state["bodies"].append(json.loads(self.rfile.read(int(self.headers.get("content-length", 0)))))
            state["calls"] += 1
            state["auth"].append(self.headers.get("authorization"))
            status, body, headers = state["queue"].pop(0) if state["queue"] else (200, OK, {})
            data = json.dumps(body).encode()
            self.send_response(status)
            for k, v in {"content-type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()


ITEM = RewardInput(Prompt("1", "LaMP_2", "x", (), "z"), "y")


def test_items_are_sent_in_the_services_shape(scripted):
    profile = ({"description": "d", "tag": "comedy"},)
    with RewardClient(scripted["url"]) as c:
        c.reward([ITEM, RewardInput(Prompt("2", "LaMP_2", "x", profile, "z", "u7"), "y")], "guided")
    sent = {"task": "LaMP_2", "input": "x", "response": "y", "gold": "z"}
    assert scripted["bodies"] == [{"stage": "guided", "items": [
        {**sent, "profile": []}, {**sent, "profile": [dict(profile[0])], "user_id": "u7"}]}]


def test_retries_5xx_then_succeeds(scripted):
    scripted["queue"] += [(503, {"error": "busy"}, {"Retry-After": "0"}), (502, {"error": "proxy"}, {})]
    with RewardClient(scripted["url"], token="t0k", retries=3, backoff=0.01) as c:
        out = c.reward([ITEM])
    assert scripted["calls"] == 3 and out[0].reward == 0.5 and not out[0].defaulted
    assert set(scripted["auth"]) == {"Bearer t0k"}


def test_client_errors_are_not_retried_nor_defaulted(scripted):
    scripted["queue"].append((422, {"error": "invalid request", "issues": [{"field": "stage", "reason": "x"}]}, {}))
    c = RewardClient(scripted["url"], retries=3, backoff=0.01, failure_policy="default")
    with pytest.raises(RewardServiceError) as e:
        c.reward([ITEM])
    assert e.value.status == 422 and e.value.body["issues"][0]["field"] == "stage" and scripted["calls"] == 1


def test_exhausted_retries_raise_or_default(scripted):
    scripted["queue"] += [(503, {"error": "busy"}, {})] * 3
    with pytest.raises(RewardServiceError, match="gave up after 3 attempts"):
        RewardClient(scripted["url"], retries=2, backoff=0.01).reward([ITEM])
    scripted["queue"] += [(500, {"error": "internal error"}, {})] * 3
    c = RewardClient(scripted["url"], retries=2, backoff=0.01, failure_policy="default", default_reward=0.25)
    out = c.reward([ITEM, ITEM])
    assert [o.reward for o in out] == [0.25, 0.25] and all(o.defaulted for o in out) and c.failed_items == 2
    assert c.reward([ITEM])[0].reward == 0.5  # the service is back


def test_unreachable_service(scripted):
    c = RewardClient("http://127.0.0.1:9", retries=1, backoff=0.01, failure_policy="default")
    assert c.reward([ITEM])[0].defaulted and c.failed_items == 1
    with pytest.raises(RewardServiceError):
        RewardClient("http://127.0.0.1:9", retries=0).reward([ITEM])
