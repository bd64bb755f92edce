"""Webhook receivers down: deliveries are retried, then marked failed, and the API is not held up.

Two receivers are down in two ways: nothing listens on the port (connection refused at
once), and one accepts the connection and never answers (each attempt waits for the
worker's timeout). A webhook worker delivers beside the API on the same event loop, as
in the service; while it retries, the API keeps answering quickly. Afterwards the
delivery log holds every attempt of each delivery, the last one marked as given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.events import WebhookWorker, emit
from service.settings import Settings
from service.store import RedisStore
from tests.conftest import new_org
from tests.proof.procs import ApiProcess, RedisServer, create_key, free_port
from tests.service.conftest import grades_rows, make_key

ATTEMPTS = 3
TIMEOUT = 1.0


@contextlib.asynccontextmanager
async def silent_receiver() -> AsyncIterator[tuple[str, list[float]]]:
    """Accepts connections, reads, and never answers."""
    accepted: list[float] = []
    held: list[asyncio.StreamWriter] = []

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(time.monotonic())
        held.append(writer)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook", accepted
    finally:
        for w in held:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
        server.close()
        await server.wait_closed()


def _refused_url() -> str:
    port = free_port()
    with socket.socket() as s:  # nothing listens there: connecting is refused at once
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return f"http://127.0.0.1:{port}/hook"


async def test_receivers_down_retried_then_failed_and_the_api_is_not_blocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = new_org()
    # The app's own webhook worker, beside the API on its event loop as in the service,
    # with short retries so the test takes seconds (defaults: the slow test below).
    fast = functools.partial(
        WebhookWorker, max_attempts=ATTEMPTS, backoff_seconds=0.2, timeout_seconds=TIMEOUT
    )
    monkeypatch.setattr("service.app.WebhookWorker", fast)
    with RedisServer(tmp_path / "redis", fsync="no") as server:
        store = RedisStore(server.url)
        h = await make_key(store, org, "admin")
        app = create_app(Settings(run_workers=0), RedisStore(server.url))
        spans: list[tuple[float, float]] = []  # (sent, answered) of every API request
        deliveries: list[dict[str, object]] = []
        async with silent_receiver() as (silent_url, accepted), AsyncTestClient(app) as client:
            endpoints = {}
            for url in (_refused_url(), silent_url):
                r = await client.post(
                    f"/v1/orgs/{org}/webhooks",
                    json={"url": url, "events": ["calibration.completed"]},
                    headers=h,
                )
                assert r.status_code == 201, r.text
                endpoints[r.json()["endpoint"]["endpoint_id"]] = url

            async def given_up() -> bool:
                r = await client.get(f"/v1/orgs/{org}/webhooks/deliveries", headers=h)
                assert r.status_code == 200
                deliveries[:] = r.json()
                done = [d for d in deliveries if d["next_attempt_at"] is None and not d["ok"]]
                return len(done) == len(endpoints)

            await emit(store, org, "calibration.completed", {"cycle": "c1", "run_id": "r1"})
            deadline = time.monotonic() + 60
            i = 0
            while not await given_up():
                assert time.monotonic() < deadline, deliveries
                # the API meanwhile: reads and writes, timed
                started = time.monotonic()
                rows = grades_rows(5, 2, offset=(i % 5) / 100)
                r = await client.post(f"/v1/orgs/{org}/cycles/c1/grades", json=rows, headers=h)
                assert r.status_code == 200
                r = await client.get(f"/v1/orgs/{org}/cycles/c1/grades", headers=h)
                assert r.status_code == 200
                spans.append((started, time.monotonic()))
                i += 1
                await asyncio.sleep(0.02)
        await store.close()
    by_endpoint: dict[str, list[dict[str, object]]] = {}
    for d in deliveries:
        by_endpoint.setdefault(str(d["endpoint_id"]), []).append(d)
    assert set(by_endpoint) == set(endpoints)
    for attempts in by_endpoint.values():
        attempts.sort(key=lambda d: int(str(d["attempt"])))
        assert [d["attempt"] for d in attempts] == list(range(1, ATTEMPTS + 1))
        assert not any(d["ok"] for d in attempts)
        assert len({d["delivery_id"] for d in attempts}) == 1  # one delivery, retried
        assert all(d["next_attempt_at"] is not None for d in attempts[:-1])
        assert "gave up" in str(attempts[-1]["error"])
    assert len(accepted) == ATTEMPTS  # the silent receiver saw every attempt, each timed out
    # While the worker waited on the silent receiver (1 s, three times), the API kept
    # answering: requests completed inside those windows. (Single stalls of a second
    # happen on a loaded machine without any webhook worker, so no one request is held
    # to a bound; a blocked loop would answer nothing inside the windows.)
    windows = [(a, a + TIMEOUT) for a in accepted]
    answered = [sum(a < end < b for _, end in spans) for a, b in windows]
    assert sum(n > 0 for n in answered) >= ATTEMPTS - 1, answered
    latencies = sorted(end - sent for sent, end in spans)
    assert latencies[len(latencies) // 2] < TIMEOUT / 4, latencies


@pytest.mark.slow
def test_the_service_process_gives_up_on_a_dead_receiver_with_its_defaults(
    tmp_path: Path,
) -> None:
    # The service as deployed: its own webhook worker (6 attempts, backoff 1 s doubling),
    # a receiver that refuses connections, and compensation reads going on meanwhile.
    import httpx

    org = new_org()
    with RedisServer(tmp_path / "redis", fsync="no") as server:
        key, _ = create_key(server.url, org, "admin")
        with ApiProcess(server.url, tmp_path / "api.log") as api:
            h = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=api.base, headers=h, timeout=30) as c:
                r = c.post(
                    f"/v1/orgs/{org}/webhooks",
                    json={"url": _refused_url(), "events": ["calibration.completed"]},
                )
                assert r.status_code == 201, r.text

                async def fire() -> None:
                    store = RedisStore(server.url)
                    try:
                        await emit(store, org, "calibration.completed", {"cycle": "c1"})
                    finally:
                        await store.close()

                asyncio.run(fire())
                answered = 0
                deadline = time.monotonic() + 120
                while True:
                    assert c.get(f"/v1/orgs/{org}/cycles/c1/grades").status_code == 200
                    answered += 1
                    log = c.get(f"/v1/orgs/{org}/webhooks/deliveries").json()
                    if any(d["next_attempt_at"] is None for d in log):
                        break
                    assert time.monotonic() < deadline, log
                    time.sleep(0.1)
    assert sorted(d["attempt"] for d in log) == [1, 2, 3, 4, 5, 6]
    assert not any(d["ok"] for d in log)
    assert answered > 100  # the API answered all along (~31 s of retries)
