"""A bounded HTTP load generator, run as its own process so it does not share the server's GIL.

    python -m benchmarks.loadgen --url http://127.0.0.1:8000/v1/score --payloads P.json \\
        --concurrency 32 --duration 8 [--token-env VAR]

Each of ``concurrency`` workers posts payloads from the file in turn (a fresh ``{i}`` in every
text keeps the encoder cache honest) until ``duration`` seconds pass; with ``--rate`` requests
arrive on a fixed schedule instead (open loop, for load at a given fraction of capacity). Prints
one JSON line with requests/s, items/s, latency percentiles, error counts and how many 503s
carried ``Retry-After``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from urllib.parse import urlparse

import httpx


def fill_payload(payload: dict, i: int) -> dict:
    """``payload`` with every ``{i}`` in its texts replaced by ``i``."""
    return json.loads(json.dumps(payload).replace("{i}", str(i)))


async def run(url: str, payloads: list[dict], concurrency: int, duration: float, token: str | None,
              rate: float | None = None, timeout: float = 60.0) -> dict:
    """Closed loop (``concurrency`` workers, each waiting for its answer) or, with ``rate``, open loop:
    a request every ``1/rate`` seconds whatever the server does, at most ``concurrency`` in flight
    (an arrival beyond that counts as ``client_backlog``)."""
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load a non-loopback host: {host}")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    items, counter, retry_after = 0, 0, 0
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        async def post() -> None:
            nonlocal items, counter, retry_after
            counter += 1
            payload = fill_payload(payloads[counter % len(payloads)], counter)
            start = time.perf_counter()
            try:
                r = await client.post(url, json=payload)
                code = str(r.status_code)
                retry_after += code == "503" and "retry-after" in r.headers
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            latencies.append(time.perf_counter() - start)
            if code == "200":
                items += len(payload.get("items", ())) or 1
            else:
                errors[code] = errors.get(code, 0) + 1

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await post()

        start = time.perf_counter()
        if rate:
            inflight: set[asyncio.Task] = set()
            due = start
            while due < deadline:
                if len(inflight) < concurrency:
                    task = asyncio.create_task(post())
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                else:
                    errors["client_backlog"] = errors.get("client_backlog", 0) + 1
                due += 1 / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await asyncio.gather(*inflight)
        else:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    return {"concurrency": concurrency, "rate": rate, "seconds": elapsed, "requests": len(lat),
            "requests_per_s": len(lat) / elapsed, "items_per_s": items / elapsed, "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "max_ms": lat[-1] * 1000 if lat else float("nan"), "errors": errors,
            "503_with_retry_after": retry_after}


def run_process(url: str, payloads: str | os.PathLike, *, concurrency: int, seconds: float,
                rate: float | None = None, timeout: float = 60.0) -> dict:
    """Run the generator in its own process (so it does not share the server's GIL) and return its result."""
    import subprocess
    from pathlib import Path

    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--payloads", str(payloads), "--concurrency",
           str(concurrency), "--duration", str(seconds), "--timeout", str(timeout)]
    if rate:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
                         timeout=seconds + timeout + 120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--payloads", required=True, help="JSON file with a list of request bodies")
    p.add_argument("--concurrency", type=int, default=8, help="workers; with --rate, the most requests in flight")
    p.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, seconds")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--token-env", default=None)
    args = p.parse_args()
    with open(args.payloads) as fh:
        payloads = json.load(fh)
    token = os.environ.get(args.token_env) if args.token_env else None
    print(json.dumps(asyncio.run(run(args.url, payloads, args.concurrency, args.duration, token, args.rate,
                                     args.timeout))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
