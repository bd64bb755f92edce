"""Calibration runs: queued in a Redis Stream, executed by workers of one consumer group.

Life of a run::

    POST .../calibrations ──> run hash (status queued) + stream entry
    a worker (XREADGROUP) ──> claim: status running, attempt n, lease until now + lease
        heartbeat every lease/3: renew the lease, XCLAIM the entry to itself (resets idle)
        fit in a thread (never on the event loop) ──> results of attempt n ──> done / failed
        XACK
    a worker dies ──> its entry idles past the lease ──> another worker's XAUTOCLAIM takes
        it, the claim script retries it, or marks it failed once the attempts are used up
    the entry is lost ──> every ``run_sweep_seconds`` one worker sweeps: a run queued or
        (no lease)          running with no live lease and no stream entry that will reach
                            a worker is re-queued, or failed with the reason once its
                            attempts or re-queues are used up (:func:`sweep_lost_runs`)

An entry is lost when the process that queued the run stopped between writing the run
and adding its entry, when the entry was trimmed, deleted or acknowledged without the run
finishing, or when Redis came back without its latest writes. XAUTOCLAIM cannot see those:
it only moves entries that are still pending.

Workers run inside the service process (``run_workers`` of them) or as separate
``okrcal worker`` processes; they are the same :class:`RunWorker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

import anyio
import msgspec
import numpy as np
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from anchors import (
    AnchorError,
    Catalogue,
    EvidenceError,
    KeyResult,
    Scale,
    default_catalogue,
    grade_evidence,
    load_catalogue,
    parse_scale,
)
from calibrate import CalibrateError, CalibrationFit, GradeTable, model_from_name
from service import keys as K  # noqa: N812 - read as "keys"
from service.audit import redis_of
from service.events import emit_run_completed
from service.schemas import GradeValue, KRIn
from service.settings import Settings
from service.store import ResultPart, Store

__all__ = [
    "PackedGrades",
    "RunWorker",
    "SweepReport",
    "build_table",
    "compute_run",
    "encode_results",
    "fit_cycle",
    "load_org_catalogue",
    "new_run_id",
    "sweep_lost_runs",
    "to_key_result",
]

_log = logging.getLogger("okrcal.runs")
_kr_decoder = msgspec.msgpack.Decoder(KRIn)
_encode = msgspec.msgpack.Encoder().encode
_catalogues: dict[tuple[str, int], Catalogue] = {}


def new_run_id() -> str:
    """A run id that sorts by creation time: 13 hex digits of ms, then 8 random ones."""
    return f"{time.time_ns() // 1_000_000:013x}{secrets.token_hex(4)}"


def to_key_result(kr: KRIn) -> KeyResult:
    """The anchors' view of a stored KR; raises ``msgspec.ValidationError`` or ``EvidenceError``."""
    return msgspec.convert(msgspec.to_builtins(kr), KeyResult)


async def load_org_catalogue(store: Store, org: str) -> Catalogue:
    """The organisation's current anchor catalogue, or the default one. Parsed once per revision."""
    found = await store.get_catalogue(org)
    if found is None:
        return default_catalogue()
    revision, text = found
    cached = _catalogues.get((org, revision))
    if cached is None:
        cached = _catalogues[(org, revision)] = load_catalogue(text)
    return cached


class PackedGrades(NamedTuple):
    """A cycle's stored grades in two blobs: cheap to pickle to a fit process, decoded in bulk.

    ``pairs`` joins the ``kr_id\\x1fgrader_id`` keys with ``\\x1e`` (ids hold no control
    characters); ``values`` is one msgpack array of the stored values, in the same order.
    """

    pairs: str
    values: bytes
    n: int

    @classmethod
    def pack(cls, grades: Mapping[str, bytes]) -> PackedGrades:
        """Pack stored grades (natural key -> encoded :class:`GradeValue`)."""
        header = b"\xdd" + len(grades).to_bytes(4, "big")  # msgpack array32
        return cls("\x1e".join(grades), header + b"".join(grades.values()), len(grades))


_packed_decoder = msgspec.msgpack.Decoder(list[GradeValue])


def build_table(
    grades: Mapping[str, bytes] | PackedGrades,
    krs: Mapping[str, bytes],
    stored_scale: Scale,
    scale: Scale,
    catalogue: Catalogue,
) -> tuple[GradeTable, list[str]]:
    """The grade table of a cycle from its stored grades and KRs, and warnings.

    Grades are stored on the cycle's scale; when the run asks for another scale they
    are converted through the anchor levels. A KR whose evidence cannot be graded
    is calibrated without evidence and named in the warnings.
    """
    packed = grades if isinstance(grades, PackedGrades) else PackedGrades.pack(grades)
    decoded = _packed_decoder.decode(packed.values)
    kr_ids: list[str] = []
    grader_ids: list[str] = []
    for pair in packed.pairs.split("\x1e") if packed.n else ():
        kr_id, _, grader_id = pair.partition("\x1f")
        kr_ids.append(kr_id)
        grader_ids.append(grader_id)
    values = np.fromiter((v.grade for v in decoded), dtype=np.float64, count=len(decoded))
    owners: dict[str, str] = {}
    conflicts: set[str] = set()
    for kr_id, value in zip(kr_ids, decoded, strict=True):
        if (
            value.owner_id is not None
            and owners.setdefault(kr_id, value.owner_id) != value.owner_id
        ):
            conflicts.add(kr_id)
    if scale != stored_scale:
        values = np.asarray(scale.from_google(stored_scale.to_google(values)), dtype=np.float64)
    evidence: dict[str, float] = {}
    weights: dict[str, float] = {}
    warnings: list[str] = []
    for kr_id, raw in krs.items():
        kr = _kr_decoder.decode(raw)
        if kr.owner_id is not None:
            owners[kr_id] = kr.owner_id  # the KR's own record wins over a grade row's
            conflicts.discard(kr_id)
        if kr.weight is not None:
            weights[kr_id] = kr.weight
        try:
            graded = grade_evidence(to_key_result(kr), catalogue)
        except (EvidenceError, msgspec.ValidationError) as exc:
            warnings.append(f"KR {kr_id!r}: evidence not used: {exc}")
            continue
        if graded is not None:
            evidence[kr_id] = graded.grade
    warnings.extend(
        f"KR {kr_id!r}: grade rows name different owners; {owners[kr_id]!r} was used "
        "(send the KR with its owner_id to settle it)"
        for kr_id in sorted(conflicts)
    )
    table = GradeTable.from_arrays(
        kr_ids, grader_ids, values, scale, evidence=evidence, owners=owners, weights=weights
    )
    return table, warnings


def fit_cycle(
    grades: Mapping[str, bytes] | PackedGrades,
    krs: Mapping[str, bytes],
    stored_scale: str,
    model: str,
    scale: str,
    confidence: float,
    catalogue: Catalogue,
) -> CalibrationFit:
    """Build the table and fit it: the CPU-bound part of a run, meant for a worker thread."""
    spec = model_from_name(model, confidence=confidence)
    table, warnings = build_table(
        grades, krs, parse_scale(stored_scale), parse_scale(scale), catalogue
    )
    fit = spec.fit(table)
    if warnings:
        fit = msgspec.structs.replace(fit, warnings=(*fit.warnings, *warnings))
    return fit


def encode_results(fit: CalibrationFit) -> tuple[bytes, dict[ResultPart, list[tuple[str, bytes]]]]:
    """The fit's overview (without the per-item tables) and its per-item tables, encoded."""
    parts: dict[ResultPart, list[tuple[str, bytes]]] = {
        "owners": [(o.owner_id, _encode(o)) for o in fit.owners],
        "krs": [(k.kr_id, _encode(k)) for k in fit.krs],
        "graders": [(g.grader_id, _encode(g)) for g in fit.graders],
    }
    overview = msgspec.structs.replace(fit, owners=(), krs=(), graders=())
    return _encode(overview), parts


def _done_fields(fit: CalibrationFit, attempt: int) -> dict[str, str]:
    return {
        "status": "done",
        "finished_at": f"{time.time():.3f}",
        "result_attempt": str(attempt),
        "input_hash": fit.input_hash,
        "model_version": fit.model_version,
        "n_grades": str(fit.n_grades),
        "n_krs": str(fit.n_krs),
        "n_graders": str(fit.n_graders),
        "summary": fit.summary(),
        "error": "",
    }


Computed = tuple[dict[str, str], bytes, dict[ResultPart, list[tuple[str, bytes]]]]


def compute_run(
    grades: Mapping[str, bytes] | PackedGrades,
    krs: Mapping[str, bytes],
    stored_scale: str,
    model: str,
    scale: str,
    confidence: float,
    catalogue: Catalogue,
    attempt: int,
) -> Computed:
    """Fit and encode a run: everything CPU-bound, in one call that a process pool can run.

    Returns the run's fields once done, the encoded overview and the per-item tables.
    """
    fit = fit_cycle(grades, krs, stored_scale, model, scale, confidence, catalogue)
    overview, parts = encode_results(fit)
    return _done_fields(fit, attempt), overview, parts


def _warm_up() -> None:
    """Import the numerical stack in a fresh fit process before the first run needs it."""
    import calibrate.engine  # noqa: F401


def _exit_with_parent(parent: int) -> None:
    """Initializer of a fit process: exit as soon as the service process that owns it is gone.

    A service process killed without a clean shutdown (or a uvicorn worker terminated by
    its supervisor) would otherwise leave its fit process running as an orphan.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="okrcal-parent-watch", daemon=True).start()


# --- runs whose queue entry was lost ----------------------------------------------------------

# Acting on a lost run checks it again and changes it in one step, so of two workers
# that notice the same run only one re-queues or fails it. A run touched (created or
# re-queued) after ``cutoff`` is left alone: its entry may have been added after the
# sweep read the stream, and the worker that re-queued it adds the entry itself.
# KEYS: run; ARGV: now, cutoff, max attempts (which also bounds re-queues)
_SWEEP_RUN = """
local st = redis.call('HMGET', KEYS[1], 'status', 'created_at', 'requeued_at', 'lease_until',
  'attempts', 'requeues')
if st[1] ~= 'queued' and st[1] ~= 'running' then return 0 end
local now, most = tonumber(ARGV[1]), tonumber(ARGV[3])
if math.max(tonumber(st[2] or '0'), tonumber(st[3] or '0')) >= tonumber(ARGV[2]) then
  return 0
end
if st[1] == 'running' and tonumber(st[4] or '0') > now then return 0 end
local attempts, requeues = tonumber(st[5] or '0'), tonumber(st[6] or '0')
local reason = nil
if attempts >= most then
  reason = 'gave up after ' .. attempts .. ' attempt(s): the worker stopped before ' ..
    'finishing and the run was no longer queued'
elseif requeues >= most then
  reason = 'lost from the run queue ' .. requeues .. ' time(s) before a worker took it ' ..
    '(Redis lost recent writes, or the service stopped while queuing it); start it again'
end
if reason then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[1], 'worker', '',
    'error', reason)
  return 2
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'worker', '', 'requeues', requeues + 1,
  'requeued_at', ARGV[1])
return 1
"""

# Which of a chunk of runs are unfinished, with what the sweep checks: one short script
# per 1,000 runs, so the finished ones (nearly all) never travel or get decoded here.
# KEYS: runs (all of one organisation: one slot)
# Returns: position (from 1) in KEYS, status, created_at, requeued_at, lease_until of each
# queued or running run
_ACTIVE_RUNS = """
local out = {}
for i, key in ipairs(KEYS) do
  local st = redis.call('HMGET', key, 'status', 'created_at', 'requeued_at', 'lease_until')
  if st[1] == 'queued' or st[1] == 'running' then
    out[#out + 1] = i
    for j = 1, 4 do out[#out + 1] = st[j] or '' end
  end
end
return out
"""
_SWEEP_CHUNK = 1000
_sweep_scripts: dict[str, Any] = {}
#: Every organisation's run index: ``okrcal:{*}:runs:*`` (a key is checked again when parsed).
_ALL_RUN_INDEXES = K.OrgKeys("0").runs("*").replace("{0}", "{*}")
_RUN_INDEX = re.compile(r"^okrcal:\{(?P<org>[^{}]+)\}:runs:(?P<cycle>[^:]+)$")
#: Held by the worker that sweeps, for one interval: one sweep per interval, whoever runs it.
_SWEEP_LOCK = K.RUN_SWEEP_LOCK
_PENDING_MAX = 100_000


class SweepReport(NamedTuple):
    """What one sweep did: ``org/cycle/run_id`` of the runs it re-queued and failed."""

    requeued: list[str]
    failed: list[str]


def _stream_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def _queued_runs(client: Any) -> set[tuple[str, str, str]] | None:
    """Runs that have a stream entry a worker will still get: pending, or not yet delivered.

    Read in one MULTI so the three replies describe one moment (an entry moving from
    undelivered to pending between two reads would look lost). None when the pending
    list is too long to read whole (then nothing is swept).
    """
    async with client.pipeline(transaction=True) as pipe:
        pipe.xinfo_groups(K.RUN_STREAM)
        pipe.xpending_range(K.RUN_STREAM, K.RUN_GROUP, "-", "+", _PENDING_MAX)
        pipe.xrange(K.RUN_STREAM, "-", "+")
        groups, pending, entries = await pipe.execute()
    if len(pending) >= _PENDING_MAX:
        return None
    last = (0, 0)
    for group in groups:
        name = group.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == K.RUN_GROUP:
            last = _stream_id(group["last-delivered-id"])
    pending_ids = {_stream_id(p["message_id"]) for p in pending}
    out: set[tuple[str, str, str]] = set()
    for entry_id, fields in entries:
        sid = _stream_id(entry_id)
        if sid > last or sid in pending_ids:
            f = {k.decode(): v.decode() for k, v in fields.items()}
            out.add((f.get("org", ""), f.get("cycle", ""), f.get("run_id", "")))
    return out


async def _settled(
    store: Store, report: SweepReport, outcome: int, org: str, cycle: str, run_id: str
) -> None:
    """Finish what the sweep script decided: queue the run again, or announce its failure."""
    ref = f"{org}/{cycle}/{run_id}"
    if outcome == 1:
        await store.enqueue_run(org, cycle, run_id)
        report.requeued.append(ref)
        _log.warning("run %s had lost its queue entry; queued again", ref)
    elif outcome == 2:
        report.failed.append(ref)
        fields = await store.get_run(org, cycle, run_id) or {}
        _log.warning("run %s lost its queue entry: %s", ref, fields.get("error"))
        await emit_run_completed(store, org, cycle, run_id, fields)


async def sweep_lost_runs(
    store: Store, *, now: float, grace: float, max_attempts: int, org: str | None = None
) -> SweepReport:
    """Re-queue or fail the runs that no worker will ever take (one organisation's, or all).

    A run is lost when it is ``queued`` or ``running``, holds no live lease (a queued run
    holds none), was created or last re-queued more than ``grace`` seconds before
    ``now``, and has no stream entry that is pending or not yet delivered. A lost run is
    re-queued (its attempts are kept, so the claim still gives up after ``max_attempts``),
    or marked failed with the reason when its attempts, or its re-queues, reach
    ``max_attempts``; a ``calibration.completed`` event then says so. Healthy runs, and
    runs whose worker died with its entry still pending (XAUTOCLAIM's job), are not touched.
    """
    client = redis_of(store)
    await store.ensure_queue()
    queued = await _queued_runs(client)
    report = SweepReport([], [])
    if queued is None:
        _log.warning("run sweep skipped: over %d pending run entries", _PENDING_MAX)
        return report
    scripts = _sweep_scripts
    if not scripts:  # sent by SHA on ``client=`` below, reloaded after a Redis restart
        scripts["active"] = client.register_script(_ACTIVE_RUNS)
        scripts["sweep"] = client.register_script(_SWEEP_RUN)
    pattern = K.OrgKeys(org).runs("*") if org is not None else _ALL_RUN_INDEXES
    cutoff = now - grace
    async for raw_key in client.scan_iter(match=pattern, count=1000, _type="zset"):
        found = _RUN_INDEX.match(raw_key.decode())
        if (
            found is None
            or not K.ORG_PATTERN.match(found["org"])
            or K.OrgKeys(found["org"]).runs(found["cycle"]) != raw_key.decode()
        ):
            continue
        run_org, cycle = found["org"], found["cycle"]
        okeys = K.OrgKeys(run_org)
        run_ids = [r.decode() for r in await client.zrange(raw_key, 0, -1)]
        for first in range(0, len(run_ids), _SWEEP_CHUNK):
            chunk = run_ids[first : first + _SWEEP_CHUNK]
            keys = [okeys.run(cycle, run_id) for run_id in chunk]
            rows = await scripts["active"](keys=keys, args=[], client=client)
            for i in range(0, len(rows), 5):
                run_id = chunk[int(rows[i]) - 1]
                status, created, requeued, lease = (v.decode() for v in rows[i + 1 : i + 5])
                if (run_org, cycle, run_id) in queued:
                    continue
                if max(float(created or 0), float(requeued or 0)) >= cutoff:
                    continue
                if status == "running" and float(lease or 0) > now:
                    continue
                args = [f"{now:.6f}", f"{cutoff:.6f}", max_attempts]
                outcome = await scripts["sweep"](
                    keys=[okeys.run(cycle, run_id)], args=args, client=client
                )
                await _settled(store, report, int(outcome), run_org, cycle, run_id)
    return report


class RunWorker:
    """One consumer of the run stream. ``await worker.run(stop)`` until ``stop`` is set."""

    def __init__(self, store: Store, settings: Settings, name: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.lease = settings.run_lease_seconds
        self.processed = 0
        self._executor: ProcessPoolExecutor | None = None
        self._next_sweep = 0.0  # monotonic; the first sweep comes when the worker starts

    async def run(self, stop: anyio.Event) -> None:
        """Take runs until ``stop``; survive Redis outages by waiting and trying again."""
        try:
            await self._loop(stop)
        finally:
            self._close_pool()

    async def _loop(self, stop: anyio.Event) -> None:
        ready = False
        if self.settings.fit_in_subprocess:
            self._pool()  # start the fit process now, not on the first run
        while not stop.is_set():
            try:
                if not ready:
                    await self.store.ensure_queue()
                    ready = True
                if time.monotonic() >= self._next_sweep:
                    self._next_sweep = time.monotonic() + self.settings.run_sweep_seconds
                    await self.sweep()
                # Entries idle past a lease belong to a dead worker: take them first.
                jobs = await self.store.reclaim_queue(self.name, int(self.lease * 1000))
                if not jobs:
                    jobs = await self.store.read_queue(self.name, block_ms=500)
                for message_id, job in jobs:
                    await self.process(message_id, job)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                _log.warning("worker %s: redis unavailable (%s); retrying", self.name, exc)
                ready = False
                with anyio.move_on_after(1.0):
                    await stop.wait()

    async def sweep(self) -> SweepReport | None:
        """Sweep for lost runs unless another worker has swept within ``run_sweep_seconds``.

        A run counts as lost only once it is older than the lease (and at least 10 s):
        room for the moment between writing a run and queuing it, and for clock skew.
        """
        interval_ms = max(1, int(self.settings.run_sweep_seconds * 1000))
        if not await redis_of(self.store).set(_SWEEP_LOCK, self.name, nx=True, px=interval_ms):
            return None
        try:
            return await sweep_lost_runs(
                self.store,
                now=time.time(),
                grace=max(self.lease, 10.0),
                max_attempts=self.settings.run_max_attempts,
            )
        except (RedisConnectionError, RedisTimeoutError):
            raise  # the loop waits for Redis to come back
        except Exception:  # a sweep that fails (a malformed run, a vanished group) waits
            _log.exception("worker %s: run sweep failed; trying again next time", self.name)
            return None

    async def process(self, message_id: str, job: Mapping[str, str]) -> None:
        """Claim, fit and record one run; acknowledge it unless another worker holds it."""
        org, cycle, run_id = job.get("org", ""), job.get("cycle", ""), job.get("run_id", "")
        attempt = await self.store.claim_run(
            org, cycle, run_id, self.name, time.time(), self.lease, self.settings.run_max_attempts
        )
        if attempt == -1:
            return  # another worker holds a live lease; it will acknowledge
        if attempt == 0:
            await self.store.ack_queue(message_id)  # done, failed or gone
            return
        run = await self.store.get_run(org, cycle, run_id) or {}
        error: Exception | None = None
        fields: dict[str, str] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat, org, cycle, run_id, attempt, message_id)
            try:
                fields = await self._execute(org, cycle, run_id, attempt, run)
            except Exception as exc:  # recorded on the run below, never left running
                error = exc
            tg.cancel_scope.cancel()
        if isinstance(error, RedisConnectionError | RedisTimeoutError):
            raise error  # the entry stays pending; the lease expires and it is retried
        if isinstance(error, CalibrateError | AnchorError | ValueError):
            fields = {"status": "failed", "finished_at": f"{time.time():.3f}", "error": str(error)}
        elif error is not None:
            _log.error("run %s/%s/%s failed", org, cycle, run_id, exc_info=error)
            fields = {
                "status": "failed",
                "finished_at": f"{time.time():.3f}",
                "error": f"internal error: {type(error).__name__}: {error}",
            }
        if await self.store.finish_run(org, cycle, run_id, self.name, attempt, fields):
            self.processed += 1
            await self.store.ack_queue(message_id)
            await emit_run_completed(self.store, org, cycle, run_id, fields)
        else:
            _log.warning("run %s lost its lease before finishing; another worker owns it", run_id)

    async def _execute(
        self, org: str, cycle: str, run_id: str, attempt: int, run: Mapping[str, str]
    ) -> dict[str, str]:
        grades = await self.store.all_items(org, cycle, "grades")
        krs = await self.store.all_items(org, cycle, "krs")
        stored_scale = await self.store.cycle_scale(org, cycle, None)
        catalogue = await load_org_catalogue(self.store, org)
        if not grades:
            raise CalibrateError(f"cycle {cycle!r} has no grades")
        job = functools.partial(
            compute_run,
            PackedGrades.pack(grades),
            krs,
            stored_scale,
            run["model"],
            run.get("scale") or stored_scale,
            float(run["confidence"]),
            catalogue,
            attempt,
        )
        if self.settings.fit_in_subprocess:
            fields, overview, parts = await self._in_subprocess(job)
        else:
            fields, overview, parts = await anyio.to_thread.run_sync(job)
        await self.store.save_results(org, cycle, run_id, attempt, overview, parts)
        return fields

    async def _in_subprocess(self, job: functools.partial[Computed]) -> Computed:
        # A fit holds the GIL for long stretches and can need a lot of memory: in a
        # process of its own it neither stalls the event loop (HTTP latency) nor takes
        # the service down if it is killed. A dead process fails this attempt only.
        pool = self._pool()
        try:
            return await asyncio.wrap_future(pool.submit(job))
        except BrokenProcessPool:
            self._close_pool()
            raise RuntimeError(
                "the fit process died (killed, or out of memory) before finishing"
            ) from None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: the parent runs an event loop and threads
            self._executor = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
            self._executor.submit(_warm_up)
        return self._executor

    def _close_pool(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    async def _heartbeat(
        self, org: str, cycle: str, run_id: str, attempt: int, message_id: str
    ) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                until = time.time() + self.lease
                if not await self.store.renew_run(org, cycle, run_id, self.name, attempt, until):
                    return
                await self.store.touch_queue(self.name, message_id)
