"""The HTTP edge every service of the project shares.

- One error shape: ``{"error", "issues": [{"field", "reason"}]}``, fields as paths
  (``items[0].profile[2].text``); client mistakes are 4xx, never a stack trace; a body that does
  not parse is one 422 on ``body``.
- Text is valid Unicode (a lone surrogate from a ``\\ud800`` escape is refused where it stands).
- A body-size limit (413), the token as Bearer or as the password of HTTP Basic (401), and
  per-route request metrics, for every route but the health checks.

A service calls :func:`install` on its FastAPI app; its ingress replica calls :func:`register`
when it starts. ``@serve.ingress`` serializes the app by value, so the state the middleware reads
cannot live in the app or in globals it captures: it lives in this imported module, one slot per
service.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Optional, Union

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tagpr.credentials import presented_token, read_secret

log = logging.getLogger("tagpr.service")

OPEN_ROUTES = ("/healthz", "/readyz")  # path suffixes: an app may sit under a route prefix
DEFAULT_MAX_BODY = 8 << 20
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]

# ---------------------------------------------------------------- schemas


def field_path(*parts: Any) -> str:
    """A field's path as errors name it: ``items[0].profile[2].text``, ``labels[3].gold``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(text: str) -> str:
    """JSON's ``\\ud800`` escapes decode to lone surrogates, which no tokenizer takes: refused at
    the edge, so they never reach (and fail) a batch shared with other requests."""
    bad = _SURROGATE.search(text)
    if bad:
        raise ValueError(f"lone surrogate U+{ord(bad.group()):04X} at character {bad.start()}: not valid Unicode text")
    return text


Text = Annotated[str, AfterValidator(_encodable)]
FieldValue = Annotated[Optional[Union[str, int, float]],
                       AfterValidator(lambda v: _encodable(v) if isinstance(v, str) else v)]


class Issue(BaseModel):
    field: str
    reason: str


class ErrorResponse(BaseModel):
    error: str
    issues: list[Issue] = Field(default_factory=list)


ERRORS = {status: {"model": ErrorResponse} for status in (401, 413, 422, 503)}  # for routes' OpenAPI responses


class ClientError(HTTPException):
    """A request the service refuses: status, message, offending fields. An ``HTTPException`` so
    that FastAPI passes it through unchanged even when raised while the body is being read."""

    def __init__(self, status: int, error: str, issues: list[tuple[str, str]] = (), headers: dict | None = None):
        super().__init__(status_code=status, detail=error, headers=headers)
        self.status, self.error, self.issues = status, error, list(issues)

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=self.error, issues=[{"field": f, "reason": r} for f, r in self.issues])
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers or {})


def size_issues(limits: Any, texts: Mapping[str, str], profile: Sequence[Mapping[str, Any]],
                profile_field: str) -> list[tuple[str, str]]:
    """Fields over a service's ``limits`` (``ServiceLimits``): each text of ``texts`` (field ->
    text), the number of profile items, and each profile item's texts; a 413 for the caller."""
    chars, items = limits.max_text_chars, limits.max_profile_items
    issues = [(f, f"{len(t)} characters, limit {chars}") for f, t in texts.items() if len(t) > chars]
    if len(profile) > items:
        issues.append((profile_field, f"{len(profile)} items, limit {items}"))
    return issues + [(f"{profile_field}[{j}].{k}", f"longer than {chars} characters")
                     for j, p in enumerate(profile) for k, v in p.items() if isinstance(v, str) and len(v) > chars]


class RequestIssues(ValueError):
    """Mistakes in a request that its schema lets through, as (field, reason) pairs; raised by the
    services' pure request handling and answered as a 422 by the edge."""

    def __init__(self, issues: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {r}" for f, r in issues))
        self.issues = issues


# ---------------------------------------------------------------- per-replica state


class IngressMetrics:
    """Requests by route and status code, latency, items: one call records to Ray's metrics
    (``tagpr_<service>_requests``, ..., every replica on Ray's Prometheus endpoint) and to this
    replica's prometheus-client registry (``tagpr_ingress_*``, served at ``GET /metrics``)."""

    def __init__(self, service: str):
        from prometheus_client import CollectorRegistry, Counter, Histogram
        from ray.util import metrics as rm

        self._requests = rm.Counter(f"tagpr_{service}_requests", "requests by route and status code",
                                    tag_keys=("route", "code"))
        self._latency = rm.Histogram(f"tagpr_{service}_latency_seconds", "request latency", LATENCY_BUCKETS,
                                     tag_keys=("route",))
        self._items = rm.Counter(f"tagpr_{service}_items", "items received", tag_keys=("route",))
        self.registry = CollectorRegistry()
        self._p_requests = Counter("tagpr_ingress_requests", "requests by route and status code",
                                   ("route", "code"), registry=self.registry)
        self._p_latency = Histogram("tagpr_ingress_latency_seconds", "request latency", ("route",),
                                    buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe(self, route: str, code: int, seconds: float, items: int = 0) -> None:
        self._requests.inc(1, tags={"route": route, "code": str(code)})
        self._latency.observe(seconds, tags={"route": route})
        if items:
            self._items.inc(items, tags={"route": route})
        self._p_requests.labels(route, str(code)).inc()
        self._p_latency.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


@dataclass(frozen=True)
class Edge:
    """What the edge of one service's replica enforces and records."""

    token_sha256: Optional[str]
    max_body_bytes: int
    metrics: IngressMetrics


_EDGES: dict[str, Edge] = {}


def token_digest(token_env: str) -> Optional[str]:
    """sha256 of the token in ``$token_env`` (or the file ``$token_env_FILE``), for deploying a
    service: the token itself never enters Serve's config."""
    token = read_secret(token_env)
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def register(service: str, edge: Edge) -> None:
    """Called by a service's ingress replica when it starts."""
    _EDGES[service] = edge


# ---------------------------------------------------------------- middleware and handlers


class BodyLimit:
    """ASGI middleware: 413 once a request body exceeds the replica's ``max_body_bytes``."""

    def __init__(self, asgi, service: str):
        self.asgi, self.service = asgi, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.asgi(scope, receive, send)
        edge = _EDGES.get(self.service)
        limit = edge.max_body_bytes if edge else DEFAULT_MAX_BODY
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = ClientError(413, "payload too large", [("body", f"more than {limit} bytes")])
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await too_big.response()(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_big
            return message

        try:
            await self.asgi(scope, counted, send)
        except ClientError as exc:
            await exc.response()(scope, receive, send)


async def _auth_and_metrics(service: str, request: Request, call_next):
    edge = _EDGES.get(service)
    start = time.perf_counter()
    if edge is not None and edge.token_sha256 and not request.url.path.endswith(OPEN_ROUTES):
        token = presented_token(request.headers.get("authorization", ""))
        digest = hashlib.sha256(token.encode()).hexdigest() if token is not None else ""
        if not hmac.compare_digest(digest, edge.token_sha256):
            response = ClientError(401, "unauthorized", [("Authorization", "missing or wrong token (Bearer, or the "
                                                          "password of Basic)")],
                                   {"WWW-Authenticate": f'Bearer, Basic realm="tagpr-{service}"'}).response()
            edge.metrics.observe(request.url.path, 401, time.perf_counter() - start)
            return response
    response = await call_next(request)
    if edge is not None:
        items = getattr(request.state, "items", 0)
        edge.metrics.observe(request.url.path, response.status_code, time.perf_counter() - start, items)
    return response


def _printable(field: str) -> str:
    """A field path as JSON can carry it: a key holding a lone surrogate is shown escaped."""
    return field.encode("utf-8", "backslashreplace").decode("utf-8")


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    issues = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            issues.append(("body", f"invalid JSON at position {err['loc'][-1]}: {err.get('ctx', {}).get('error', '')}"))
            continue
        loc = [p for p in err.get("loc", ()) if p not in ("body", "[key]")]
        reason = err.get("msg", "invalid").removeprefix("Value error, ")
        issues.append((_printable(field_path(*loc)) or "body", reason))
    return ClientError(422, "invalid request", issues).response()


async def _client_error(request: Request, exc: ClientError) -> JSONResponse:
    return exc.response()


async def _request_issues(request: Request, exc: RequestIssues) -> JSONResponse:
    return ClientError(422, "invalid request", exc.issues).response()


# Why FastAPI could not read a JSON body that json.loads did not call malformed.
BODY_ERRORS = {UnicodeDecodeError: "not UTF-8 text", RecursionError: "JSON nested too deeply"}


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    cause = exc.__cause__
    if exc.status_code == 400 and cause is not None:  # FastAPI's "error parsing the body": the 422 of bad JSON
        reason = next((r for t, r in BODY_ERRORS.items() if isinstance(cause, t)), "not a JSON document")
        return ClientError(422, "invalid request", [("body", reason)]).response()
    return ClientError(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)).response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return ClientError(500, "internal error").response()


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the two ways to send the token, so ``/docs`` can authorize; the
    health routes stay open."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        spec.setdefault("components", {})["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "the service's token"},
            "basic": {"type": "http", "scheme": "basic", "description": "any user name, the token as password"},
        }
        spec["security"] = [{"bearer": []}, {"basic": []}]
        for path, ops in spec["paths"].items():
            if path.endswith(OPEN_ROUTES):
                for op in ops.values():
                    op["security"] = []
        app.openapi_schema = spec
    return app.openapi_schema


def install(app: FastAPI, service: str) -> FastAPI:
    """The edge on ``app``, for the replica state that ``register(service, ...)`` sets. Call it
    before the routes' class is decorated with ``@serve.ingress``."""
    app.add_middleware(BodyLimit, service=service)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(ClientError, _client_error)
    app.add_exception_handler(RequestIssues, _request_issues)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.middleware("http")(functools.partial(_auth_and_metrics, service))
    app.openapi = functools.partial(_openapi, app)
    return app
