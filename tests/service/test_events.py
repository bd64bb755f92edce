"""Events: signed webhooks with retries against a local receiver, the delivery log, the pull
stream with consumer groups, events of runs and locked sessions, and isolation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import anyio
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service import keys as K  # noqa: N812 - read as "keys"
from service.app import create_app
from service.events import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookWorker,
    _encode,
    _Endpoint,
    emit,
    verify_signature,
)
from service.settings import Settings
from service.store import RedisStore
from tests.conftest import new_org
from tests.service.conftest import make_key
from tests.service.test_sessions_api import seed_cycle

Client = AsyncTestClient[Litestar]


class Receiver:
    """A local HTTP endpoint on 127.0.0.1 answering the given statuses in turn (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes, int, float]] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()  # request line
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        status = self.statuses.pop(0) if self.statuses else 200
        self.requests.append((headers, body, status, time.monotonic()))
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    async def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {n} requests arrived"
            await asyncio.sleep(0.05)


async def register_endpoint(store: RedisStore, org: str, url: str) -> None:
    """Endpoint ``ep1`` for ``scores.final`` to ``url`` (secret ``s``), straight in the store."""
    ep = _Endpoint(
        endpoint_id="ep1",
        url=url,
        events=["scores.final"],
        description=None,
        secret="s",
        created_us=0,
    )
    await store.redis.hset(K.OrgKeys(org).webhooks, "ep1", _encode(ep))


@pytest.fixture
async def worker_client(redis_url: str) -> AsyncIterator[Client]:
    """The app with a calibration worker (fits in a thread) and its webhook worker."""
    settings = Settings(run_workers=1, run_lease_seconds=5.0, fit_in_subprocess=False)
    async with AsyncTestClient(create_app(settings, RedisStore(redis_url))) as c:
        yield c


async def test_webhook_is_signed_and_retried_with_backoff(
    client: Client, store: RedisStore, org: str
) -> None:
    admin = await make_key(store, org, "admin")
    async with Receiver([500, 503]) as rx:
        hook_url = rx.url
        r = await client.post(
            f"/v1/orgs/{org}/webhooks",
            json={"url": rx.url, "events": ["calibration.completed"], "description": "comp"},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        endpoint_id = r.json()["endpoint"]["endpoint_id"]
        assert "secret" not in (await client.get(f"/v1/orgs/{org}/webhooks", headers=admin)).text

        event_id = await emit(store, org, "calibration.completed", {"run_id": "r1", "cycle": "c1"})
        await emit(store, org, "session.locked", {"cycle": "c1"})  # not subscribed
        await rx.wait_for(3)
        await asyncio.sleep(0.3)
        assert len(rx.requests) == 3  # nothing for the unsubscribed event, nothing more

    delivery_ids = set()
    for headers, body, _, _ in rx.requests:
        assert verify_signature(
            secret,
            headers[TIMESTAMP_HEADER.lower()],
            headers[SIGNATURE_HEADER.lower()],
            body,
            now=time.time(),
        )
        # a changed body or another secret does not verify
        assert not verify_signature(
            secret,
            headers[TIMESTAMP_HEADER.lower()],
            headers[SIGNATURE_HEADER.lower()],
            body + b" ",
            now=time.time(),
        )
        assert not verify_signature(
            "whsec_other",
            headers[TIMESTAMP_HEADER.lower()],
            headers[SIGNATURE_HEADER.lower()],
            body,
            now=time.time(),
        )
        assert headers[EVENT_HEADER.lower()] == "calibration.completed"
        delivery_ids.add(headers[DELIVERY_HEADER.lower()])
        event = json.loads(body)
        assert event["id"] == event_id
        assert event["type"] == "calibration.completed"
        assert event["org"] == org
        assert event["data"] == {"run_id": "r1", "cycle": "c1"}
    assert delivery_ids == {f"{event_id}.{endpoint_id}"}  # stable across retries
    times = [t for *_, t in rx.requests]
    assert times[1] - times[0] >= 0.9  # backoff 1 s, then 2 s
    assert times[2] - times[1] >= 1.9

    log = (await client.get(f"/v1/orgs/{org}/webhooks/deliveries", headers=admin)).json()
    assert [(d["attempt"], d["ok"], d["status_code"]) for d in log] == [
        (3, True, 200),
        (2, False, 503),
        (1, False, 500),
    ]
    assert log[1]["next_attempt_at"] is not None
    assert log[0]["next_attempt_at"] is None
    assert all(d["url"] == hook_url for d in log)
    r = await client.get(
        f"/v1/orgs/{org}/webhooks/deliveries",
        params={"endpoint_id": "other", "limit": 5},
        headers=admin,
    )
    assert r.json() == []


async def test_delivery_gives_up_after_the_last_attempt(store: RedisStore, org: str) -> None:
    async with Receiver([500] * 10) as rx:
        # an endpoint registered straight in the store, and a worker of our own that retries fast
        await register_endpoint(store, org, rx.url)
        worker = WebhookWorker(store, max_attempts=2, backoff_seconds=0.05, reclaim_after_seconds=1)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run, stop)
            await emit(store, org, "scores.final", {"cycle": "c1"})
            await rx.wait_for(2)
            await asyncio.sleep(0.5)
            stop.set()
    assert len(rx.requests) == 2
    raw = await store.redis.xrevrange(K.OrgKeys(org).deliveries, count=10)
    last = {k.decode(): v.decode() for k, v in raw[0][1].items()}
    assert last["attempt"] == "2"
    assert "gave up after 2 attempt(s)" in last["error"]


async def test_pull_stream_with_consumer_groups_and_run_events(
    worker_client: Client, store: RedisStore, org: str
) -> None:
    c = worker_client
    h = await seed_cycle(c, store, org)  # runs and publishes a calibration
    reader = await make_key(store, org, "scores:read")
    url = f"/v1/orgs/{org}/events"
    r = await c.get(url, params={"group": "payroll", "consumer": "p1"}, headers=reader)
    assert r.status_code == 200, r.text
    events = r.json()["events"]
    assert [e["type"] for e in events] == ["calibration.completed"]
    assert events[0]["data"]["status"] == "done"
    assert events[0]["data"]["cycle"] == "c1"
    assert events[0]["data"]["n_grades"] == 240
    # unacknowledged events stay pending for the consumer
    r = await c.get(url, params={"group": "payroll", "consumer": "p1"}, headers=reader)
    assert r.json()["events"] == []
    pending = await c.get(
        url, params={"group": "payroll", "consumer": "p1", "pending": "true"}, headers=reader
    )
    assert [e["id"] for e in pending.json()["events"]] == [events[0]["id"]]
    r = await c.post(
        f"{url}/ack", json={"group": "payroll", "ids": [events[0]["id"]]}, headers=reader
    )
    assert r.json() == {"acknowledged": 1}
    pending = await c.get(
        url, params={"group": "payroll", "consumer": "p1", "pending": "true"}, headers=reader
    )
    assert pending.json()["events"] == []
    # another group reads the same events independently
    other = await c.get(url, params={"group": "bi", "consumer": "b1"}, headers=reader)
    assert [e["id"] for e in other.json()["events"]] == [events[0]["id"]]

    # a locked session emits session.locked and scores.final
    cyc = f"/v1/orgs/{org}/cycles/c1"
    s = await c.post(f"{cyc}/sessions", json={"facilitator": "f", "owner_ids": ["o1"]}, headers=h)
    assert (
        await c.post(f"{cyc}/sessions/{s.json()['session_id']}/lock", headers=h)
    ).status_code == 200
    r = await c.get(url, params={"group": "payroll", "consumer": "p1"}, headers=reader)
    locked, final = r.json()["events"]
    assert locked["type"] == "session.locked"
    assert locked["data"]["session_id"] == s.json()["session_id"]
    assert final["type"] == "scores.final"
    assert [o["owner_id"] for o in final["data"]["owners"]] == ["o1"]
    owner = (await c.get(f"{cyc}/owners/o1", headers=h)).json()
    assert final["data"]["owners"][0]["achievement"] == pytest.approx(owner["achievement"])


async def test_event_and_webhook_input_and_isolation(
    client: Client, store: RedisStore, org: str
) -> None:
    admin = await make_key(store, org, "admin")
    writer = await make_key(store, org, "grades:write")
    hr = await make_key(store, org, "hr:read")
    other = await make_key(store, new_org(), "admin")
    hooks = f"/v1/orgs/{org}/webhooks"

    async def register(body: dict[str, object], headers: dict[str, str] = admin) -> object:
        return await client.post(hooks, json=body, headers=headers)

    cases: list[tuple[dict[str, object], str]] = [
        ({"url": "ftp://127.0.0.1/x"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "http://user:pw@127.0.0.1/x"}, "url"),
        ({"url": "http://127.0.0.1/x", "events": []}, "events"),
    ]
    for body, field in cases:
        r = await register(body)
        assert r.status_code == 400, body  # type: ignore[attr-defined]
        assert r.json()["errors"][0]["field"] == field  # type: ignore[attr-defined]
    r = await register({"url": "http://127.0.0.1/x", "events": ["payday"]})
    assert r.status_code == 400  # type: ignore[attr-defined]
    assert (await register({"url": "http://127.0.0.1/x"}, writer)).status_code == 403  # type: ignore[attr-defined]
    assert (await register({"url": "http://127.0.0.1/x"}, other)).status_code == 404  # type: ignore[attr-defined]
    r = await register({"url": "https://hooks.example.com/okr"})
    assert r.status_code == 201  # type: ignore[attr-defined]
    ep = r.json()["endpoint"]  # type: ignore[attr-defined]
    assert ep["events"] == ["calibration.completed", "session.locked", "scores.final"]
    assert (await client.get(hooks, headers=other)).status_code == 404
    assert (await client.get(f"{hooks}/deliveries", headers=hr)).status_code == 403
    assert (await client.delete(f"{hooks}/{ep['endpoint_id']}", headers=other)).status_code == 404
    assert (await client.delete(f"{hooks}/{ep['endpoint_id']}", headers=admin)).status_code == 200
    assert (await client.delete(f"{hooks}/{ep['endpoint_id']}", headers=admin)).status_code == 404
    assert (await client.get(hooks, headers=admin)).json() == []

    events = f"/v1/orgs/{org}/events"
    ok = {"group": "g", "consumer": "c"}
    assert (await client.get(events, params=ok, headers=hr)).status_code == 200
    assert (await client.get(events, params=ok, headers=writer)).status_code == 403
    assert (await client.get(events, params=ok, headers=other)).status_code == 404
    r = await client.get(events, params={"group": "bad group", "consumer": "c"}, headers=hr)
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "group"
    assert (await client.get(events, params={"consumer": "c"}, headers=hr)).status_code == 400
    r = await client.post(f"{events}/ack", json={"group": "g", "ids": ["x"]}, headers=hr)
    assert r.status_code == 400
    r = await client.post(f"{events}/ack", json={"group": "nogroup", "ids": ["1-0"]}, headers=hr)
    assert r.status_code == 404
