"""Calibration runs: queue, worker, results, publishing, and workers that die."""

from __future__ import annotations

import asyncio
import csv
import functools
import io
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import anyio
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from service.app import create_app
from service.runs import RunWorker
from service.settings import Settings
from service.store import RedisStore
from tests.service.conftest import grades_rows, make_key

Client = AsyncTestClient[Litestar]


@pytest.fixture
async def worker_client(redis_url: str) -> AsyncIterator[Client]:
    """The app with one in-process calibration worker."""
    settings = Settings(run_workers=1, run_lease_seconds=2.0)
    async with AsyncTestClient(create_app(settings, RedisStore(redis_url))) as c:
        yield c


async def _wait(
    client: Client, url: str, headers: dict[str, str], timeout: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = (await client.get(url, headers=headers)).json()
        if run["status"] in ("done", "failed"):
            return run  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"run not finished: {run}")


async def _seed(client: Client, store: RedisStore, org: str) -> dict[str, str]:
    h = await make_key(store, org, "grades:write", "scores:read", "calibration:run", "hr:read")
    base = f"/v1/orgs/{org}/cycles/c1"
    rows = grades_rows(30, 6)
    for r in rows:  # grader g0 is lenient by 0.2
        if r["grader_id"] == "g0":
            r["grade"] = min(1.0, float(r["grade"]) + 0.2)  # type: ignore[arg-type]
    assert (await client.post(f"{base}/grades", json=rows, headers=h)).status_code == 200
    krs = [
        {
            "kr_id": f"k{k}",
            "owner_id": f"o{k % 5}",
            "milestones_done": k % 5,
            "milestones_total": 4 + k % 3,
        }
        for k in range(0, 30, 3)
    ]
    assert (await client.post(f"{base}/krs", json=krs, headers=h)).status_code == 200
    return h


async def test_run_publish_and_results(worker_client: Client, store: RedisStore, org: str) -> None:
    c = worker_client
    h = await _seed(c, store, org)
    base = f"/v1/orgs/{org}/cycles/c1"
    assert (await c.get(f"{base}/owners/o1", headers=h)).status_code == 404  # nothing published

    r = await c.post(
        f"{base}/calibrations", json={"model": "additive", "confidence": 0.9}, headers=h
    )
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]
    assert r.json()["status"] == "queued"
    run = await _wait(c, f"{base}/calibrations/{run_id}", h)
    assert run["status"] == "done", run
    assert str(run["input_hash"]).startswith("sha256:")
    assert run["model_version"]
    assert run["n_grades"] == 180
    assert run["n_krs"] == 30
    assert run["n_graders"] == 6
    assert "additive" in str(run["summary"])

    # provisional results before publishing
    r = await c.get(f"{base}/owners/o1", params={"run_id": run_id}, headers=h)
    assert r.status_code == 200
    assert r.json()["state"] == "provisional"
    r = await c.post(f"{base}/calibrations/{run_id}/publish", headers=h)
    assert r.status_code == 200
    assert r.json()["published"] is True
    owner = (await c.get(f"{base}/owners/o1", headers=h)).json()
    assert owner["state"] == "published-provisional"
    assert owner["run_id"] == run_id
    assert owner["ci_low"] <= owner["achievement"] <= owner["ci_high"]

    graders = (await c.get(f"{base}/graders", headers=h)).json()["items"]
    g0 = next(g for g in graders if g["grader_id"] == "g0")
    assert g0["leniency"] > 0.1
    assert g0["leniency"] == max(g["leniency"] for g in graders)

    # paging through the KR scores gives each KR once
    seen, cursor = [], None
    while True:
        params: dict[str, object] = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = (await c.get(f"{base}/scores", params=params, headers=h)).json()  # type: ignore[arg-type]
        seen += [s["kr_id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(f"k{k}" for k in range(30))
    r = await c.get(f"{base}/scores.csv", headers=h)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert len(table) == 30
    assert {"kr_id", "calibrated_grade", "ci_low", "ci_high"} <= set(table[0])
    owners = (await c.get(f"{base}/owners", headers=h)).json()["items"]
    assert sorted(o["owner_id"] for o in owners) == [f"o{i}" for i in range(5)]

    # a second run; reading the first by id still works, and the published one is unchanged
    r = await c.post(f"{base}/calibrations", json={"model": "mean"}, headers=h)
    second = await _wait(c, f"{base}/calibrations/{r.json()['run_id']}", h)
    assert second["status"] == "done"
    runs = (await c.get(f"{base}/calibrations", headers=h)).json()
    assert [x["run_id"] for x in runs] == [second["run_id"], run_id]
    assert [x["published"] for x in runs] == [False, True]
    assert (await c.get(f"{base}/owners/o1", headers=h)).json()["run_id"] == run_id


async def test_run_bad_inputs(worker_client: Client, store: RedisStore, org: str) -> None:
    c = worker_client
    h = await make_key(store, org, "calibration:run", "scores:read")
    base = f"/v1/orgs/{org}/cycles/c1/calibrations"
    for body in (
        {"model": "magic"},
        {"scale": "stars"},
        {"confidence": 1.5},
        {"confidence": "high"},
        {"colour": 1},
    ):
        r = await c.post(base, json=body, headers=h)
        assert r.status_code == 400, (body, r.text)
    # a cycle without grades: the run fails with a reason, it is not left running
    r = await c.post(base, json={"model": "mean"}, headers=h)
    run = await _wait(c, f"{base}/{r.json()['run_id']}", h)
    assert run["status"] == "failed"
    assert "no grades" in str(run["error"])
    r = await c.post(f"{base}/{run['run_id']}/publish", headers=h)
    assert r.status_code == 409
    assert (await c.post(f"{base}/nope/publish", headers=h)).status_code == 404
    assert (await c.get(f"{base}/nope", headers=h)).status_code == 404
    params = {"run_id": str(run["run_id"])}
    r = await c.get(f"/v1/orgs/{org}/cycles/c1/scores", params=params, headers=h)
    assert r.status_code == 409


async def _dead_worker_claims(store: RedisStore, org: str, run_id: str) -> None:
    """Play a worker that takes the run and dies without a word."""
    await store.ensure_queue()
    # Other tests' runs may be queued ahead of ours: take entries until ours comes (the
    # others stay pending for this "dead" consumer and are reclaimed like ours).
    for _ in range(500):
        jobs = await store.read_queue("dead-worker", block_ms=100)
        if any(job["run_id"] == run_id for _, job in jobs):
            break
    else:
        raise AssertionError("the run never reached the queue")
    assert await store.claim_run(org, "c1", run_id, "dead-worker", time.time(), 0.3, 3) == 1


async def _run_worker_until(store: RedisStore, settings: Settings, done: anyio.Event) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(RunWorker(store, settings, name="rescuer").run, stop)
        await done.wait()
        stop.set()


@pytest.mark.parametrize(("max_attempts", "outcome"), [(3, "done"), (1, "failed")])
async def test_run_of_a_dead_worker_is_retried_or_failed(
    client: Client, store: RedisStore, org: str, max_attempts: int, outcome: str
) -> None:
    h = await make_key(store, org, "grades:write", "calibration:run")
    base = f"/v1/orgs/{org}/cycles/c1"
    await client.post(f"{base}/grades", json=grades_rows(10, 3), headers=h)
    run_id = (await client.post(f"{base}/calibrations", json={"model": "mean"}, headers=h)).json()[
        "run_id"
    ]
    await _dead_worker_claims(store, org, run_id)

    settings = Settings(run_workers=0, run_lease_seconds=0.3, run_max_attempts=max_attempts)
    done = anyio.Event()

    async def watch() -> None:
        while True:
            run = await store.get_run(org, "c1", run_id)
            assert run is not None
            if run["status"] in ("done", "failed"):
                done.set()
                return
            await anyio.sleep(0.05)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            tg.start_soon(_run_worker_until, store, settings, done)
    run = await store.get_run(org, "c1", run_id)
    assert run is not None
    assert run["status"] == outcome
    if outcome == "done":
        assert run["attempts"] == "2"
    else:
        assert "worker stopped" in run["error"]
    # acknowledged and removed: no worker will pick the run up again
    entries = await store.redis.xrange("okrcal:{queue}:runs")
    assert run_id.encode() not in {fields[b"run_id"] for _, fields in entries}


async def test_a_killed_fit_process_fails_only_that_attempt(store: RedisStore) -> None:
    worker = RunWorker(store, Settings(run_workers=0, fit_in_subprocess=True))
    try:
        with pytest.raises(RuntimeError, match="fit process died"):
            await worker._in_subprocess(functools.partial(os._exit, 1))  # type: ignore[arg-type]
        # the next run gets a fresh process
        answer: object = await worker._in_subprocess(functools.partial(divmod, 7, 2))
        assert answer == (3, 1)
    finally:
        worker._close_pool()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_fit_process_exits_when_its_service_process_is_killed() -> None:
    code = (
        "import os, time\n"
        "from service.runs import RunWorker\n"
        "from service.settings import Settings\n"
        "pool = RunWorker(None, Settings())._pool()\n"
        "print(pool.submit(os.getpid).result(), flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        assert _alive(child)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 10
    while _alive(child):
        assert time.monotonic() < deadline, "the fit process outlived its parent"
        time.sleep(0.1)
