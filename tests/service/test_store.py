"""The Redis store below the HTTP layer: scripts, key checks, cluster slots, hot reads."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import uvloop
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.auth import hash_key, new_api_key
from service.embedded import EmbeddedRedis
from service.store import SCRIPTS, RedisStore
from tests.conftest import new_org


async def test_upsert_reloads_its_script_after_script_flush(store: RedisStore, org: str) -> None:
    items = [(f"k{i}\x1fg", b"v%d" % i) for i in range(3)]
    first = await store.upsert(org, "c1", "grades", items, time.time_ns() // 1000)
    assert first.created == 3
    await store.redis.script_flush()  # as after a Redis restart without persistence of scripts
    again = await store.upsert(org, "c1", "grades", items, time.time_ns() // 1000)
    assert (again.created, again.unchanged) == (0, 3)
    item = await store.get_item(org, "c1", "grades", "k1\x1fg")
    assert item is not None
    assert (item.value, item.version) == (b"v1", 1)


async def test_saved_results_read_back_in_key_order(store: RedisStore, org: str) -> None:
    rows = [(f"k{i:05d}", b"r%d" % i) for i in range(12_000)]
    await store.save_results(org, "c1", "run1", 1, b"overview", {"krs": rows})
    assert await store.run_fit(org, "c1", "run1", 1) == b"overview"
    page = await store.result_page(org, "c1", "run1", 1, "krs", None, 5000)
    assert [k for k, _ in page] == [k for k, _ in rows[:5000]]
    rest = await store.result_page(org, "c1", "run1", 1, "krs", page[-1][0], 10_000)
    assert len(rest) == 7000
    assert await store.result_item(org, "c1", "run1", 1, "krs", "k11999") == b"r11999"


async def _publish(
    store: RedisStore, org: str, cycle: str, run_id: str, owners: dict[str, bytes]
) -> None:
    fields = {"run_id": run_id, "status": "done", "created_at": "0", "result_attempt": "1"}
    await store.create_run(org, cycle, run_id, fields)
    await store.save_results(org, cycle, run_id, 1, b"fit", {"owners": list(owners.items())})
    assert await store.publish_run(org, cycle, run_id) == "ok"


_COMMAND = re.compile(r"redis\.p?call\(\s*'(\w+)'\s*,\s*([^,)]+)")


def test_every_script_touches_only_keys_it_declares() -> None:
    # Redis Cluster routes a script by its KEYS: a key built inside the script may live
    # in another slot (and another node). Every command the scripts call takes its key
    # first, so that argument must be KEYS[n].
    calls = [(name, *m) for name, src in SCRIPTS.items() for m in _COMMAND.findall(src)]
    assert len(calls) > 20  # the pattern does find the calls
    undeclared = [c for c in calls if not re.fullmatch(r"KEYS\[\d+\]", c[2].strip())]
    assert undeclared == []


def _tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the first non-empty {...}, else all of it."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else key


async def test_request_scripts_keep_to_one_slot_and_follow_a_new_publication(
    store: RedisStore, org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, record = new_api_key(org, ["hr:read"])
    await store.add_api_key(record)
    key_id, key_hash, now = record.key_id, hash_key(key), int(time.time())
    seen_keys: list[list[str]] = []
    real_call = store._request_call

    async def spy(script: Any, keys: Any, args: Any) -> Any:
        seen_keys.append(list(keys))
        return await real_call(script, keys, args)

    monkeypatch.setattr(store, "_request_call", spy)

    nothing = await store.authorize(org, key_id, key_hash, now, ("c1", "owners", "o1"))
    assert nothing.record == record
    assert nothing.read == (None, False, None)

    await _publish(store, org, "c1", "r1", {"o1": b"first"})
    check = await store.authorize(org, key_id, key_hash, now, ("c1", "owners", "o1"))
    assert check.read == (("r1", 1), False, b"first")
    calls_before = len(seen_keys)
    again = await store.authorize(org, key_id, key_hash, now, ("c1", "owners", "o1"))
    assert again.read == (("r1", 1), False, b"first")
    assert len(seen_keys) == calls_before + 1  # the pointer was known: one round trip

    # another process publishes another run: the next read follows it at once
    other = RedisStore(store.url)
    try:
        await _publish(other, org, "c1", "r2", {"o1": b"second"})
    finally:
        await other.close()
    moved = await store.authorize(org, key_id, key_hash, now, ("c1", "owners", "o1"))
    assert moved.read == (("r2", 1), False, b"second")
    assert moved.count == 4  # every check counted in the same second
    assert await store.published_item(org, "c1", "owners", "o9") == (("r2", 1), False, None)

    assert seen_keys
    for keys in seen_keys:
        assert {_tag(k) for k in keys} == {org}, keys


async def test_authorize_refuses_wrong_secrets_revoked_keys_and_other_orgs(
    store: RedisStore, org: str
) -> None:
    key, record = new_api_key(org, ["admin"])
    await store.add_api_key(record)
    now = int(time.time())
    assert (await store.authorize(org, record.key_id, hash_key(key), now)).record == record
    # the key id alone is not enough
    wrong = await store.authorize(org, record.key_id, hash_key(key + "x"), now)
    assert wrong.record is None
    # nor is the right key in another organisation's path
    assert (await store.authorize(new_org(), record.key_id, hash_key(key), now)).record is None
    assert (await store.authenticate(hash_key(key), now))[0] == record
    await store.revoke_api_key(org, record.key_id, 1)
    assert (await store.authorize(org, record.key_id, hash_key(key), now)).record is None
    assert (await store.authenticate(hash_key(key), now))[0] is None


async def test_request_calls_survive_a_script_flush(store: RedisStore, org: str) -> None:
    key, record = new_api_key(org, ["admin"])
    await store.add_api_key(record)
    now = int(time.time())
    assert (await store.authorize(org, record.key_id, hash_key(key), now)).count == 1
    await store.redis.script_flush()
    assert (await store.authorize(org, record.key_id, hash_key(key), now)).count == 2


async def test_a_hung_redis_answers_in_bounded_time_then_recovers(tmp_path: Path, org: str) -> None:
    # the per-request connection has no socket timeout of redis-py's: one timeout bounds
    # each round trip, and a connection that timed out is not reused
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    store = RedisStore(url)
    store.request_timeout = 0.3
    try:
        key, record = new_api_key(org, ["admin"])
        await store.add_api_key(record)
        now = int(time.time())
        assert (await store.authorize(org, record.key_id, hash_key(key), now)).record == record
        pid = int((tmp_path / "redis" / "redis.pid").read_text())
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await store.authorize(org, record.key_id, hash_key(key), now)
            assert time.monotonic() - started < 2
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (await store.authorize(org, record.key_id, hash_key(key), now)).record == record
    finally:
        await store.close()
        server.stop()


def test_request_calls_on_uvloop(redis_url: str, org: str) -> None:
    # granian runs the app on uvloop, whose transports differ from asyncio's
    async def calls() -> list[int]:
        store = RedisStore(redis_url)
        try:
            key, record = new_api_key(org, ["admin"])
            await store.add_api_key(record)
            now = int(time.time())
            checks = [store.authorize(org, record.key_id, hash_key(key), now) for _ in range(50)]
            return sorted([c.count for c in await asyncio.gather(*checks)])
        finally:
            await store.close()

    assert uvloop.run(calls()) == list(range(1, 51))  # 50 pipelined checks, each counted once


async def test_key_checks_write_nothing_to_the_append_only_file(tmp_path: Path, org: str) -> None:
    # the per-second request counter is not worth an fsync: a GET leaves the AOF alone
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    store = RedisStore(url)
    try:
        key, record = new_api_key(org, ["admin"])
        await store.add_api_key(record)
        await store.redis.bgrewriteaof()
        while int((await store.redis.info("persistence"))["aof_rewrite_in_progress"]):
            await asyncio.sleep(0.05)
        now = int(time.time())
        first = await store.authorize(org, record.key_id, hash_key(key), now)  # loads the script
        before = (await store.redis.info("persistence"))["aof_current_size"]
        checks = [await store.authorize(org, record.key_id, hash_key(key), now) for _ in range(20)]
        assert [c.count for c in [first, *checks]] == list(range(1, 22))
        assert (await store.redis.info("persistence"))["aof_current_size"] == before
        await store.redis.set(f"okrcal:{{{org}}}:probe", "x")  # while a real write does grow it
        assert (await store.redis.info("persistence"))["aof_current_size"] > before
    finally:
        await store.close()
        server.stop()


async def test_request_calls_use_the_database_of_the_url(redis_url: str, org: str) -> None:
    # the per-request connection is the store's own: it must select the URL's database too
    sep = "&" if "?" in redis_url else "?"
    store = RedisStore(f"{redis_url}{sep}db=3")  # redis-py reads db= on unix and tcp URLs
    try:
        key, record = new_api_key(org, ["admin"])
        await store.add_api_key(record)  # through redis-py, in database 3
        check = await store.authorize(org, record.key_id, hash_key(key), int(time.time()))
        assert check.record == record  # found: the check ran in database 3 as well
    finally:
        await store.close()
