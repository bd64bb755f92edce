"""Drift across cycles over HTTP (scope ``hr:read``): grader histories, the HR list,
self-grading and sandbagging. The statistics are :mod:`calibrate.drift`'s.

Each cycle counts through its *published* run. Cycles are the organisation's cycles
with a published run, in id order (ids such as ``2026Q1`` sort in time), unless
``?cycles=a,b,c`` names them in order. Leniency and achievement are converted to
Google's 0–1 scale per cycle, so cycles graded on different scales compare.

The operations are plain async functions (:func:`drifting_graders`, :func:`grader_drift`,
:func:`self_grading_of`, :func:`sandbagging_of`) returning structs or raising
:class:`~service.problems.ProblemError`; the controller and the web drift page call them.
"""

from __future__ import annotations

import functools
from typing import Annotated

import anyio
import msgspec
from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from anchors import Scale, parse_scale
from calibrate import GraderEffect
from calibrate.drift import (
    CyclePoint,
    DriftTest,
    SandbagFlag,
    SelfGrading,
    drift_test,
    drift_tests,
    pooled_between_cycle_sd,
    rank_drifting,
    sandbagging,
    self_grading,
)
from service import keys as K  # noqa: N812 - read as "keys"
from service.audit import redis_of
from service.auth import SCOPE_OPT
from service.problems import ProblemError
from service.results import grader_effects, owner_achievements
from service.runs import build_table, load_org_catalogue
from service.schemas import FieldProblem
from service.store import Store

__all__ = [
    "CONFIDENCE",
    "FDR",
    "MAX_CYCLES",
    "MIN_CHANGE",
    "MIN_CYCLES",
    "DriftController",
    "DriftListOut",
    "GraderDriftOut",
    "SandbaggingOut",
    "SelfGradingOut",
    "check_cycle_count",
    "drifting_graders",
    "grader_drift",
    "grader_histories",
    "published_cycles",
    "rank_histories",
    "resolve_cycles",
    "sandbagging_of",
    "self_grading_of",
]

#: Most cycles one request may span.
MAX_CYCLES = 40
#: The defaults of the endpoints' parameters (the web drift page uses them too).
MIN_CYCLES = 3
FDR = 0.05
MIN_CHANGE = 0.05
CONFIDENCE = 0.90


class GraderDriftOut(msgspec.Struct, frozen=True, kw_only=True):
    """One grader's leniency per cycle (0–1 units, with intervals) and the drift tests."""

    grader_id: str
    cycles: list[str]
    history: list[CyclePoint]
    test: DriftTest


class DriftListOut(msgspec.Struct, frozen=True, kw_only=True):
    """Drifting graders, most assured first; how many were tested and how many lacked history."""

    cycles: list[str]
    min_cycles: int
    fdr: float
    min_change: float
    n_graders: int
    n_tested: int
    n_short_history: int
    drifting: list[DriftTest]


class SelfGradingOut(msgspec.Struct, frozen=True, kw_only=True):
    """Self-grading leniency of one cycle's published run."""

    cycle: str
    run_id: str
    graders: list[SelfGrading]


class SandbaggingOut(msgspec.Struct, frozen=True, kw_only=True):
    """Owners at or above the threshold cycle after cycle: "target may not be ambitious"."""

    cycles: list[str]
    threshold: float
    min_cycles: int
    flags: list[SandbagFlag]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bad(detail: str, field: str) -> ProblemError:
    return ProblemError(400, detail, errors=[FieldProblem(problem=detail, field=field)])


# --- the operations: what the API controller and the web drift page both call ---------------


async def published_cycles(store: Store, org: str) -> list[str]:
    """The organisation's cycles with a published run, in id order."""
    okeys = K.OrgKeys(org)
    prefix = okeys.published_pattern()[:-1]
    return sorted(
        {
            _s(k)[len(prefix) :]
            async for k in redis_of(store).scan_iter(match=okeys.published_pattern())
        }
    )


def check_cycle_count(names: list[str]) -> None:
    """Refuse (400) more than :data:`MAX_CYCLES` cycles at a time."""
    if len(names) > MAX_CYCLES:
        raise _bad(f"at most {MAX_CYCLES} cycles at a time", "cycles")


async def resolve_cycles(store: Store, org: str, given: str | None) -> list[str]:
    """The cycles named by ``?cycles=a,b,c`` (checked), else those with a published run."""
    if given is not None:
        names = [c.strip() for c in given.split(",") if c.strip()]
        bad = [c for c in names if not K.CYCLE_PATTERN.match(c)]
        if bad or not names:
            raise _bad(f"invalid cycle id {bad[0] if bad else given!r}", "cycles")
        if len(set(names)) != len(names):
            raise _bad("a cycle is named twice", "cycles")
    else:
        names = await published_cycles(store, org)
    check_cycle_count(names)
    return names


async def _published(store: Store, org: str, cycle: str) -> tuple[str, int, Scale] | None:
    pointer, _ = await store.published_run(org, cycle)
    if pointer is None:
        return None
    run = await store.get_run(org, cycle, pointer[0])
    if run is None:
        return None
    return pointer[0], pointer[1], parse_scale(run["scale"])


async def _published_runs(
    store: Store, org: str, cycles: list[str]
) -> list[tuple[str, str, int, Scale]]:
    """(cycle, run id, attempt, scale) of each of ``cycles`` that has a published run."""
    out = []
    for cycle in cycles:
        pub = await _published(store, org, cycle)
        if pub is not None:
            out.append((cycle, *pub))
    return out


def _point(cycle: str, g: GraderEffect, span: float) -> CyclePoint:
    def unit(x: float | None) -> float | None:
        return None if x is None else x / span

    return CyclePoint(
        cycle=cycle,
        leniency=unit(g.leniency),
        std_error=unit(g.std_error),
        ci_low=unit(g.ci_low),
        ci_high=unit(g.ci_high),
        n_grades=g.n_grades,
        flag=g.flag if g.leniency is not None else (g.reason or g.flag),
        compared_with=g.compared_with,
    )


async def grader_histories(
    store: Store, org: str, cycles: list[str]
) -> tuple[list[str], dict[str, list[CyclePoint]]]:
    """Of ``cycles``, those with a published run, and each grader's leniency in them (0–1).

    Leniency is divided by the run scale's span, so cycles graded on different scales
    compare; a grader's list holds only the cycles they were estimated in.
    """
    runs = await _published_runs(store, org, cycles)
    hist: dict[str, list[CyclePoint]] = {}
    for cycle, run_id, attempt, scale in runs:
        for g in await grader_effects(store, org, cycle, run_id, attempt):
            hist.setdefault(g.grader_id, []).append(_point(cycle, g, scale.span))
    return [r[0] for r in runs], hist


def _with_gaps(cycles: list[str], points: list[CyclePoint]) -> list[CyclePoint]:
    # A cycle where the grader graded nothing still counts as a cycle in the history
    # (the latest one especially): it appears with no estimate and the reason.
    by_cycle = {p.cycle: p for p in points}
    return [
        by_cycle.get(c)
        or CyclePoint(cycle=c, leniency=None, std_error=None, flag="did not grade in this cycle")
        for c in cycles
    ]


def rank_histories(
    used: list[str],
    hist: dict[str, list[CyclePoint]],
    *,
    min_cycles: int = MIN_CYCLES,
    fdr: float = FDR,
    min_change: float = MIN_CHANGE,
    confidence: float = CONFIDENCE,
) -> DriftListOut:
    """The drift test of every grader history, the drifting ones ranked (no I/O)."""
    tests = drift_tests(
        {g: _with_gaps(used, pts) for g, pts in hist.items()},
        confidence=confidence,
        min_cycles=min_cycles,
    )
    ranked = rank_drifting(tests, fdr=fdr, min_change=min_change, confidence=confidence)
    n_tested = sum(1 for t in ranked if t.change_p is not None)
    return DriftListOut(
        cycles=used,
        min_cycles=min_cycles,
        fdr=fdr,
        min_change=min_change,
        n_graders=len(ranked),
        n_tested=n_tested,
        n_short_history=len(ranked) - n_tested,
        drifting=[t for t in ranked if t.drifting],
    )


async def drifting_graders(
    store: Store,
    org: str,
    cycles: str | None = None,
    *,
    min_cycles: int = MIN_CYCLES,
    fdr: float = FDR,
    min_change: float = MIN_CHANGE,
    confidence: float = CONFIDENCE,
) -> DriftListOut:
    """Drifting graders ranked by assured size (|change| − z·SE), with FDR control."""
    used, hist = await grader_histories(store, org, await resolve_cycles(store, org, cycles))
    return rank_histories(
        used, hist, min_cycles=min_cycles, fdr=fdr, min_change=min_change, confidence=confidence
    )


async def grader_drift(
    store: Store,
    org: str,
    grader_id: str,
    cycles: str | None = None,
    *,
    min_cycles: int = MIN_CYCLES,
    confidence: float = CONFIDENCE,
) -> GraderDriftOut:
    """A grader's leniency per cycle with intervals, the change test and the trend (404: none)."""
    used, hist = await grader_histories(store, org, await resolve_cycles(store, org, cycles))
    points = hist.get(grader_id)
    if not points:
        where = f"cycles {', '.join(used)}" if used else "any cycle (none is published)"
        raise ProblemError(
            404,
            f"grader {grader_id!r} has no history: they appear in no published run of {where}",
        )
    history = _with_gaps(used, points)
    # the organisation's between-cycle SD as a floor, as in the HR list
    floor = pooled_between_cycle_sd({g: _with_gaps(used, p) for g, p in hist.items()})
    test = drift_test(
        grader_id,
        history,
        confidence=confidence,
        min_cycles=min_cycles,
        between_cycle_sd_floor=floor,
    )
    return GraderDriftOut(grader_id=grader_id, cycles=used, history=history, test=test)


async def self_grading_of(
    store: Store, org: str, cycle: str, *, confidence: float = CONFIDENCE
) -> SelfGradingOut:
    """Leniency of graders on their own KRs (grader_id == owner_id), apart from the rest."""
    if not K.CYCLE_PATTERN.match(cycle):
        raise _bad(f"invalid cycle id {cycle!r}", "cycle")
    pub = await _published(store, org, cycle)
    if pub is None:
        raise ProblemError(404, f"cycle {cycle!r} has no published run")
    run_id, attempt, scale = pub
    graders = await grader_effects(store, org, cycle, run_id, attempt)
    grades = await store.all_items(org, cycle, "grades")
    krs = await store.all_items(org, cycle, "krs")
    stored = parse_scale(await store.cycle_scale(org, cycle, None))
    catalogue = await load_org_catalogue(store, org)

    def compute() -> tuple[SelfGrading, ...]:
        table, _ = build_table(grades, krs, stored, scale, catalogue)
        return self_grading(table, graders, confidence=confidence)

    result = await anyio.to_thread.run_sync(functools.partial(compute))
    return SelfGradingOut(cycle=cycle, run_id=run_id, graders=list(result))


async def sandbagging_of(
    store: Store,
    org: str,
    cycles: str | None = None,
    *,
    threshold: float = 0.95,
    min_cycles: int = 2,
) -> SandbaggingOut:
    """Owners whose calibrated achievement stayed >= threshold (0–1) in their latest cycles."""
    runs = await _published_runs(store, org, await resolve_cycles(store, org, cycles))
    used = [r[0] for r in runs]
    history: dict[str, list[tuple[str, float | None]]] = {}
    for cycle, run_id, attempt, scale in runs:
        for o in await owner_achievements(store, org, cycle, run_id, attempt):
            value = None if o.achievement is None else float(scale.to_google(o.achievement))
            history.setdefault(o.owner_id, []).append((cycle, value))
    # an owner absent from a later cycle breaks their streak at that cycle
    for points in history.values():
        if points and points[-1][0] != used[-1]:
            points.append((used[-1], None))
    flags = sandbagging(history, threshold=threshold, min_cycles=min_cycles)
    return SandbaggingOut(
        cycles=used, threshold=threshold, min_cycles=min_cycles, flags=list(flags)
    )


# --- routes ---------------------------------------------------------------------------------

Cycles = Annotated[str | None, QueryParameter(description="cycle ids, oldest first")]
Confidence = Annotated[float, QueryParameter(gt=0.0, lt=1.0)]


class DriftController(Controller):
    """Graders over time, self-grading and sandbagging (HR)."""

    path = "/v1/orgs/{org:str}/drift"
    opt = {SCOPE_OPT: "hr:read"}  # noqa: RUF012 - litestar merges this dict into each route
    tags = ("drift",)

    @get("/graders")
    async def drifting(
        self,
        store: NamedDependency[Store],
        org: FromPath[str],
        cycles: Cycles = None,
        min_cycles: Annotated[int, QueryParameter(ge=3, le=MAX_CYCLES)] = MIN_CYCLES,
        fdr: Annotated[float, QueryParameter(gt=0.0, lt=1.0)] = FDR,
        min_change: Annotated[float, QueryParameter(ge=0.0, le=1.0)] = MIN_CHANGE,
        confidence: Confidence = CONFIDENCE,
    ) -> DriftListOut:
        """Drifting graders ranked by assured size (|change| − z·SE), with FDR control."""
        return await drifting_graders(
            store,
            org,
            cycles,
            min_cycles=min_cycles,
            fdr=fdr,
            min_change=min_change,
            confidence=confidence,
        )

    @get("/graders/{grader_id:str}")
    async def grader(
        self,
        store: NamedDependency[Store],
        org: FromPath[str],
        grader_id: FromPath[str],
        cycles: Cycles = None,
        min_cycles: Annotated[int, QueryParameter(ge=3, le=MAX_CYCLES)] = MIN_CYCLES,
        confidence: Confidence = CONFIDENCE,
    ) -> GraderDriftOut:
        """A grader's leniency per cycle with intervals, the change test and the trend."""
        return await grader_drift(
            store, org, grader_id, cycles, min_cycles=min_cycles, confidence=confidence
        )

    @get("/self-grading")
    async def self_grades(
        self,
        store: NamedDependency[Store],
        org: FromPath[str],
        cycle: Annotated[str, QueryParameter(description="the cycle")],
        confidence: Confidence = CONFIDENCE,
    ) -> SelfGradingOut:
        """Leniency of graders on their own KRs (grader_id == owner_id), apart from the rest."""
        return await self_grading_of(store, org, cycle, confidence=confidence)

    @get("/sandbagging")
    async def sandbag(
        self,
        store: NamedDependency[Store],
        org: FromPath[str],
        cycles: Cycles = None,
        threshold: Annotated[float, QueryParameter(gt=0.0, le=1.0)] = 0.95,
        min_cycles: Annotated[int, QueryParameter(ge=2, le=MAX_CYCLES)] = 2,
    ) -> SandbaggingOut:
        """Owners whose calibrated achievement stayed >= threshold (0–1) in their latest cycles."""
        return await sandbagging_of(store, org, cycles, threshold=threshold, min_cycles=min_cycles)
