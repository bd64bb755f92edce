"""The Redis store below the HTTP layer: scripts survive a Redis that forgot them."""

from __future__ import annotations

import time

from service.store import RedisStore


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
