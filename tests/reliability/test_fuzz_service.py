"""Schemathesis against the reward service's own OpenAPI document: every route, with and without
the bearer token, at least 1,000 generated requests; no 5xx, and every response (status code,
content type, body) conforms to the schema."""

from __future__ import annotations

import os
import secrets
from collections import Counter

import pytest

from tests.reliability.conftest import deploy_untrained

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASES_PER_MODE = int(os.environ.get("TAGPR_FUZZ_CASES", "600"))  # two modes: with and without the token
TOKEN_ENV = "TAGPR_FUZZ_TOKEN"


@pytest.fixture(scope="module")
def api(serve_port, tmp_path_factory):
    from ray import serve


    token = secrets.token_hex(16)
    os.environ[TOKEN_ENV] = token
    deploy_untrained("fuzz", ["service.min_replicas=1", "service.max_replicas=1"], tmp_path_factory.mktemp("fuzz"),
                     TOKEN_ENV)
    yield f"http://127.0.0.1:{serve_port}/fuzz", token
    serve.delete("fuzz")
    os.environ.pop(TOKEN_ENV, None)


def _fuzz(schema, base: str, headers: dict, checks: list, seen: Counter, label: bool) -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=CASES_PER_MODE, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy())
    def run(case):
        response = case.call(base_url=base, headers=headers, timeout=30)
        case.validate_response(response, checks=checks)
        seen[(label, f"{case.method} {case.path}", response.status_code)] += 1

    run()


def test_generated_requests_get_no_5xx_and_conform_to_the_schema(api):
    import schemathesis
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    base, token = api
    auth = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", headers=auth)
    operations = {f"{op.ok().method.upper()} {op.ok().path}" for op in schema.get_all_operations()}
    assert {"POST /v1/score", "POST /v1/reward", "POST /get_reward", "GET /healthz", "GET /readyz",
            "GET /v1/model"} <= operations
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: Counter = Counter()
    for with_token in (True, False):
        _fuzz(schema, base, auth if with_token else {}, checks, seen, with_token)

    total = sum(seen.values())
    by_status: Counter = Counter()
    for (with_token, _, code), n in seen.items():
        by_status[("token" if with_token else "no token", code)] += n
    print(f"{total} generated requests:", dict(sorted(by_status.items())))
    assert total >= 1000
    assert not [k for k in seen if k[2] >= 500]
    # without the token only the health routes answer
    assert all(code == 401 for (t, route, code) in seen if not t and route not in ("GET /healthz", "GET /readyz"))
    # with it, valid requests get through (the generator is not only producing rejects)
    assert any(t and code == 200 and route.startswith("POST") for (t, route, code) in seen)
