"""Storage behind a small port: the :class:`Store` protocol and its Redis adapter.

The HTTP layer and the workers talk to :class:`Store` only. :class:`RedisStore`
implements it on redis.asyncio; every key name comes from :mod:`service.keys`.

Writes that must be all-or-nothing, or that read before they write, are Lua
scripts (Redis runs a script atomically, so concurrent writers cannot interleave
inside one and nothing is ever half-applied). They are registered once, at
construction; redis-py sends them by SHA and reloads them after a Redis restart.

The one command every request sends (the key check, with the hot owner read) goes
over a pipelined connection of the store's own per event loop (:class:`_Pipe`),
not through redis-py's pool. Every key a script touches is passed in ``KEYS`` and
shares the organisation's ``{org}`` tag, so each script runs on one cluster slot.
"""

from __future__ import annotations

import asyncio
import hmac
import ssl
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, cast, runtime_checkable

import hiredis
import msgspec
import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import keys as K  # noqa: N812 - short, read as "keys"

__all__ = [
    "SCRIPTS",
    "ApiKeyRecord",
    "IdempotencyConflictError",
    "Item",
    "ItemKind",
    "KeyCheck",
    "PublishedItem",
    "PublishedRead",
    "RedisStore",
    "ResultPart",
    "Store",
    "UpsertCounts",
]

ItemKind = Literal["grades", "krs"]
ResultPart = Literal["owners", "krs", "graders"]
#: One item of the published run to read along with a key check: cycle, part, item key.
PublishedRead = tuple[str, ResultPart, str]
#: What a read of the published run gives: (run id, attempt) or None when nothing is
#: published, whether the cycle is locked, and the item (None when the run lacks it).
PublishedItem = tuple[tuple[str, int] | None, bool, bytes | None]


class ApiKeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An API key as stored: never the key, only the SHA-256 of it."""

    key_id: str
    org: str
    key_hash: str
    scopes: list[str]
    name: str | None = None
    rate_limit: int | None = None
    created_us: int = 0
    revoked_us: int | None = None


class KeyCheck(msgspec.Struct, frozen=True):
    """A request's key check: the key's record and this second's request count.

    ``record`` is None when the organisation has no such key, the key is revoked or
    its secret does not match; ``read`` is the item asked for with the check.
    """

    record: ApiKeyRecord | None
    count: int
    read: PublishedItem | None = None


class UpsertCounts(msgspec.Struct, frozen=True, kw_only=True):
    """What one bulk upsert changed; ``replayed`` when answered from an Idempotency-Key."""

    created: int
    updated: int
    unchanged: int
    replayed: bool = False


class Item(msgspec.Struct, frozen=True, kw_only=True):
    """One stored grade or KR: its natural key, encoded value, version and change time (µs)."""

    key: str
    value: bytes
    version: int
    updated_us: int


class IdempotencyConflictError(Exception):
    """An Idempotency-Key was used before with a different request body."""


@runtime_checkable
class Store(Protocol):
    """Everything the service stores. Methods raise redis errors when the store is down."""

    async def ping(self) -> bool: ...
    async def close(self) -> None: ...

    # API keys
    async def authorize(
        self,
        org: str,
        key_id: str,
        key_hash: str,
        second: int,
        read: PublishedRead | None = None,
    ) -> KeyCheck: ...
    async def authenticate(self, key_hash: str, second: int) -> tuple[ApiKeyRecord | None, int]: ...
    async def add_api_key(self, record: ApiKeyRecord) -> None: ...
    async def list_api_keys(self, org: str) -> list[ApiKeyRecord]: ...
    async def revoke_api_key(self, org: str, key_id: str, now_us: int) -> ApiKeyRecord | None: ...

    # cycles
    async def cycle_scale(self, org: str, cycle: str, requested: str | None) -> str: ...
    async def cycle_locked(self, org: str, cycle: str) -> bool: ...

    # grades and KRs
    async def upsert(
        self,
        org: str,
        cycle: str,
        kind: ItemKind,
        items: Sequence[tuple[str, bytes]],
        now_us: int,
        idempotency: tuple[str, str] | None = None,
        idempotency_ttl: int = 86400,
    ) -> UpsertCounts: ...
    async def get_item(self, org: str, cycle: str, kind: ItemKind, key: str) -> Item | None: ...
    async def item_history(self, org: str, cycle: str, kind: ItemKind, key: str) -> list[Item]: ...
    async def page_items(
        self, org: str, cycle: str, kind: ItemKind, after_us: int, limit: int
    ) -> list[Item]: ...
    async def all_items(self, org: str, cycle: str, kind: ItemKind) -> dict[str, bytes]: ...

    # runs
    async def create_run(
        self, org: str, cycle: str, run_id: str, fields: Mapping[str, str]
    ) -> None: ...
    async def get_run(self, org: str, cycle: str, run_id: str) -> dict[str, str] | None: ...
    async def list_runs(self, org: str, cycle: str, limit: int) -> list[dict[str, str]]: ...
    async def claim_run(
        self,
        org: str,
        cycle: str,
        run_id: str,
        worker: str,
        now: float,
        lease: float,
        max_attempts: int,
    ) -> int: ...
    async def renew_run(
        self, org: str, cycle: str, run_id: str, worker: str, attempt: int, until: float
    ) -> bool: ...
    async def save_results(
        self,
        org: str,
        cycle: str,
        run_id: str,
        attempt: int,
        fit: bytes,
        parts: Mapping[ResultPart, Sequence[tuple[str, bytes]]],
    ) -> None: ...
    async def finish_run(
        self,
        org: str,
        cycle: str,
        run_id: str,
        worker: str,
        attempt: int,
        fields: Mapping[str, str],
    ) -> bool: ...
    async def publish_run(self, org: str, cycle: str, run_id: str) -> str: ...
    async def published_run(self, org: str, cycle: str) -> tuple[tuple[str, int] | None, bool]: ...
    async def published_item(
        self, org: str, cycle: str, part: ResultPart, key: str
    ) -> PublishedItem: ...
    async def run_fit(self, org: str, cycle: str, run_id: str, attempt: int) -> bytes | None: ...
    async def result_item(
        self, org: str, cycle: str, run_id: str, attempt: int, part: ResultPart, key: str
    ) -> bytes | None: ...
    async def result_page(
        self,
        org: str,
        cycle: str,
        run_id: str,
        attempt: int,
        part: ResultPart,
        after: str | None,
        limit: int,
    ) -> list[tuple[str, bytes]]: ...

    # the run queue
    async def ensure_queue(self) -> None: ...
    async def enqueue_run(self, org: str, cycle: str, run_id: str) -> str: ...
    async def read_queue(
        self, consumer: str, block_ms: int
    ) -> list[tuple[str, dict[str, str]]]: ...
    async def reclaim_queue(
        self, consumer: str, min_idle_ms: int
    ) -> list[tuple[str, dict[str, str]]]: ...
    async def touch_queue(self, consumer: str, message_id: str) -> None: ...
    async def ack_queue(self, message_id: str) -> None: ...

    # anchor catalogues
    async def get_catalogue(
        self, org: str, revision: int | None = None
    ) -> tuple[int, str] | None: ...
    async def put_catalogue(self, org: str, text: str) -> int: ...


# Bulk upsert of grades or KRs, atomic so a request is never half-applied and two
# writers never lose each other's rows. Re-sending an identical value is a no-op
# (its version and change time stay); a changed value moves the old one to the
# history hash with its time. Change times are strictly increasing microseconds
# per organisation, so they double as the cursor of ``updated_after`` reads.
# The Idempotency-Key check and the remembered answer live in the same script, so
# two concurrent requests with one key apply once.
# KEYS: data, updated, versions, history, clock, idempotency
# ARGV: now_us, use_idempotency, request_hash, ttl, then key/value pairs
_UPSERT = """
local use_idem = ARGV[2] == '1'
if use_idem then
  local prev = redis.call('GET', KEYS[6])
  if prev then return {'replay', prev} end
end
local t = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[5]) or '0')
if t <= last then t = last end
local created, updated, unchanged = 0, 0, 0
local n = (#ARGV - 4) / 2
-- Reads and writes go in chunks (HMGET, HSET, ZADD with many fields) rather than
-- one call per row: the per-call overhead is most of a script's time.
for first = 0, n - 1, 500 do
  local last_row = math.min(first + 500, n) - 1
  local fields = {}
  for i = first, last_row do fields[#fields + 1] = ARGV[5 + 2 * i] end
  local olds = redis.call('HMGET', KEYS[1], unpack(fields))
  local hset, zadd = {}, {}
  for j, f in ipairs(fields) do
    local v = ARGV[6 + 2 * (first + j - 1)]
    local old = olds[j]
    if old == v then
      unchanged = unchanged + 1
    else
      t = t + 1
      if old then
        -- versions counts changes, so the value being replaced was version n
        local oldt = redis.call('ZSCORE', KEYS[2], f)
        local changes = redis.call('HINCRBY', KEYS[3], f, 1)
        redis.call('HSET', KEYS[4], f .. '\\31' .. changes, oldt .. ':' .. old)
        updated = updated + 1
      else
        created = created + 1
      end
      hset[#hset + 1] = f
      hset[#hset + 1] = v
      zadd[#zadd + 1] = string.format('%.0f', t)
      zadd[#zadd + 1] = f
    end
  end
  if #hset > 0 then
    redis.call('HSET', KEYS[1], unpack(hset))
    redis.call('ZADD', KEYS[2], unpack(zadd))
  end
end
if created + updated > 0 then redis.call('SET', KEYS[5], string.format('%.0f', t)) end
local res = created .. ':' .. updated .. ':' .. unchanged
if use_idem then redis.call('SET', KEYS[6], ARGV[3] .. '|' .. res, 'EX', ARGV[4]) end
return {'done', res}
"""

# Claiming a run checks and sets its status in one step, so two workers that got
# the same stream entry (after a reclaim) never both run it, and a run whose
# attempts are used up is marked failed instead of being retried for ever.
# KEYS: run; ARGV: worker, now, lease seconds, max attempts
_CLAIM = """
local st = redis.call('HMGET', KEYS[1], 'status', 'lease_until', 'attempts')
if not st[1] then return 0 end
if st[1] == 'done' or st[1] == 'failed' then return 0 end
local now = tonumber(ARGV[2])
if st[1] == 'running' and tonumber(st[2] or '0') > now then return -1 end
local attempts = tonumber(st[3] or '0')
if attempts >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[2], 'worker', '',
    'error', 'gave up after ' .. attempts .. ' attempt(s): the worker stopped before finishing')
  return 0
end
attempts = attempts + 1
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'attempts', attempts,
  'lease_until', string.format('%.3f', now + tonumber(ARGV[3])), 'started_at', ARGV[2])
return attempts
"""

# Only the worker holding the current attempt may renew its lease or finish the
# run: a worker that lost its lease (paused too long) cannot overwrite the run.
# KEYS: run; ARGV: worker, attempt, then field/value pairs to set
_IF_OWNER = """
local st = redis.call('HMGET', KEYS[1], 'status', 'worker', 'attempts')
if st[1] ~= 'running' or st[2] ~= ARGV[1] or st[3] ~= ARGV[2] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Publishing points the cycle at a finished run; checking the status and moving
# the pointer in one step keeps an unfinished run from ever being published.
# KEYS: run, published; ARGV: run id
_PUBLISH = """
local st = redis.call('HMGET', KEYS[1], 'status', 'result_attempt')
if not st[1] then return 'missing' end
if st[1] ~= 'done' then return st[1] end
redis.call('SET', KEYS[2], ARGV[1] .. ':' .. st[2])
return 'ok'
"""

# A new catalogue revision gets the next number and becomes current atomically.
# KEYS: catalogue hash; ARGV: TOML text
_PUT_CATALOGUE = """
local rev = redis.call('HINCRBY', KEYS[1], 'latest', 1)
redis.call('HSET', KEYS[1], 'r' .. rev, ARGV[1])
return rev
"""

# A request's key check in one round trip, in the slot of the organisation named by
# the request path: the key's record (by the key id the key carries; the caller
# compares the hash and the revocation), and this second's request count. EXPIRE
# only on the first request of a second, so a busy key costs two calls.
# Given three more keys it also reads one item of the published run, so the hot
# GET needs no second round trip: the results key is that of the run the caller
# expects to be published (ARGV[2]); if the pointer names another run (published
# since), the item is not read and the caller asks again with the key of that run.
# Every key is declared, and all share the {org} tag (one cluster slot).
# The counter lives for this second only: it is kept out of the append-only file and
# the replicas (effects replication, the default since Redis 5), so a GET writes
# nothing to disk (with appendfsync always, one fsync fewer per batch of requests);
# after a restart or a failover the counts of the current second start again.
# KEYS: api keys hash, rate counter[, published pointer, cycle, expected results hash]
# ARGV: key id[, expected pointer "run:attempt", item key]
_AUTHORIZE = """
redis.replicate_commands()
redis.set_repl(redis.REPL_NONE)
local rec = redis.call('HGET', KEYS[1], ARGV[1])
if not rec then return {false, 0} end
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('EXPIRE', KEYS[2], 2) end
if #KEYS == 2 then return {rec, n} end
local p = redis.call('GET', KEYS[3])
local locked = redis.call('HGET', KEYS[4], 'locked')
local item = false
if p and p == ARGV[2] then item = redis.call('HGET', KEYS[5], ARGV[3]) end
return {rec, n, p, locked, item}
"""

# One item of the published run, without a key check (see _AUTHORIZE for the
# expected-pointer protocol, which keeps every key declared).
# KEYS: published pointer, cycle, expected results hash; ARGV: expected pointer, item key
_READ_PUBLISHED = """
local p = redis.call('GET', KEYS[1])
local locked = redis.call('HGET', KEYS[2], 'locked')
local item = false
if p and p == ARGV[1] then item = redis.call('HGET', KEYS[3], ARGV[2]) end
return {p, locked, item}
"""

#: Every Lua script of the store, for the test that checks they touch declared keys only.
SCRIPTS: dict[str, str] = {
    "upsert": _UPSERT,
    "claim": _CLAIM,
    "if_owner": _IF_OWNER,
    "publish": _PUBLISH,
    "put_catalogue": _PUT_CATALOGUE,
    "authorize": _AUTHORIZE,
    "read_published": _READ_PUBLISHED,
}

_record_decoder = msgspec.msgpack.Decoder(ApiKeyRecord)
_encode = msgspec.msgpack.Encoder().encode


def _resp(args: Sequence[bytes | str | int]) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    # in C: about 4x faster than packing here (the stub types the tuple as one item)
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    return packed


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pointer(raw: bytes | str) -> tuple[str, int]:
    """A published pointer ``run_id:attempt`` as (run id, attempt)."""
    run_id, _, attempt = _s(raw).rpartition(":")
    return run_id, int(attempt)


class _Pipe(asyncio.Protocol):
    """One connection carrying the per-request commands of an event loop, pipelined.

    Every request sends one command (a key check, or a key check and a read). Through
    redis-py each of them would check a connection out of the pool (a lock, metrics
    hooks, a readiness probe of the socket), send it in a task of its own when
    ``socket_timeout`` is set, and read the reply through a stream reader: together
    more CPU than Redis takes to answer. Here concurrent requests write their commands
    to one connection and wait on a future each; replies come back in the order the
    commands went out (Redis answers each connection in order), parsed by hiredis as
    they arrive, several per read. A request that gives up (client gone) leaves its
    future cancelled and its reply is dropped when it comes.

    The bound on a Redis that stops answering is one watchdog per connection rather
    than a timer per request: the oldest command waiting is the first to be answered,
    so when it is older than ``timeout`` every command waiting fails with a timeout
    and the connection is closed (the next request opens another).
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.waiting: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self.watchdog: asyncio.TimerHandle | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                _, waiter = self.waiting.popleft()  # IndexError: a reply nobody asked for
                if not waiter.done():
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError):
            self.close(RedisConnectionError("Redis sent what was not asked for"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(RedisConnectionError(f"Redis connection lost: {exc or 'EOF'}"))

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Write one packed command; the future gets its reply."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self.waiting.append((loop.time() + self.timeout, waiter))
        self.transport.write(packed)
        if self.watchdog is None:
            self.watchdog = loop.call_later(min(1.0, self.timeout / 4), self._watch)
        return waiter

    def _watch(self) -> None:
        self.watchdog = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        if self.waiting[0][0] <= loop.time():
            self.close(RedisTimeoutError(f"Redis did not answer within {self.timeout:g} s"))
        else:
            self.watchdog = loop.call_later(min(1.0, self.timeout / 4), self._watch)

    def close(self, error: Exception) -> None:
        """Fail every command waiting with ``error`` and close the connection."""
        self.lost = True
        while self.waiting:
            _, waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if self.transport is not None:
            self.transport.close()


def _results_key(okeys: K.OrgKeys, cycle: str, pointer: str, part: ResultPart) -> str:
    """The results hash of the run ``pointer`` names (a key no run has when it is empty)."""
    run_id, attempt = _pointer(pointer) if pointer else ("-", 0)
    return okeys.run_part(cycle, run_id, attempt, part)


class RedisStore:
    """The :class:`Store` on Redis (a single server, or a cluster thanks to the ``{org}`` tags)."""

    def __init__(self, url: str, *, max_connections: int = 256) -> None:
        """Connect lazily to ``url``; short timeouts so a dead Redis answers 503 quickly."""
        self.url = url
        self._options: dict[str, Any] = {
            "socket_timeout": 10.0,
            "socket_connect_timeout": 2.0,
            "health_check_interval": 30,
            "max_connections": max_connections,
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        }
        # One client per event loop: a connection belongs to the loop that opened it,
        # and a test client (or a portal thread) may run the app on another loop.
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        template = aioredis.Redis.from_url(url, **self._options)  # never connects itself
        self._upsert = template.register_script(_UPSERT)
        self._claim = template.register_script(_CLAIM)
        self._if_owner = template.register_script(_IF_OWNER)
        self._publish = template.register_script(_PUBLISH)
        self._put_catalogue = template.register_script(_PUT_CATALOGUE)
        self._authorize = template.register_script(_AUTHORIZE)
        self._read_published = template.register_script(_READ_PUBLISHED)
        #: Bound on one per-request round trip, and on connecting for it.
        self.request_timeout = float(self._options["socket_timeout"])
        self._connect_timeout = float(self._options["socket_connect_timeout"])
        # The per-request connection of each event loop, as the task that opens it.
        self._pipes: dict[asyncio.AbstractEventLoop, asyncio.Task[_Pipe]] = {}
        # The published pointer each (org, cycle) had when last read here: the hot read
        # names that run's results key up front (a declared key) and asks again only
        # if the pointer moved. A stale entry costs one round trip, never a wrong answer.
        self._published_seen: dict[tuple[str, str], str] = {}

    @property
    def redis(self) -> Any:
        """The client of the running event loop.

        redis-py types replies as ``bytes | str | Any`` whatever the connection decodes;
        this client never decodes (replies are bytes), and the public methods of the
        store give every value its precise type.
        """
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = aioredis.Redis.from_url(self.url, **self._options)
        return client

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        current = asyncio.get_running_loop()
        pipes, self._pipes = self._pipes, {}
        for loop, opening in pipes.items():
            if not opening.done():
                if not loop.is_closed():
                    loop.call_soon_threadsafe(opening.cancel)
            elif not opening.cancelled() and opening.exception() is None:
                pipe = opening.result()
                closed = RedisConnectionError("the store was closed")
                if loop is current:
                    pipe.close(closed)
                elif not loop.is_closed():
                    loop.call_soon_threadsafe(pipe.close, closed)
        clients, self._clients = self._clients, {}
        for loop, client in clients.items():
            if loop is current:
                await client.aclose()
            elif not loop.is_closed():
                asyncio.run_coroutine_threadsafe(client.aclose(), loop)

    async def _raw(self, *commands: Sequence[bytes | str | int]) -> list[Any]:
        """Send ``commands`` packed here, on one connection, and read their replies.

        For commands with tens of thousands of arguments (bulk upserts, saved results):
        redis-py packs each argument in Python, which costs more than Redis takes to
        execute them. Error replies raise; the connection is then dropped, not reused.
        """
        pool = self.redis.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(b"".join(_resp(c) for c in commands))
            return [await conn.read_response() for _ in commands]
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def _open_pipe(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        where = parse_url(self.url)

        def make() -> _Pipe:
            return _Pipe(self.request_timeout)

        try:
            async with asyncio.timeout(self._connect_timeout):
                if "path" in where:
                    _, pipe = await loop.create_unix_connection(make, where["path"])
                else:
                    tls = ssl.create_default_context() if self.url.startswith("rediss:") else None
                    _, pipe = await loop.create_connection(
                        make, where.get("host", "localhost"), where.get("port", 6379), ssl=tls
                    )
                setup: list[list[str]] = []
                if where.get("password"):
                    user = [where["username"]] if where.get("username") else []
                    setup.append(["AUTH", *user, where["password"]])
                if where.get("db"):
                    setup.append(["SELECT", str(where["db"])])
                for command in setup:
                    reply = await pipe.send(_resp(command))
                    if isinstance(reply, hiredis.ReplyError):
                        pipe.close(RedisConnectionError("setup refused"))
                        raise RedisConnectionError(f"Redis refused {command[0]}: {reply}")
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis at {self.url}: {exc}") from exc
        return pipe

    async def _pipe(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        opening = self._pipes.get(loop)
        if opening is None or (
            opening.done()
            and (opening.cancelled() or opening.exception() is not None or opening.result().lost)
        ):
            opening = self._pipes[loop] = loop.create_task(self._open_pipe())
        # shielded: a request that gives up does not stop the connecting others wait for
        return await asyncio.shield(opening)

    async def _request_call(self, script: Any, keys: Sequence[str], args: Sequence[str]) -> Any:
        """EVALSHA ``script`` on this loop's pipelined connection: one round trip, bounded.

        Raises redis ``ConnectionError`` or ``TimeoutError`` (answered 503) when Redis is
        down or stops answering within :attr:`request_timeout`.
        """
        packed = _resp(["EVALSHA", script.sha, len(keys), *keys, *args])
        for attempt in range(2):
            pipe = await self._pipe()
            try:
                reply = await pipe.send(packed)  # bounded by the pipe's watchdog
            except RedisConnectionError:
                if attempt:
                    raise
                continue  # closed while idle (Redis restarted): once more on a new connection
            if not isinstance(reply, hiredis.ReplyError):
                return reply
            if attempt or not str(reply).startswith("NOSCRIPT"):
                raise ResponseError(str(reply))
            await self.redis.script_load(script.script)  # Redis restarted or flushed scripts
        raise RedisConnectionError("Redis dropped the connection twice")

    # --- API keys -------------------------------------------------------------------------

    async def authorize(
        self,
        org: str,
        key_id: str,
        key_hash: str,
        second: int,
        read: PublishedRead | None = None,
    ) -> KeyCheck:
        """Check a key of ``org`` and count the request, in one round trip.

        With ``read``, also one item of the published run (still one round trip unless
        a run was published since this process last looked).
        """
        okeys = K.OrgKeys(org)
        # The counter is keyed by the hash: the key id alone does not spend the allowance.
        keys = [okeys.api_keys, okeys.rate_counter(key_hash, second)]
        args = [key_id]
        if read is not None:
            cycle, part, item = read
            seen = self._published_seen.get((org, cycle), "")
            keys += [
                okeys.published(cycle),
                okeys.cycle(cycle),
                _results_key(okeys, cycle, seen, part),
            ]
            args += [seen, item]
        reply = await self._request_call(self._authorize, keys, args)
        record = _record_decoder.decode(reply[0]) if reply[0] else None
        if record is not None and (
            record.revoked_us is not None
            or record.org != org
            or not hmac.compare_digest(record.key_hash, key_hash)
        ):
            record = None
        if read is None or record is None:
            return KeyCheck(record, int(reply[1]))
        cycle, part, item = read
        pointer, locked, value = reply[2], bool(reply[3]), reply[4]
        if pointer is None:
            return KeyCheck(record, int(reply[1]), (None, locked, None))
        if _s(pointer) != seen:  # published since: read the item of the run now published
            self._remember_published(org, cycle, _s(pointer))
            return KeyCheck(
                record, int(reply[1]), await self.published_item(org, cycle, part, item)
            )
        return KeyCheck(record, int(reply[1]), (_pointer(pointer), locked, value))

    async def authenticate(self, key_hash: str, second: int) -> tuple[ApiKeyRecord | None, int]:
        # The organisation is not known before the record is read, so this costs two round
        # trips: the record by hash, then the same check and counter as API requests.
        raw = await self.redis.get(K.api_key(key_hash))
        if raw is None:
            return None, 0
        found = _record_decoder.decode(raw)
        check = await self.authorize(found.org, found.key_id, key_hash, second)
        return check.record, check.count

    async def add_api_key(self, record: ApiKeyRecord) -> None:
        blob = _encode(record)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(K.OrgKeys(record.org).api_keys, record.key_id, blob)
            pipe.set(K.api_key(record.key_hash), blob)
            await pipe.execute()

    async def list_api_keys(self, org: str) -> list[ApiKeyRecord]:
        raw = await self.redis.hvals(K.OrgKeys(org).api_keys)
        return sorted((_record_decoder.decode(r) for r in raw), key=lambda r: r.created_us)

    async def revoke_api_key(self, org: str, key_id: str, now_us: int) -> ApiKeyRecord | None:
        okeys = K.OrgKeys(org)
        raw = await self.redis.hget(okeys.api_keys, key_id)
        if raw is None:
            return None
        record = _record_decoder.decode(raw)
        # Requests check the organisation's record, so marking it revoked is what makes
        # the key stop working at once; the record stays in the list for audit. The
        # lookup by hash (sign-in) goes next.
        if record.revoked_us is None:
            record = msgspec.structs.replace(record, revoked_us=now_us)
            await self.redis.hset(okeys.api_keys, key_id, _encode(record))
        await self.redis.delete(K.api_key(record.key_hash))
        return record

    # --- cycles ---------------------------------------------------------------------------

    async def cycle_scale(self, org: str, cycle: str, requested: str | None) -> str:
        key = K.OrgKeys(org).cycle(cycle)
        if requested is None:
            current = await self.redis.hget(key, "scale")
            if current is not None:
                return _s(current)
            requested = "google"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "scale", requested)
            pipe.hget(key, "scale")
            _, stored = await pipe.execute()
        return _s(stored)

    async def cycle_locked(self, org: str, cycle: str) -> bool:
        # Locking arrives with calibration sessions; until then nothing sets it.
        return bool(await self.redis.hget(K.OrgKeys(org).cycle(cycle), "locked"))

    # --- grades and KRs -------------------------------------------------------------------

    def _collection(self, org: str, cycle: str, kind: ItemKind) -> K.Collection:
        okeys = K.OrgKeys(org)
        return okeys.grades(cycle) if kind == "grades" else okeys.krs(cycle)

    async def upsert(
        self,
        org: str,
        cycle: str,
        kind: ItemKind,
        items: Sequence[tuple[str, bytes]],
        now_us: int,
        idempotency: tuple[str, str] | None = None,
        idempotency_ttl: int = 86400,
    ) -> UpsertCounts:
        okeys = K.OrgKeys(org)
        coll = self._collection(org, cycle, kind)
        idem_key = okeys.idempotency(kind, cycle, idempotency[0] if idempotency else "-")
        body_hash = idempotency[1] if idempotency else ""
        args: list[bytes | str | int] = [
            now_us,
            "1" if idempotency else "0",
            body_hash,
            idempotency_ttl,
        ]
        for key, value in items:
            args.append(key)
            args.append(value)
        keys = [*coll.all(), okeys.clock, idem_key]
        command: list[bytes | str | int] = ["EVALSHA", self._upsert.sha, len(keys), *keys, *args]
        try:
            (reply,) = await self._raw(command)
        except NoScriptError:
            await self.redis.script_load(_UPSERT)  # Redis restarted or flushed its scripts
            (reply,) = await self._raw(command)
        status, result = reply
        text = _s(result)
        replayed = _s(status) == "replay"
        if replayed:
            stored_hash, _, text = text.partition("|")
            if stored_hash != body_hash:
                raise IdempotencyConflictError(
                    "this Idempotency-Key was used with a different request body"
                )
        created, updated, unchanged = (int(x) for x in text.split(":"))
        return UpsertCounts(
            created=created, updated=updated, unchanged=unchanged, replayed=replayed
        )

    async def get_item(self, org: str, cycle: str, kind: ItemKind, key: str) -> Item | None:
        coll = self._collection(org, cycle, kind)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(coll.data, key)
            pipe.hget(coll.versions, key)
            pipe.zscore(coll.updated, key)
            value, version, score = await pipe.execute()
        if value is None:
            return None
        return Item(key=key, value=value, version=int(version or 0) + 1, updated_us=int(score or 0))

    async def item_history(self, org: str, cycle: str, kind: ItemKind, key: str) -> list[Item]:
        current = await self.get_item(org, cycle, kind, key)
        if current is None:
            return []
        coll = self._collection(org, cycle, kind)
        old = (
            await self.redis.hmget(coll.hist, [f"{key}\x1f{v}" for v in range(1, current.version)])
            if current.version > 1
            else []
        )
        out: list[Item] = []
        for version, raw in enumerate(old, start=1):
            if raw is None:
                continue
            stamp, _, value = raw.partition(b":")
            out.append(Item(key=key, value=value, version=version, updated_us=int(float(stamp))))
        out.append(current)
        return out

    async def page_items(
        self, org: str, cycle: str, kind: ItemKind, after_us: int, limit: int
    ) -> list[Item]:
        coll = self._collection(org, cycle, kind)
        pairs = await self.redis.zrangebyscore(
            coll.updated, f"({after_us}", "+inf", start=0, num=limit, withscores=True
        )
        if not pairs:
            return []
        names = [p[0] for p in pairs]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(coll.data, names)
            pipe.hmget(coll.versions, names)
            values, versions = await pipe.execute()
        return [
            Item(key=_s(n), value=v, version=int(ver or 0) + 1, updated_us=int(score))
            for (n, score), v, ver in zip(pairs, values, versions, strict=True)
            if v is not None
        ]

    async def all_items(self, org: str, cycle: str, kind: ItemKind) -> dict[str, bytes]:
        raw: dict[bytes, bytes] = await self.redis.hgetall(self._collection(org, cycle, kind).data)
        return {k.decode(): v for k, v in raw.items()}

    # --- runs -----------------------------------------------------------------------------

    async def create_run(
        self, org: str, cycle: str, run_id: str, fields: Mapping[str, str]
    ) -> None:
        okeys = K.OrgKeys(org)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(okeys.run(cycle, run_id), mapping=dict(fields))
            pipe.zadd(okeys.runs(cycle), {run_id: float(fields["created_at"])})
            await pipe.execute()

    async def get_run(self, org: str, cycle: str, run_id: str) -> dict[str, str] | None:
        raw: dict[bytes, bytes] = await self.redis.hgetall(K.OrgKeys(org).run(cycle, run_id))
        return {_s(k): _s(v) for k, v in raw.items()} or None

    async def list_runs(self, org: str, cycle: str, limit: int) -> list[dict[str, str]]:
        okeys = K.OrgKeys(org)
        ids = await self.redis.zrevrange(okeys.runs(cycle), 0, limit - 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hgetall(okeys.run(cycle, _s(run_id)))
            rows = await pipe.execute()
        return [{_s(k): _s(v) for k, v in row.items()} for row in rows if row]

    async def claim_run(
        self,
        org: str,
        cycle: str,
        run_id: str,
        worker: str,
        now: float,
        lease: float,
        max_attempts: int,
    ) -> int:
        key = K.OrgKeys(org).run(cycle, run_id)
        return int(
            await self._claim(
                client=self.redis, keys=[key], args=[worker, f"{now:.3f}", lease, max_attempts]
            )
        )

    async def renew_run(
        self, org: str, cycle: str, run_id: str, worker: str, attempt: int, until: float
    ) -> bool:
        key = K.OrgKeys(org).run(cycle, run_id)
        args: list[str | int] = [worker, attempt, "lease_until", f"{until:.3f}"]
        return bool(await self._if_owner(client=self.redis, keys=[key], args=args))

    async def save_results(
        self,
        org: str,
        cycle: str,
        run_id: str,
        attempt: int,
        fit: bytes,
        parts: Mapping[ResultPart, Sequence[tuple[str, bytes]]],
    ) -> None:
        okeys = K.OrgKeys(org)
        # Nothing reads an attempt's keys before finish_run names that attempt, so a
        # plain pipeline is enough here; chunks keep each command a sensible size.
        commands: list[list[bytes | str | int]] = [
            ["SET", okeys.run_part(cycle, run_id, attempt, "fit"), fit]
        ]
        for part, rows in parts.items():
            data = okeys.run_part(cycle, run_id, attempt, part)
            index = okeys.run_part(cycle, run_id, attempt, f"{part}:ix")
            commands.append(["DEL", data, index])
            for i in range(0, len(rows), 5000):
                chunk = rows[i : i + 5000]
                hset: list[bytes | str | int] = ["HSET", data]
                zadd: list[bytes | str | int] = ["ZADD", index]
                for key, value in chunk:
                    hset += (key, value)
                    zadd += (0, key)
                commands += (hset, zadd)
        await self._raw(*commands)

    async def finish_run(
        self,
        org: str,
        cycle: str,
        run_id: str,
        worker: str,
        attempt: int,
        fields: Mapping[str, str],
    ) -> bool:
        key = K.OrgKeys(org).run(cycle, run_id)
        args: list[str | int] = [worker, attempt]
        for name, value in fields.items():
            args.extend((name, value))
        return bool(await self._if_owner(client=self.redis, keys=[key], args=args))

    async def publish_run(self, org: str, cycle: str, run_id: str) -> str:
        okeys = K.OrgKeys(org)
        keys = [okeys.run(cycle, run_id), okeys.published(cycle)]
        return _s(await self._publish(client=self.redis, keys=keys, args=[run_id]))

    async def published_run(self, org: str, cycle: str) -> tuple[tuple[str, int] | None, bool]:
        # One round trip for what every results read needs: which run, and whether
        # the cycle is locked (which makes published results final).
        okeys = K.OrgKeys(org)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(okeys.published(cycle))
            pipe.hget(okeys.cycle(cycle), "locked")
            raw, locked = await pipe.execute()
        if raw is None:
            return None, bool(locked)
        return _pointer(raw), bool(locked)

    def _remember_published(self, org: str, cycle: str, pointer: str) -> None:
        if len(self._published_seen) >= 10_000:
            self._published_seen.clear()  # a bound on memory; entries are only hints
        self._published_seen[(org, cycle)] = pointer

    async def published_item(
        self, org: str, cycle: str, part: ResultPart, key: str
    ) -> PublishedItem:
        okeys = K.OrgKeys(org)
        for _ in range(5):
            seen = self._published_seen.get((org, cycle), "")
            keys = [
                okeys.published(cycle),
                okeys.cycle(cycle),
                _results_key(okeys, cycle, seen, part),
            ]
            pointer, locked, value = await self._request_call(
                self._read_published, keys, [seen, key]
            )
            if pointer is None:
                return None, bool(locked), None
            if _s(pointer) == seen:
                return _pointer(pointer), bool(locked), value
            self._remember_published(org, cycle, _s(pointer))  # published since: ask again
        raise RedisTimeoutError(f"cycle {cycle!r} is being published over and over; try again")

    async def run_fit(self, org: str, cycle: str, run_id: str, attempt: int) -> bytes | None:
        raw: bytes | None = await self.redis.get(
            K.OrgKeys(org).run_part(cycle, run_id, attempt, "fit")
        )
        return raw

    async def result_item(
        self, org: str, cycle: str, run_id: str, attempt: int, part: ResultPart, key: str
    ) -> bytes | None:
        raw: bytes | None = await self.redis.hget(
            K.OrgKeys(org).run_part(cycle, run_id, attempt, part), key
        )
        return raw

    async def result_page(
        self,
        org: str,
        cycle: str,
        run_id: str,
        attempt: int,
        part: ResultPart,
        after: str | None,
        limit: int,
    ) -> list[tuple[str, bytes]]:
        okeys = K.OrgKeys(org)
        index = okeys.run_part(cycle, run_id, attempt, f"{part}:ix")
        low = "-" if after is None else "(" + after
        names = await self.redis.zrangebylex(index, low, "+", start=0, num=limit)
        if not names:
            return []
        values = await self.redis.hmget(okeys.run_part(cycle, run_id, attempt, part), names)
        return [(_s(n), v) for n, v in zip(names, values, strict=True) if v is not None]

    # --- the run queue --------------------------------------------------------------------

    async def ensure_queue(self) -> None:
        try:
            await self.redis.xgroup_create(K.RUN_STREAM, K.RUN_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue_run(self, org: str, cycle: str, run_id: str) -> str:
        msg_id = await self.redis.xadd(K.RUN_STREAM, {"org": org, "cycle": cycle, "run_id": run_id})
        return _s(msg_id)

    async def read_queue(self, consumer: str, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        try:
            streams = await self.redis.xreadgroup(
                K.RUN_GROUP, consumer, {K.RUN_STREAM: ">"}, count=1, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_queue()  # Redis lost the group (flushed): make it again
            return []
        return [
            (_s(mid), {_s(k): _s(v) for k, v in fields.items()})
            for _, entries in streams or []
            for mid, fields in entries
        ]

    async def reclaim_queue(
        self, consumer: str, min_idle_ms: int
    ) -> list[tuple[str, dict[str, str]]]:
        try:
            reply = await self.redis.xautoclaim(
                K.RUN_STREAM, K.RUN_GROUP, consumer, min_idle_time=min_idle_ms, count=10
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_queue()
            return []
        entries = reply[1]
        return [
            (_s(mid), {_s(k): _s(v) for k, v in fields.items()})
            for mid, fields in entries
            if fields  # a deleted entry comes back empty
        ]

    async def touch_queue(self, consumer: str, message_id: str) -> None:
        # Claiming our own entry resets its idle time: the heartbeat that tells other
        # workers this run's worker is alive.
        await self.redis.xclaim(
            K.RUN_STREAM,
            K.RUN_GROUP,
            consumer,
            min_idle_time=0,
            message_ids=[message_id],
            justid=True,
        )

    async def ack_queue(self, message_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(K.RUN_STREAM, K.RUN_GROUP, message_id)
            pipe.xdel(K.RUN_STREAM, message_id)
            await pipe.execute()

    # --- anchor catalogues ----------------------------------------------------------------

    async def get_catalogue(self, org: str, revision: int | None = None) -> tuple[int, str] | None:
        key = K.OrgKeys(org).catalogue
        if revision is None:
            latest = await self.redis.hget(key, "latest")
            if latest is None:
                return None
            revision = int(latest)
        text = await self.redis.hget(key, f"r{revision}")
        return None if text is None else (revision, _s(text))

    async def put_catalogue(self, org: str, text: str) -> int:
        return int(
            await self._put_catalogue(
                client=self.redis, keys=[K.OrgKeys(org).catalogue], args=[text]
            )
        )
