"""CPU per request of the owner GET inside one process, without an HTTP server or a load generator.

The app from :func:`service.app.create_app` is called as a plain ASGI callable on uvloop
(``--concurrency`` requests in flight, as 64 wrk connections would keep), against a
real Redis started here (the embedded one, Unix socket). Process CPU time per request
is the service's own cost per request, free of the HTTP server, wrk and, mostly, of
other load on the machine (CPU time, not wall time). ``/healthz`` is measured the same
way as the floor of the framework.

``--variant`` measures the same request with one change applied in this process only
(monkeypatching, nothing in the repository changes), to size a change before making it:

* ``base``: the code as it is (the key check, the rate counter and the owner read in one
  Lua script, on the store's per-request connections);
* ``no-metrics``: without the metrics middleware;
* ``no-auth``: the key check skipped (the handler then reads the owner by itself, still
  one round trip): what authentication adds on top of the read, not a proposal.

``--profile`` prints cProfile's top functions by own time for the base variant.

    .venv/bin/python benchmarks/http_inprocess.py
    .venv/bin/python benchmarks/http_inprocess.py --requests 20000 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from calibrate import OwnerAchievement
from service.auth import new_api_key
from service.embedded import EmbeddedRedis
from service.settings import Settings
from service.store import RedisStore

ORG, CYCLE, RUN = "bench", "c1", "r1"
VARIANTS = ("base", "no-metrics", "no-auth")
Call = Callable[[], Awaitable[int]]


async def seed(store: RedisStore, n_owners: int) -> str:
    """A published run with ``n_owners`` owners and an admin key; returns the key."""
    key, record = new_api_key(ORG, ["admin"])
    await store.add_api_key(record)
    enc = msgspec.msgpack.Encoder().encode
    owners = [
        (
            f"o{i:06d}",
            enc(
                OwnerAchievement(
                    owner_id=f"o{i:06d}",
                    n_krs=4,
                    achievement=0.6,
                    std_error=0.05,
                    ci_low=0.5,
                    ci_high=0.7,
                )
            ),
        )
        for i in range(n_owners)
    ]
    await store.create_run(
        ORG, CYCLE, RUN, {"run_id": RUN, "status": "done", "created_at": "0", "result_attempt": "1"}
    )
    await store.save_results(ORG, CYCLE, RUN, 1, b"{}", {"owners": owners})
    assert await store.publish_run(ORG, CYCLE, RUN) == "ok"
    return key


def request_caller(app: Any, path: str, key: str) -> Call:
    """One ASGI GET of ``path``; returns the status."""
    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {key}".encode())]

    async def call() -> int:
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8080),
            "state": {},
        }
        await app(scope, receive, send)
        return status

    return call


async def drive(calls: list[Call], n: int, concurrency: int) -> tuple[float, float]:
    """Run ``n`` requests, ``concurrency`` at a time; (CPU µs per request, wall req/s)."""

    async def worker(i: int) -> None:
        for j in range(i, n, concurrency):
            status = await calls[j % len(calls)]()
            if status != 200:
                raise RuntimeError(f"status {status}")

    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    return cpu / n * 1e6, n / wall


def apply_variant(variant: str) -> None:
    """Monkeypatch this process for ``variant`` (before the app is created)."""
    import service.app

    app_mod: Any = service.app  # patched freely below
    if variant == "no-metrics":
        app_mod.metrics_middleware = lambda _m: lambda app: app
    elif variant == "no-auth":
        app_mod.auth_middleware = lambda _store, _settings: lambda app: app


async def run(args: argparse.Namespace, url: str, variant: str) -> list[str]:
    apply_variant(variant)
    from service.app import create_app

    store = RedisStore(url)
    key = await seed(store, args.owners)
    app: Any = create_app(Settings(redis_url=url), store, run_workers=0)
    out: list[str] = []
    lifespan_events: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await lifespan_events.put({"type": "lifespan.startup"})
    sent: list[dict[str, Any]] = []

    async def l_receive() -> dict[str, str]:
        return await lifespan_events.get()

    async def l_send(message: dict[str, Any]) -> None:
        sent.append(message)

    life = asyncio.create_task(app({"type": "lifespan", "state": {}}, l_receive, l_send))
    while not sent:
        await asyncio.sleep(0.01)
    owner_calls = [
        request_caller(app, f"/v1/orgs/{ORG}/cycles/{CYCLE}/owners/o{i:06d}", key)
        for i in range(args.owners)
    ]
    health = [request_caller(app, "/healthz", key)]
    for label, calls in (("owner GET", owner_calls), ("/healthz", health)):
        await drive(calls, 2000, args.concurrency)  # warm-up
        cpu_us, rps = await drive(calls, args.requests, args.concurrency)
        out.append(f"| {variant} | {label} | {cpu_us:.0f} | {1e6 / cpu_us:,.0f} | {rps:,.0f} |")
    if args.profile and variant == "base":
        prof = cProfile.Profile()
        prof.enable()
        await drive(owner_calls, args.requests, args.concurrency)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        out.append("\n```\n" + buf.getvalue().strip() + "\n```\n")
    await lifespan_events.put({"type": "lifespan.shutdown"})
    await life
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--owners", type=int, default=1000)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--reps", type=int, default=3, help="runs of each variant, interleaved")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # each variant in a fresh process, so monkeypatches never leak into another
        lines = uvloop.run(run(args, args.child.split("|", 1)[1], args.child.split("|", 1)[0]))
        print("\n".join(lines))
        return 0
    cpu: dict[tuple[str, str], list[float]] = {}
    extra: list[str] = []
    with tempfile.TemporaryDirectory(prefix="okrcal-inproc-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "data")
        url = server.start()
        try:
            # repetitions interleave the variants, so drifting machine load hits all
            for _ in range(args.reps):
                for variant in args.variants:
                    server_flush(url)
                    cmd = [sys.executable, __file__, "--child", f"{variant}|{url}"]
                    cmd += ["--requests", str(args.requests)]
                    cmd += ["--concurrency", str(args.concurrency), "--owners", str(args.owners)]
                    cmd += ["--profile"] if args.profile else []
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                    for line in out.splitlines():
                        cells = [c.strip() for c in line.strip("|").split("|")]
                        if len(cells) == 5 and cells[0] == variant:
                            cpu.setdefault((cells[0], cells[1]), []).append(float(cells[2]))
                        elif not line.startswith("|"):
                            extra.append(line)
        finally:
            server.stop()
    print(f"{args.requests:,} requests per run, {args.concurrency} in flight, {args.reps} run(s)\n")
    print("| variant | request | CPU µs per request (median) | requests per CPU-s | runs |")
    print("|---|---|---:|---:|---|")
    for (variant, label), values in cpu.items():
        med = statistics.median(values)
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"| {variant} | {label} | {med:.0f} | {1e6 / med:,.0f} | {runs} |")
    print("\n".join(extra))
    return 0


def server_flush(url: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushall()


if __name__ == "__main__":
    sys.exit(main())
