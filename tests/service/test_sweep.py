"""Runs whose queue entry was lost: each way of losing it, on a real Redis, and the runs left alone.

Every test builds the state itself (run hash as the API writes it, stream entries as the
store writes them) and sweeps its own organisation only, at a ``now`` it chooses, so the
runs of other tests in the shared Redis are neither seen nor touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import anyio
import msgspec
import pytest

from service import keys as K  # noqa: N812 - read as "keys"
from service.runs import RunWorker, SweepReport, sweep_lost_runs
from service.schemas import GradeValue
from service.settings import Settings
from service.store import RedisStore
from tests.service.conftest import grades_rows

NOW = time.time()
LATER = NOW + 1000.0  # sweep "later": every lease has expired, every run is past its grace


async def _run(store: RedisStore, org: str, run_id: str, **fields: str) -> None:
    """A run as ``POST .../calibrations`` writes it, created 100 s before ``NOW``."""
    base = {
        "run_id": run_id,
        "org": org,
        "cycle": "c1",
        "status": "queued",
        "model": "mean",
        "scale": "google",
        "confidence": "0.9",
        "created_at": f"{NOW - 100:.6f}",
        "attempts": "0",
    }
    await store.create_run(org, "c1", run_id, {**base, **fields})


async def _delivered(store: RedisStore, org: str, run_id: str, *, claim: bool = False) -> str:
    """A run queued and read from the queue by a worker that then died (after claiming it,
    with ``claim``); returns its stream entry id, now pending for that worker.

    Entries of other tests ahead of it become pending for this worker too; live workers
    reclaim them after their lease, as they would from any dead worker.
    """
    await _run(store, org, run_id)
    await store.ensure_queue()
    message_id = await store.enqueue_run(org, "c1", run_id)
    for _ in range(1000):
        jobs = await store.read_queue("gone-worker", block_ms=50)
        if any(mid == message_id for mid, _ in jobs):
            break
    else:
        raise AssertionError(f"entry {message_id} never delivered")
    if claim:
        assert await store.claim_run(org, "c1", run_id, "gone-worker", NOW, 30.0, 3) == 1
    return message_id


async def _sweep(store: RedisStore, org: str, now: float = LATER) -> SweepReport:
    return await sweep_lost_runs(store, now=now, grace=30.0, max_attempts=3, org=org)


async def _entries_of(store: RedisStore, org: str, run_id: str) -> list[str]:
    entries = await store.redis.xrange(K.RUN_STREAM)
    ours = {b"org": org.encode(), b"run_id": run_id.encode()}
    return [mid.decode() for mid, f in entries if ours.items() <= f.items()]


@pytest.fixture(autouse=True)
async def _drop_our_entries(store: RedisStore, org: str) -> AsyncIterator[None]:
    """Leave no run of this test for the workers and sweeps of later tests."""
    yield
    await store.redis.delete(K.OrgKeys(org).runs("c1"))  # sweeps find runs through it
    entries = await store.redis.xrange(K.RUN_STREAM)
    ours = [mid for mid, f in entries if f.get(b"org") == org.encode()]
    if ours:
        await store.redis.xack(K.RUN_STREAM, K.RUN_GROUP, *ours)
        await store.redis.xdel(K.RUN_STREAM, *ours)


async def test_queued_run_never_added_to_the_stream_is_queued_again(
    store: RedisStore, org: str
) -> None:
    # the API process died between writing the run and XADD
    await _run(store, org, "r1")
    report = await _sweep(store, org)
    assert report == SweepReport([f"{org}/c1/r1"], [])
    run = await store.get_run(org, "c1", "r1")
    assert run is not None
    assert (run["status"], run["requeues"], run["attempts"]) == ("queued", "1", "0")
    assert len(await _entries_of(store, org, "r1")) == 1
    # now it has an entry that a worker will get: a second sweep leaves it alone
    assert await _sweep(store, org, LATER + 1000) == SweepReport([], [])


async def test_running_run_whose_entry_was_acknowledged_is_queued_again(
    store: RedisStore, org: str
) -> None:
    mid = await _delivered(store, org, "r1", claim=True)
    await store.ack_queue(mid)  # acknowledged (and deleted) without the run finishing
    assert await _sweep(store, org, NOW + 10) == SweepReport([], [])  # lease still live
    assert await _sweep(store, org) == SweepReport([f"{org}/c1/r1"], [])
    run = await store.get_run(org, "c1", "r1")
    assert run is not None
    assert (run["status"], run["attempts"], run["worker"]) == ("queued", "1", "")
    # the next claim is attempt 2: attempts still bound the retries
    assert await store.claim_run(org, "c1", "r1", "w2", LATER, 30.0, 3) == 2


async def test_running_run_whose_entry_was_trimmed_is_queued_again(
    store: RedisStore, org: str
) -> None:
    mid = await _delivered(store, org, "r1", claim=True)
    await store.redis.xdel(K.RUN_STREAM, mid)  # trimmed: still in the pending list, no entry
    assert await _sweep(store, org) == SweepReport([f"{org}/c1/r1"], [])


async def test_queued_run_whose_entry_was_acknowledged_but_kept_is_queued_again(
    store: RedisStore, org: str
) -> None:
    # the entry is still in the stream, but delivered and acknowledged: no worker gets it
    mid = await _delivered(store, org, "r1")
    await store.redis.xack(K.RUN_STREAM, K.RUN_GROUP, mid)
    assert await _sweep(store, org) == SweepReport([f"{org}/c1/r1"], [])
    assert len(await _entries_of(store, org, "r1")) == 2  # the dead one and the new one


async def test_lost_runs_fail_with_the_reason_once_attempts_or_requeues_are_used_up(
    store: RedisStore, org: str
) -> None:
    await _run(store, org, "spent", status="running", attempts="3", lease_until=f"{NOW:.3f}")
    await _run(store, org, "requeued", requeues="3", requeued_at=f"{NOW - 50:.6f}")
    report = await _sweep(store, org)
    assert sorted(report.failed) == [f"{org}/c1/requeued", f"{org}/c1/spent"]
    assert report.requeued == []
    spent = await store.get_run(org, "c1", "spent")
    requeued = await store.get_run(org, "c1", "requeued")
    assert spent is not None
    assert requeued is not None
    assert spent["status"] == requeued["status"] == "failed"
    assert "gave up after 3 attempt(s)" in spent["error"]
    assert "lost from the run queue 3 time(s)" in requeued["error"]
    assert await _entries_of(store, org, "spent") == await _entries_of(store, org, "requeued") == []
    # subscribers hear of the failures, once each
    events = await store.redis.xrange(K.OrgKeys(org).events)
    data = [msgspec.json.decode(f[b"data"]) for _, f in events]
    assert sorted(d["run_id"] for d in data) == ["requeued", "spent"]
    assert {d["status"] for d in data} == {"failed"}
    assert await _sweep(store, org, LATER + 1000) == SweepReport([], [])


async def test_healthy_runs_are_never_touched(store: RedisStore, org: str) -> None:
    # queued, entry not yet delivered
    await _run(store, org, "waiting")
    await store.enqueue_run(org, "c1", "waiting")
    # queued, entry delivered to a worker that has not claimed it yet
    await _delivered(store, org, "delivered")
    # running under a live lease, even with no entry at all
    await _run(store, org, "leased", status="running", attempts="1", lease_until=f"{LATER + 60}")
    # running, lease expired, entry still pending: XAUTOCLAIM hands it to a worker
    await _delivered(store, org, "reclaimable", claim=True)
    # just created, not yet queued (within the grace)
    await _run(store, org, "fresh", created_at=f"{LATER - 5:.6f}")
    # finished
    await _run(store, org, "done", status="done")
    await _run(store, org, "failed", status="failed", error="x")
    before = {r["run_id"]: r for r in await store.list_runs(org, "c1", 100)}

    assert await _sweep(store, org) == SweepReport([], [])
    after = {r["run_id"]: r for r in await store.list_runs(org, "c1", 100)}
    assert after == before
    assert await store.redis.xlen(K.OrgKeys(org).events) == 0


async def test_two_workers_sweeping_at_once_act_once(store: RedisStore, org: str) -> None:
    for i in range(5):
        await _run(store, org, f"r{i}")
    await _run(store, org, "last", requeues="3")
    a, b = await asyncio.gather(_sweep(store, org), _sweep(store, org))
    assert sorted(a.requeued + b.requeued) == [f"{org}/c1/r{i}" for i in range(5)]
    assert a.failed + b.failed == [f"{org}/c1/last"]
    for i in range(5):
        assert len(await _entries_of(store, org, f"r{i}")) == 1
        run = await store.get_run(org, "c1", f"r{i}")
        assert run is not None
        assert run["requeues"] == "1"
    assert await store.redis.xlen(K.OrgKeys(org).events) == 1


async def test_worker_loop_sweeps_and_runs_the_lost_run(store: RedisStore, org: str) -> None:
    rows = grades_rows(6, 3)
    items = [
        (f"{r['kr_id']}\x1f{r['grader_id']}", msgspec.msgpack.encode(GradeValue(r["grade"])))  # type: ignore[arg-type]
        for r in rows
    ]
    await store.upsert(org, "c1", "grades", items, time.time_ns() // 1000)
    await _run(store, org, "lost", created_at=f"{time.time() - 60:.6f}")
    await store.redis.delete(K.RUN_STREAM + ":sweep")  # a previous test's sweep may hold it
    settings = Settings(
        run_workers=0, run_lease_seconds=1.0, run_sweep_seconds=0.2, fit_in_subprocess=False
    )
    stop = anyio.Event()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(RunWorker(store, settings, name="sweeper").run, stop)
            while (run := await store.get_run(org, "c1", "lost") or {}).get("status") not in (
                "done",
                "failed",
            ):
                await anyio.sleep(0.05)
            stop.set()
    assert (run["status"], run["requeues"], run["attempts"]) == ("done", "1", "1"), run


async def test_runs_are_read_in_chunks(
    store: RedisStore, org: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.runs._SWEEP_CHUNK", 2)
    for i in range(7):
        await _run(store, org, f"r{i}", status="queued" if i in (1, 2, 6) else "done")
    report = await _sweep(store, org)
    assert sorted(report.requeued) == [f"{org}/c1/r{i}" for i in (1, 2, 6)]
