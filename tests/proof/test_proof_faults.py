"""Faults, each checked on the data afterwards.

* the service is SIGKILLed while many clients ingest: after a restart every acknowledged
  grade is there (exact count) and no bulk request is half-applied;
* Redis is killed and restarted under load: requests get 503 with Retry-After, then
  succeed again from the same service process; with the embedded Redis (its own
  persistence settings) no acknowledged write is lost;
* a calibration worker is killed mid-run: the run is retried or ends failed, never
  stays ``running``.

Bulk requests here are the unit of "acknowledged": each carries rows no other request
carries, so afterwards each request's rows are either all there or none.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import pytest
import redis

from service import keys as K  # noqa: N812 - read as "keys"
from service.embedded import EmbeddedRedis
from service.store import RedisStore
from tests.conftest import new_org
from tests.proof.conftest import all_grades, bearer
from tests.proof.procs import (
    ApiProcess,
    RedisServer,
    WorkerProcess,
    create_key,
    running,
    wait_until,
)

ROWS = 250  # rows per bulk request


@dataclass
class Ledger:
    """What every client sent and what it was told, request by request."""

    acked: set[tuple[int, int]] = field(default_factory=set)
    unknown: set[tuple[int, int]] = field(default_factory=set)
    statuses: list[tuple[float, int, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _rows(client: int, batch: int) -> list[dict[str, object]]:
    return [
        {"kr_id": f"c{client}b{batch}k{i}", "grader_id": f"g{i % 7}", "grade": 0.5}
        for i in range(ROWS)
    ]


def _ingest(
    base: Callable[[], str],
    org: str,
    key: str,
    client: int,
    ledger: Ledger,
    stop: threading.Event,
    *,
    stop_on_transport_error: bool,
) -> None:
    """Post fresh bulk requests until ``stop``; record each as acknowledged or unknown."""
    batch = 0
    with httpx.Client(headers=bearer(key), timeout=30) as c:
        while not stop.is_set():
            url = f"{base()}/v1/orgs/{org}/cycles/c1/grades"
            try:
                r = c.post(url, json=_rows(client, batch))
            except httpx.TransportError:
                with ledger.lock:
                    ledger.unknown.add((client, batch))
                    ledger.statuses.append((time.monotonic(), 0, None))
                if stop_on_transport_error:
                    return
                time.sleep(0.05)
            else:
                with ledger.lock:
                    ledger.statuses.append(
                        (time.monotonic(), r.status_code, r.headers.get("retry-after"))
                    )
                    if r.status_code == 200:
                        assert r.json()["created"] == ROWS, r.text
                        ledger.acked.add((client, batch))
                    else:
                        ledger.unknown.add((client, batch))
                if r.status_code != 200:
                    time.sleep(0.05)
            batch += 1


def _check_ledger(grades: list[dict[str, object]], ledger: Ledger) -> int:
    """Every acknowledged request complete, every other one complete or absent; returns
    the number of unacknowledged requests that landed."""
    per_request: dict[tuple[int, int], int] = {}
    for g in grades:
        kr = str(g["kr_id"])
        client, _, rest = kr[1:].partition("b")
        batch = rest.partition("k")[0]
        per_request[(int(client), int(batch))] = per_request.get((int(client), int(batch)), 0) + 1
    for req in ledger.acked:
        assert per_request.get(req) == ROWS, f"acknowledged request {req} lost rows"
    landed = 0
    for req, n in per_request.items():
        assert n == ROWS, f"request {req} is half-applied: {n} of {ROWS} rows"
        if req not in ledger.acked:
            assert req in ledger.unknown, f"rows of a request never sent: {req}"
            landed += 1
    return landed


def test_sigkill_mid_ingest_loses_no_acknowledged_grade(
    tcp_redis: RedisServer, tmp_path: Path
) -> None:
    org = new_org()
    key, _ = create_key(tcp_redis.url, org, "grades:write", "scores:read")
    api = ApiProcess(tcp_redis.url, tmp_path / "api.log").start()
    ledger = Ledger()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_ingest,
            args=(lambda: api.base, org, key, c, ledger, stop),
            kwargs={"stop_on_transport_error": True},
        )
        for c in range(8)
    ]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(ledger.acked) >= 20, 60, "20 acknowledged bulk requests")
        api.kill()  # SIGKILL while the clients keep posting
        stop.set()
        for t in threads:
            t.join(60)
        assert ledger.unknown, "no request was in flight at the kill: the test proved nothing"
        api = ApiProcess(tcp_redis.url, tmp_path / "api2.log", port=api.port).start()
        grades = all_grades(api.base, org, "c1", key)
    finally:
        stop.set()
        api.stop()
    landed = _check_ledger(grades, ledger)
    assert len(grades) == (len(ledger.acked) + landed) * ROWS


def _embedded_pid(data: Path) -> int:
    return int((data / "redis.pid").read_text().strip())


def test_redis_killed_and_restarted_under_load(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = EmbeddedRedis(data)
    url = server.start()
    org = new_org()
    key, _ = create_key(url, org, "grades:write", "scores:read")
    api = ApiProcess(url, tmp_path / "api.log").start()
    ledger = Ledger()
    stop = threading.Event()
    reads: list[tuple[float, int, str | None]] = []

    def reader() -> None:
        with httpx.Client(base_url=api.base, headers=bearer(key), timeout=30) as c:
            while not stop.is_set():
                r = c.get(f"/v1/orgs/{org}/cycles/c1/grades", params={"limit": 20})
                reads.append((time.monotonic(), r.status_code, r.headers.get("retry-after")))
                time.sleep(0.01)

    threads = [
        threading.Thread(
            target=_ingest,
            args=(lambda: api.base, org, key, c, ledger, stop),
            kwargs={"stop_on_transport_error": False},
        )
        for c in range(4)
    ]
    threads.append(threading.Thread(target=reader))
    restarted = EmbeddedRedis(data)
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(ledger.acked) >= 10, 60, "10 acknowledged bulk requests")
        pid = _embedded_pid(data)
        os.kill(pid, signal.SIGKILL)  # a crash of the Redis process, mid-load
        down_at = time.monotonic()
        time.sleep(1.5)
        restarted.start()  # the embedded Redis again, on the same data directory
        up_at = time.monotonic()
        acked_at_restart = len(ledger.acked)
        wait_until(
            lambda: len(ledger.acked) >= acked_at_restart + 10,
            60,
            "writes to succeed again after the restart",
        )
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(60)
        assert api.alive(), "the service died with its Redis"
        grades = all_grades(api.base, org, "c1", key)
    finally:
        stop.set()
        api.stop()
        restarted.stop()
        server.stop()
    everything = ledger.statuses + reads
    codes = {code for _, code, _ in everything}
    assert codes <= {200, 503}, f"answers other than 200 and 503: {sorted(codes)}"
    outage = [(t, c, ra) for t, c, ra in everything if c == 503]
    assert outage, "no request met the outage"
    assert all(ra is not None and int(ra) >= 1 for _, _, ra in outage), "503 without Retry-After"
    assert all(down_at <= t for t, _, _ in outage)
    assert any(c == 200 and t > up_at for t, c, _ in reads), "reads did not recover"
    assert "Traceback" not in api.output()
    assert key not in api.output()  # the outage was logged, the key was not
    landed = _check_ledger(grades, ledger)
    assert len(grades) == (len(ledger.acked) + landed) * ROWS


def test_embedded_redis_fsyncs_before_acknowledging(tmp_path: Path) -> None:
    # appendfsync always: a write is on disk before its answer, so not even a power cut
    # loses an acknowledged grade; everysec is the documented trade for throughput
    for fsync, data in (("always", "d1"), ("everysec", "d2")):
        # the default, then the trade named explicitly
        embedded = (
            EmbeddedRedis(tmp_path / data)
            if fsync == "always"
            else EmbeddedRedis(tmp_path / data, fsync=fsync)
        )
        with embedded as server:
            client = redis.Redis.from_url(server.url)
            config = client.config_get("append*")
            client.close()
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == fsync


# --- calibration worker killed mid-run ---------------------------------------------------


def _seed_grades(url: str, org: str, n_krs: int, n_graders: int) -> None:
    async def go() -> None:
        store = RedisStore(url)
        try:
            items = [
                (
                    f"k{k}\x1fg{(k + j) % (n_graders * 4)}",
                    msgspec.msgpack.encode((0.2 + 0.6 * ((k * 7 + j * 3) % 10) / 10, f"o{k % 50}")),
                )
                for k in range(n_krs)
                for j in range(n_graders)
            ]
            for i in range(0, len(items), 10_000):
                await store.upsert(
                    org, "c1", "grades", items[i : i + 10_000], time.time_ns() // 1000
                )
        finally:
            await store.close()

    asyncio.run(go())


@pytest.mark.parametrize(
    ("attempts", "final"), [(3, "done"), pytest.param(1, "failed", marks=pytest.mark.slow)]
)
def test_worker_killed_mid_run_is_retried_or_failed(
    tcp_redis: RedisServer, tmp_path: Path, attempts: int, final: str
) -> None:
    org = new_org()
    key, _ = create_key(tcp_redis.url, org, "admin")
    _seed_grades(tcp_redis.url, org, 6_000, 8)
    env = {"OKRCAL_RUN_LEASE": "2", "OKRCAL_RUN_ATTEMPTS": str(attempts)}
    api = ApiProcess(tcp_redis.url, tmp_path / "api.log", env=env)
    first = WorkerProcess(tcp_redis.url, tmp_path / "w1.log", env=env)
    second = WorkerProcess(tcp_redis.url, tmp_path / "w2.log", env=env)
    with running(api, first, second):
        api.start()
        first.start()
        second.start()  # both wait on the queue; whichever takes the run is killed
        with httpx.Client(base_url=api.base, headers=bearer(key), timeout=30) as c:
            runs = f"/v1/orgs/{org}/cycles/c1/calibrations"
            r = c.post(runs, json={"model": "additive"})
            assert r.status_code == 202, r.text
            run_id = r.json()["run_id"]
            run_url = f"{runs}/{run_id}"
            wait_until(lambda: c.get(run_url).json()["status"] != "queued", 60, "the claim")
            with tcp_redis.client() as rc:
                holder = rc.hget(K.OrgKeys(org).run("c1", run_id), "worker")
            assert holder is not None
            pid = int(holder.decode().split("-")[-2])  # worker names are host-pid-random
            victim = first if pid == first.pid else second
            assert pid == victim.pid
            victim.kill()  # the worker and its fit process, mid-run
            run = c.get(run_url).json()
            assert run["status"] == "running", f"the run was not mid-way at the kill: {run}"
            wait_until(
                lambda: c.get(run_url).json()["status"] in ("done", "failed"),
                120,
                "the run to end",
                step=0.2,
            )
            run = c.get(run_url).json()
            assert run["status"] == final, run
            if final == "done":
                assert run["attempts"] == 2
                assert run["n_grades"] == 6_000 * 8
                scores = c.get(f"/v1/orgs/{org}/cycles/c1/scores", params={"run_id": run["run_id"]})
                assert scores.status_code == 200
            else:
                assert "gave up after 1 attempt" in run["error"]
            assert c.get(f"{runs}").json()[0]["status"] == final
