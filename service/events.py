"""Events for downstream tools: signed webhooks with retries, and a pullable Redis Stream.

Events: ``calibration.completed`` (a run finished: ``status`` done or failed),
``session.locked`` and ``scores.final`` (a session locked its scope's final scores).

Life of an event::

    emit ──> XADD okrcal:{org}:events            pull consumers read it with a group
         └─> per subscribed webhook endpoint: XADD okrcal:{queue}:webhooks (a job)
    WebhookWorker (XREADGROUP, never on a request's path) ──> POST to the endpoint's URL
         2xx ──> delivery logged, job acknowledged
         else ──> delivery logged; retried after backoff·2^(attempt−1) (zset of due jobs),
                  up to max_attempts (settings ``webhook_backoff_seconds`` and
                  ``webhook_attempts``); a job of a dead worker is reclaimed (XAUTOCLAIM)

Signing. Each delivery carries::

    X-Okrcal-Event:      calibration.completed
    X-Okrcal-Delivery:   <event id>.<endpoint id>   (same on every retry: deduplicate on it)
    X-Okrcal-Timestamp:  <unix seconds when this attempt was sent>
    X-Okrcal-Signature:  v1=<hex HMAC-SHA256(secret, "<timestamp>." + raw body)>

To verify: recompute the HMAC over the timestamp, a dot and the raw body bytes
with the endpoint's secret (shown once, when the endpoint was registered),
compare in constant time, and reject timestamps older than a few minutes
(replays). :func:`verify_signature` does exactly that.

Deliveries go only to the URL registered for the endpoint (http or https; redirects
are not followed).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import anyio
import httpx
import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import keys as K  # noqa: N812 - read as "keys"
from service.audit import redis_of
from service.auth import SCOPE_OPT
from service.problems import ProblemError
from service.schemas import FieldProblem
from service.settings import Settings
from service.store import Store
from service.streams import read_stream

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "AckIn",
    "Delivery",
    "Event",
    "EventType",
    "EventsController",
    "WebhookCreated",
    "WebhookIn",
    "WebhookOut",
    "WebhookWorker",
    "WebhooksController",
    "emit",
    "emit_run_completed",
    "sign",
    "verify_signature",
]

_log = logging.getLogger("okrcal.events")

EventType = Literal["calibration.completed", "session.locked", "scores.final"]
EVENT_TYPES: tuple[str, ...] = ("calibration.completed", "session.locked", "scores.final")
EVENT_HEADER = "X-Okrcal-Event"
DELIVERY_HEADER = "X-Okrcal-Delivery"
TIMESTAMP_HEADER = "X-Okrcal-Timestamp"
SIGNATURE_HEADER = "X-Okrcal-Signature"
#: Events kept for pull consumers (approximate trimming; the audit log is never trimmed).
EVENTS_KEPT = 100_000
DELIVERIES_KEPT = 100_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# --- signing --------------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value of ``body`` sent at ``timestamp``.

    >>> sign("s3cret", 1700000000, b'{"a":1}')[:10]
    'v1=1698a50'
    """
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    signature: str,
    body: bytes,
    *,
    now: float,
    tolerance: float = 300.0,
) -> bool:
    """True when ``signature`` signs ``body`` at ``timestamp``, no more than ``tolerance`` s ago.

    >>> body = b"{}"
    >>> verify_signature("k", "100", sign("k", 100, body), body, now=150.0)
    True
    >>> verify_signature("k", "100", sign("k", 100, body), body, now=1000.0)
    False
    """
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


# --- records --------------------------------------------------------------------------------


class WebhookIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A webhook endpoint to register: URL (http/https) and the events it wants."""

    url: str
    events: list[EventType] = msgspec.field(default_factory=lambda: list(EVENT_TYPES))  # type: ignore[arg-type]
    description: str | None = None


class _Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    endpoint_id: str
    url: str
    events: list[str]
    description: str | None
    secret: str
    created_us: int


class WebhookOut(msgspec.Struct, frozen=True, kw_only=True):
    """A registered endpoint (never its secret)."""

    endpoint_id: str
    url: str
    events: list[str]
    description: str | None
    created_at: datetime


class WebhookCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A new endpoint; ``secret`` signs its deliveries and is shown this once."""

    secret: str
    endpoint: WebhookOut


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """An event as delivered and as read from the stream."""

    id: str
    type: str
    org: str
    created_at: datetime
    data: dict[str, Any]


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One delivery attempt from the log."""

    id: str
    delivery_id: str
    endpoint_id: str
    event_id: str
    event_type: str
    url: str
    attempt: int
    at: datetime
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    next_attempt_at: datetime | None


class EventsPage(msgspec.Struct, frozen=True, kw_only=True):
    """Events read for one consumer of a group; acknowledge their ids when processed."""

    group: str
    consumer: str
    events: list[Event]


class AckIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Event ids a consumer group has processed."""

    group: str
    ids: list[str]


class AckOut(msgspec.Struct, frozen=True, kw_only=True):
    """How many of the ids were pending and are now acknowledged."""

    acknowledged: int


_endpoint_decoder = msgspec.json.Decoder(_Endpoint)
_encode = msgspec.json.Encoder().encode


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _dt(us: int | float) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


def _endpoint_out(ep: _Endpoint) -> WebhookOut:
    return WebhookOut(
        endpoint_id=ep.endpoint_id,
        url=ep.url,
        events=ep.events,
        description=ep.description,
        created_at=_dt(ep.created_us),
    )


def _event(org: str, entry_id: bytes | str, raw: Mapping[bytes, bytes]) -> Event:
    f = {_s(k): _s(v) for k, v in raw.items()}
    return Event(
        id=_s(entry_id),
        type=f.get("type", ""),
        org=org,
        created_at=_dt(int(f.get("at_us", "0"))),
        data=msgspec.json.decode(f.get("data", "{}")),
    )


# --- emitting -------------------------------------------------------------------------------


async def emit(store: Store, org: str, kind: EventType, data: Mapping[str, Any]) -> str:
    """Append an event to the organisation's stream and queue a delivery per subscribed endpoint.

    Returns the event id. Never waits for a delivery.
    """
    client = redis_of(store)
    okeys = K.OrgKeys(org)
    fields = {
        "type": kind,
        "at_us": str(time.time_ns() // 1000),
        "data": _encode(dict(data)).decode(),
    }
    event_id = _s(await client.xadd(okeys.events, fields, maxlen=EVENTS_KEPT, approximate=True))
    endpoints = await client.hvals(okeys.webhooks)
    for raw in endpoints:
        ep = _endpoint_decoder.decode(raw)
        if kind in ep.events:
            await client.xadd(
                K.WEBHOOK_STREAM,
                {"org": org, "endpoint_id": ep.endpoint_id, "event_id": event_id, "attempt": "1"},
            )
    return event_id


async def emit_run_completed(
    store: Store, org: str, cycle: str, run_id: str, fields: Mapping[str, str]
) -> None:
    """``calibration.completed`` for a finished run; a failure to emit is logged, not raised.

    Called by the run worker after the run is recorded: the run is done whatever
    happens to its event.
    """
    data: dict[str, Any] = {"cycle": cycle, "run_id": run_id, "status": fields.get("status")}
    for name in ("input_hash", "model_version", "error"):
        if fields.get(name):
            data[name] = fields[name]
    for name in ("n_grades", "n_krs", "n_graders"):
        if fields.get(name):
            data[name] = int(fields[name])
    try:
        await emit(store, org, "calibration.completed", data)
    except Exception:  # the run itself is recorded; its event is best effort
        _log.warning("could not emit calibration.completed for run %s", run_id, exc_info=True)


# --- delivering -----------------------------------------------------------------------------


class WebhookWorker:
    """Delivers queued webhook jobs until ``stop``; several may run (one consumer group)."""

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        max_attempts: int | None = None,
        backoff_seconds: float | None = None,
        timeout_seconds: float = 10.0,
        reclaim_after_seconds: float = 60.0,
        name: str | None = None,
    ) -> None:
        """Attempts and backoff come from ``settings`` (``OKRCAL_WEBHOOK_ATTEMPTS``,
        ``OKRCAL_WEBHOOK_BACKOFF``) unless given here.

        Without ``settings`` they are read from the environment: they have no command-line
        flags, so that gives the values the service's own settings hold.
        """
        if max_attempts is None or backoff_seconds is None:
            settings = settings or Settings.from_env()
            max_attempts = settings.webhook_attempts if max_attempts is None else max_attempts
            if backoff_seconds is None:
                backoff_seconds = settings.webhook_backoff_seconds
        if max_attempts < 1 or backoff_seconds <= 0 or timeout_seconds <= 0:
            raise ValueError("max_attempts >= 1, backoff_seconds > 0 and timeout_seconds > 0")
        self.store = store
        self.max_attempts = max_attempts
        self.backoff = backoff_seconds
        self.timeout = timeout_seconds
        self.reclaim_ms = int(reclaim_after_seconds * 1000)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.delivered = 0

    async def run(self, stop: anyio.Event) -> None:
        """Deliver until ``stop`` is set; a delivery cut short stays pending and is reclaimed."""
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await stop.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            async with httpx.AsyncClient(
                timeout=self.timeout, follow_redirects=False, trust_env=False
            ) as http:
                await self._loop(http)

    async def _loop(self, http: httpx.AsyncClient) -> None:
        ready = False
        client = redis_of(self.store)
        while True:
            try:
                if not ready:
                    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
                        await client.xgroup_create(
                            K.WEBHOOK_STREAM, K.WEBHOOK_GROUP, id="0", mkstream=True
                        )
                    ready = True
                await self._promote_due(client)
                jobs = await self._reclaim(client)
                if not jobs:
                    jobs = await self._read(client)
                for message_id, job in jobs:
                    await self.process(http, message_id, job)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                _log.warning("webhook worker %s: redis unavailable (%s)", self.name, exc)
                ready = False
                await anyio.sleep(1.0)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                ready = False

    async def _read(self, client: Any) -> list[tuple[str, dict[str, str]]]:
        streams = await client.xreadgroup(
            K.WEBHOOK_GROUP, self.name, {K.WEBHOOK_STREAM: ">"}, count=10, block=200
        )
        return [
            (_s(mid), {_s(k): _s(v) for k, v in fields.items()})
            for _, entries in streams or []
            for mid, fields in entries
        ]

    async def _reclaim(self, client: Any) -> list[tuple[str, dict[str, str]]]:
        reply = await client.xautoclaim(
            K.WEBHOOK_STREAM, K.WEBHOOK_GROUP, self.name, min_idle_time=self.reclaim_ms, count=10
        )
        return [
            (_s(mid), {_s(k): _s(v) for k, v in fields.items()})
            for mid, fields in reply[1]
            if fields
        ]

    async def _promote_due(self, client: Any) -> None:
        # A retry waits in a zset until due; whichever worker removes it re-queues it,
        # so two workers never both send the same retry.
        due = await client.zrangebyscore(K.WEBHOOK_RETRY, "-inf", time.time(), start=0, num=50)
        for member in due:
            if await client.zrem(K.WEBHOOK_RETRY, member):
                await client.xadd(K.WEBHOOK_STREAM, msgspec.json.decode(member))

    async def process(
        self, http: httpx.AsyncClient, message_id: str, job: Mapping[str, str]
    ) -> None:
        """Make one delivery attempt, log it, schedule a retry if it failed, acknowledge."""
        client = redis_of(self.store)
        org = job.get("org", "")
        endpoint_id = job.get("endpoint_id", "")
        event_id = job.get("event_id", "")
        attempt = int(job.get("attempt", "1") or 1)
        okeys = K.OrgKeys(org) if K.ORG_PATTERN.match(org) else None
        raw_ep = await client.hget(okeys.webhooks, endpoint_id) if okeys else None
        entries = await client.xrange(okeys.events, event_id, event_id) if okeys else []
        started = time.perf_counter()
        ok = False
        status: int | None = None
        error: str | None = None
        url = ""
        event_type = ""
        retry = False
        if raw_ep is None or okeys is None:
            error = "endpoint no longer registered; not delivered"
        elif not entries:
            error = "event no longer in the stream; not delivered"
        else:
            ep = _endpoint_decoder.decode(raw_ep)
            url = ep.url
            event = _event(org, entries[0][0], entries[0][1])
            event_type = event.type
            body = _encode(event)
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "okrcal-webhooks/1",
                EVENT_HEADER: event.type,
                DELIVERY_HEADER: f"{event_id}.{endpoint_id}",
                TIMESTAMP_HEADER: str(ts),
                SIGNATURE_HEADER: sign(ep.secret, ts, body),
            }
            try:
                response = await http.post(ep.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                status = response.status_code
                ok = 200 <= status < 300
                if not ok:
                    error = f"endpoint answered {status}"
            retry = not ok and attempt < self.max_attempts
        next_at: float | None = None
        if retry:
            next_at = time.time() + min(3600.0, self.backoff * 2 ** (attempt - 1))
            member = _encode({**job, "attempt": str(attempt + 1)})
            await client.zadd(K.WEBHOOK_RETRY, {member: next_at})
        elif not ok and url:
            error = f"{error}; gave up after {attempt} attempt(s)"
        if okeys is not None:
            record = {
                "delivery_id": f"{event_id}.{endpoint_id}",
                "endpoint_id": endpoint_id,
                "event_id": event_id,
                "event_type": event_type,
                "url": url,
                "attempt": str(attempt),
                "at_us": str(time.time_ns() // 1000),
                "ok": "1" if ok else "0",
                "status_code": "" if status is None else str(status),
                "error": error or "",
                "duration_ms": f"{1000 * (time.perf_counter() - started):.1f}",
                "next_attempt_at": "" if next_at is None else f"{next_at:.3f}",
            }
            await client.xadd(okeys.deliveries, record, maxlen=DELIVERIES_KEPT, approximate=True)
        async with client.pipeline(transaction=False) as pipe:
            pipe.xack(K.WEBHOOK_STREAM, K.WEBHOOK_GROUP, message_id)
            pipe.xdel(K.WEBHOOK_STREAM, message_id)
            await pipe.execute()
        if ok:
            self.delivered += 1


def _delivery(entry_id: bytes | str, raw: Mapping[bytes, bytes]) -> Delivery:
    f = {_s(k): _s(v) for k, v in raw.items()}
    nxt = f.get("next_attempt_at")
    return Delivery(
        id=_s(entry_id),
        delivery_id=f.get("delivery_id", ""),
        endpoint_id=f.get("endpoint_id", ""),
        event_id=f.get("event_id", ""),
        event_type=f.get("event_type", ""),
        url=f.get("url", ""),
        attempt=int(f.get("attempt", "0")),
        at=_dt(int(f.get("at_us", "0"))),
        ok=f.get("ok") == "1",
        status_code=int(f["status_code"]) if f.get("status_code") else None,
        error=f.get("error") or None,
        duration_ms=float(f.get("duration_ms", "0")),
        next_attempt_at=datetime.fromtimestamp(float(nxt), UTC) if nxt else None,
    )


# --- routes ---------------------------------------------------------------------------------


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    problem = None
    if len(url) > 2000:
        problem = "is longer than 2000 characters"
    elif parts.scheme not in ("http", "https"):
        problem = "must be an http or https URL"
    elif not parts.hostname:
        problem = "has no host"
    elif parts.username or parts.password:
        problem = "must not carry credentials; the signature authenticates deliveries"
    if problem:
        raise ProblemError(
            400, f"webhook url {problem}", errors=[FieldProblem(problem=problem, field="url")]
        )
    return url


def _check_name(value: str, field: str) -> str:
    if not _NAME.match(value):
        raise ProblemError(
            400,
            f"invalid {field} {value!r}",
            errors=[FieldProblem(problem="use 1-64 of A-Z a-z 0-9 . _ -", field=field)],
        )
    return value


class WebhooksController(Controller):
    """Webhook endpoints of the organisation and their delivery log (admin scope)."""

    path = "/v1/orgs/{org:str}/webhooks"
    opt = {SCOPE_OPT: "admin"}  # noqa: RUF012 - litestar merges this dict into each route
    tags = ("events",)

    @post("/", status_code=201)
    async def register(
        self, store: NamedDependency[Store], org: FromPath[str], data: JSONBody[WebhookIn]
    ) -> WebhookCreated:
        """Register an endpoint; the signing secret is in this response only."""
        _check_url(data.url)
        if not data.events:
            raise ProblemError(
                400,
                "subscribe to at least one event",
                errors=[FieldProblem(problem=f"one of {', '.join(EVENT_TYPES)}", field="events")],
            )
        if data.description is not None and len(data.description) > 500:
            raise ProblemError(
                400,
                "description too long",
                errors=[FieldProblem(problem="at most 500 characters", field="description")],
            )
        ep = _Endpoint(
            endpoint_id=secrets.token_hex(6),
            url=data.url,
            events=list(dict.fromkeys(data.events)),
            description=data.description,
            secret="whsec_" + secrets.token_urlsafe(32),
            created_us=time.time_ns() // 1000,
        )
        await redis_of(store).hset(K.OrgKeys(org).webhooks, ep.endpoint_id, _encode(ep))
        return WebhookCreated(secret=ep.secret, endpoint=_endpoint_out(ep))

    @get("/")
    async def list_endpoints(
        self, store: NamedDependency[Store], org: FromPath[str]
    ) -> list[WebhookOut]:
        """Every registered endpoint (secrets are never shown again)."""
        raw = await redis_of(store).hvals(K.OrgKeys(org).webhooks)
        eps = sorted((_endpoint_decoder.decode(r) for r in raw), key=lambda e: e.created_us)
        return [_endpoint_out(e) for e in eps]

    @delete("/{endpoint_id:str}", status_code=200)
    async def remove(
        self, store: NamedDependency[Store], org: FromPath[str], endpoint_id: FromPath[str]
    ) -> WebhookOut:
        """Remove an endpoint; queued deliveries to it are dropped (and logged as such)."""
        client = redis_of(store)
        key = K.OrgKeys(org).webhooks
        raw = await client.hget(key, endpoint_id)
        if raw is None:
            raise ProblemError(404, f"no webhook endpoint {endpoint_id!r}")
        await client.hdel(key, endpoint_id)
        return _endpoint_out(_endpoint_decoder.decode(raw))

    @get("/deliveries")
    async def deliveries(
        self,
        store: NamedDependency[Store],
        org: FromPath[str],
        endpoint_id: Annotated[str | None, QueryParameter(description="one endpoint")] = None,
        event_id: Annotated[str | None, QueryParameter(description="one event")] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[Delivery]:
        """The delivery log, newest first: every attempt with its status, error and next try."""

        def keep(d: Delivery) -> bool:
            return (endpoint_id is None or d.endpoint_id == endpoint_id) and (
                event_id is None or d.event_id == event_id
            )

        key = K.OrgKeys(org).deliveries
        client = redis_of(store)
        return await read_stream(
            client, key, _delivery, keep, limit=limit, newest_first=True, chunk=500
        )


class EventsController(Controller):
    """The organisation's events for consumers that pull, through Redis consumer groups."""

    path = "/v1/orgs/{org:str}/events"
    opt = {SCOPE_OPT: ("scores:read", "hr:read")}  # noqa: RUF012 - merged into each route
    tags = ("events",)

    @get("/")
    async def read(
        self,
        store: NamedDependency[Store],
        org: FromPath[str],
        group: Annotated[str, QueryParameter(description="consumer group (made on first use)")],
        consumer: Annotated[str, QueryParameter(description="this consumer's name")],
        count: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        block_ms: Annotated[int, QueryParameter(ge=0, le=10_000)] = 0,
        pending: Annotated[
            bool, QueryParameter(description="re-read this consumer's unacknowledged events")
        ] = False,
    ) -> EventsPage:
        """Events not yet delivered to ``group`` (a new group starts at the oldest kept event).

        Acknowledge processed ids with ``POST .../events/ack``; until then they stay
        pending for this consumer (``pending=true`` reads them again).
        """
        _check_name(group, "group")
        _check_name(consumer, "consumer")
        client = redis_of(store)
        key = K.OrgKeys(org).events
        with contextlib.suppress(ResponseError):  # BUSYGROUP: the group exists
            await client.xgroup_create(key, group, id="0", mkstream=True)
        streams = await client.xreadgroup(
            group,
            consumer,
            {key: "0" if pending else ">"},
            count=count,
            block=None if pending or block_ms == 0 else block_ms,
        )
        events = [
            _event(org, mid, fields)
            for _, entries in streams or []
            for mid, fields in entries
            if fields
        ]
        return EventsPage(group=group, consumer=consumer, events=events)

    @post("/ack", status_code=200)
    async def ack(
        self, store: NamedDependency[Store], org: FromPath[str], data: JSONBody[AckIn]
    ) -> AckOut:
        """Acknowledge processed events for a group."""
        _check_name(data.group, "group")
        if not data.ids or len(data.ids) > 1000:
            raise ProblemError(
                400, "give 1 to 1000 ids", errors=[FieldProblem(problem="1-1000 ids", field="ids")]
            )
        bad = [i for i in data.ids if not re.fullmatch(r"\d+-\d+", i)]
        if bad:
            raise ProblemError(
                400,
                f"invalid event id {bad[0]!r}",
                errors=[
                    FieldProblem(problem="an event id looks like 1700000000000-0", field="ids")
                ],
            )
        client = redis_of(store)
        key = K.OrgKeys(org).events
        try:
            groups = await client.xinfo_groups(key)
        except ResponseError:  # no stream yet: no group either
            groups = []
        names = {_s(g.get("name", b"")) for g in groups}
        if data.group not in names:
            raise ProblemError(404, f"no consumer group {data.group!r}; read events to create it")
        return AckOut(acknowledged=int(await client.xack(key, data.group, *data.ids)))
