"""Grader drift across cycles, self-grading leniency and sandbagging owners.

Pure functions of per-cycle results: no I/O, no clock. Leniencies and
achievements enter on Google's 0–1 scale (the service converts each cycle's
published run from that cycle's scale), so cycles on different scales compare.

Drift of one grader (:func:`drift_test`)
    *Change*: the latest cycle's leniency against the grader's own earlier cycles
    (inverse-variance mean). The earlier cycles may disagree by more than their
    standard errors say; that between-cycle variance (DerSimonian–Laird; at least
    the organisation's pooled value with :func:`drift_tests`) is added to both
    sides, so a grader who always wobbles is not called drifting for one more wobble.
    *Trend*: weighted least-squares slope of leniency on cycle number, its
    standard error inflated when the points scatter more than their errors allow.

The HR list (:func:`rank_drifting`) controls the false-discovery rate over all
graders tested (Benjamini–Hochberg, separately for change and trend) and ranks
the drifting graders by the size of drift they are *confidently* away from
zero: ``|estimate| − z·SE``, which orders by size and confidence at once.

>>> pts = [CyclePoint(cycle=c, leniency=v, std_error=0.02)
...        for c, v in (("q1", 0.0), ("q2", 0.01), ("q3", -0.01), ("q4", 0.20))]
>>> t = drift_test("ann", pts)
>>> round(t.change, 3), t.direction
(0.2, 'more_lenient')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec
import numpy as np
import scipy.stats

from calibrate.engine import benjamini_hochberg
from calibrate.errors import InputError
from calibrate.results import GraderEffect
from calibrate.table import GradeTable

__all__ = [
    "SANDBAG_MESSAGE",
    "CyclePoint",
    "DriftTest",
    "SandbagFlag",
    "SelfGrading",
    "drift_test",
    "drift_tests",
    "pooled_between_cycle_sd",
    "rank_drifting",
    "sandbagging",
    "self_grading",
]

#: What a sandbagging flag tells HR.
SANDBAG_MESSAGE = "target may not be ambitious"

Direction = Literal["more_lenient", "more_severe"]


class CyclePoint(msgspec.Struct, frozen=True, kw_only=True):
    """One grader's leniency in one cycle (Google 0–1 units); ``None`` where not estimable."""

    cycle: str
    leniency: float | None
    std_error: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n_grades: int = 0
    flag: str | None = None
    #: What the leniency is measured against (``GraderEffect.compared_with``); None
    #: where unknown, as in results stored before model version 2.2.0.
    compared_with: str | None = None


class DriftTest(msgspec.Struct, frozen=True, kw_only=True):
    """Drift of one grader: change of the latest cycle and trend over all, with their tests.

    ``change`` is latest minus the earlier cycles' mean (positive: more lenient now).
    ``slope`` is leniency per cycle. ``q`` values and ``drifting`` are filled in by
    :func:`rank_drifting`; ``assured`` is ``|estimate| − z·SE`` of the stronger signal.
    """

    grader_id: str
    n_cycles: int
    latest_cycle: str | None
    latest: float | None
    baseline: float | None
    change: float | None
    change_se: float | None
    change_ci_low: float | None
    change_ci_high: float | None
    change_p: float | None
    slope: float | None
    slope_se: float | None
    slope_ci_low: float | None
    slope_ci_high: float | None
    slope_p: float | None
    between_cycle_sd: float | None
    direction: Direction | None
    change_q: float | None = None
    slope_q: float | None = None
    drifting: bool = False
    assured: float | None = None
    reason: str | None = None


class SelfGrading(msgspec.Struct, frozen=True, kw_only=True):
    """Leniency of a grader on their own KRs (grader_id == owner_id), Google 0–1 units.

    Each self-grade is compared with what the others say about the same KR: the
    other graders' grades less their leniency, and the evidence grade. The grader's
    leniency on everyone else's KRs (from the fit) is given next to it.
    """

    grader_id: str
    n_self_grades: int
    n_compared: int
    self_leniency: float | None
    std_error: float | None
    ci_low: float | None
    ci_high: float | None
    leniency_on_others: float | None
    difference: float | None
    reason: str | None = None


class SandbagFlag(msgspec.Struct, frozen=True, kw_only=True):
    """An owner whose calibrated achievement sat at or above the threshold cycle after cycle."""

    owner_id: str
    cycles: tuple[str, ...]
    achievements: tuple[float, ...]
    mean_achievement: float
    message: str = SANDBAG_MESSAGE


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}", field="confidence")
    return float(scipy.stats.norm.ppf(0.5 + confidence / 2.0))


def _p(z: float) -> float:
    return float(2.0 * scipy.stats.norm.sf(abs(z)))


def _dl_parts(x: np.ndarray, v: np.ndarray) -> tuple[float, int, float]:
    """DerSimonian–Laird pieces of estimates ``x`` with variances ``v``: Q, its df, denominator."""
    k = x.shape[0]
    if k < 2:
        return 0.0, 0, 0.0
    w = 1.0 / v
    mean = float(np.sum(w * x) / np.sum(w))
    q = float(np.sum(w * (x - mean) ** 2))
    return q, k - 1, float(np.sum(w) - np.sum(w**2) / np.sum(w))


def _tau2(x: np.ndarray, v: np.ndarray) -> float:
    """DerSimonian–Laird between-cycle variance of estimates ``x`` with variances ``v``."""
    q, df, denom = _dl_parts(x, v)
    return max(0.0, (q - df) / denom) if denom > 0 else 0.0


def _usable(history: Sequence[CyclePoint]) -> list[CyclePoint]:
    """The cycles with an estimate, measured against the same zero as the last of them.

    A grader's leniency against the evidence in one cycle and against the average
    grader of an unlinked department in another differ by more than drift, so only
    cycles with the latest estimate's ``compared_with`` count (an unknown one counts).
    """
    points = [
        p
        for p in history
        if p.leniency is not None
        and p.std_error is not None
        and math.isfinite(p.leniency)
        and math.isfinite(p.std_error)
        and p.std_error > 0
    ]
    zero = points[-1].compared_with if points else None
    if zero is None:
        return points
    return [p for p in points if p.compared_with in (None, zero)]


def pooled_between_cycle_sd(histories: Mapping[str, Sequence[CyclePoint]]) -> float:
    """Between-cycle SD of leniency pooled over graders, from their cycles before the latest.

    One grader's few cycles estimate their own between-cycle variance poorly (often
    as 0); the organisation's graders together estimate it well. :func:`drift_tests`
    uses it as a floor, so ordinary cycle-to-cycle movement is not called drift.
    The latest cycle is left out: it is the one under test.

    >>> h = {g: [CyclePoint(cycle=f"c{i}", leniency=v, std_error=0.01)
    ...          for i, v in enumerate((0.1, -0.1, 0.1, 0.0))] for g in "abc"}
    >>> round(pooled_between_cycle_sd(h), 2)
    0.12
    """
    q_sum = df_sum = denom_sum = 0.0
    for history in histories.values():
        usable = _usable(history)[:-1]
        x = np.array([p.leniency for p in usable], dtype=np.float64)
        v = np.array([p.std_error for p in usable], dtype=np.float64) ** 2
        q, df, denom = _dl_parts(x, v)
        q_sum, df_sum, denom_sum = q_sum + q, df_sum + df, denom_sum + denom
    if denom_sum <= 0:
        return 0.0
    return math.sqrt(max(0.0, (q_sum - df_sum) / denom_sum))


def _blank(grader_id: str, n: int, latest: CyclePoint | None, reason: str) -> DriftTest:
    return DriftTest(
        grader_id=grader_id,
        n_cycles=n,
        latest_cycle=None if latest is None else latest.cycle,
        latest=None if latest is None else latest.leniency,
        baseline=None,
        change=None,
        change_se=None,
        change_ci_low=None,
        change_ci_high=None,
        change_p=None,
        slope=None,
        slope_se=None,
        slope_ci_low=None,
        slope_ci_high=None,
        slope_p=None,
        between_cycle_sd=None,
        direction=None,
        reason=reason,
    )


def drift_test(
    grader_id: str,
    history: Sequence[CyclePoint],
    *,
    confidence: float = 0.90,
    min_cycles: int = 3,
    between_cycle_sd_floor: float = 0.0,
) -> DriftTest:
    """Change test (latest cycle vs the grader's own history) and trend, with standard errors.

    Parameters
    ----------
    grader_id
        The grader, for the result.
    history
        The grader's leniency per cycle, oldest first. Cycles without an estimate
        (``leniency`` or ``std_error`` None) are skipped and do not count.
    confidence
        Coverage of the intervals.
    min_cycles
        Fewer usable cycles than this and nothing is estimated (the reason says so).
    between_cycle_sd_floor
        The grader's between-cycle SD is taken as at least this (e.g. the organisation's,
        from :func:`pooled_between_cycle_sd`); 0 uses the grader's own estimate alone.

    Examples
    --------
    >>> flat = [CyclePoint(cycle=f"c{i}", leniency=0.1, std_error=0.03) for i in range(4)]
    >>> t = drift_test("bob", flat)
    >>> abs(t.change) < 1e-12, abs(t.slope) < 1e-12
    (True, True)
    """
    if min_cycles < 3:
        raise InputError(f"min_cycles must be at least 3, got {min_cycles}", field="min_cycles")
    z = _z(confidence)
    usable = _usable(history)
    n = len(usable)
    latest = history[-1] if history else None
    if n < min_cycles:
        return _blank(
            grader_id,
            n,
            latest,
            f"{n} cycle(s) with an estimated leniency"
            + (
                f" measured against the same {usable[-1].compared_with!r} as the latest"
                if usable and usable[-1].compared_with
                else ""
            )
            + f"; at least {min_cycles} are needed",
        )
    if latest is not None and latest is not usable[-1]:
        return _blank(
            grader_id,
            n,
            latest,
            f"no leniency estimate in the latest cycle {latest.cycle!r}: "
            f"{latest.flag or 'not estimable'}",
        )
    x = np.array([p.leniency for p in usable], dtype=np.float64)
    v = np.array([p.std_error for p in usable], dtype=np.float64) ** 2

    # change: latest against the earlier cycles, with their between-cycle variance
    prev_x, prev_v = x[:-1], v[:-1]
    tau2 = max(_tau2(prev_x, prev_v), between_cycle_sd_floor**2)
    w = 1.0 / (prev_v + tau2)
    baseline = float(np.sum(w * prev_x) / np.sum(w))
    change = float(x[-1] - baseline)
    change_se = math.sqrt(float(v[-1]) + tau2 + 1.0 / float(np.sum(w)))

    # trend: weighted least squares of leniency on cycle number
    t = np.arange(n, dtype=np.float64)
    wt = 1.0 / v
    t_bar = float(np.sum(wt * t) / np.sum(wt))
    x_bar = float(np.sum(wt * x) / np.sum(wt))
    sxx = float(np.sum(wt * (t - t_bar) ** 2))
    slope = float(np.sum(wt * (t - t_bar) * (x - x_bar)) / sxx)
    resid = x - (x_bar + slope * (t - t_bar))
    # scatter beyond the stated errors widens the slope's SE (never narrows it)
    dispersion = max(1.0, float(np.sum(wt * resid**2)) / (n - 2)) if n > 2 else 1.0
    slope_se = math.sqrt(dispersion / sxx)

    return DriftTest(
        grader_id=grader_id,
        n_cycles=n,
        latest_cycle=usable[-1].cycle,
        latest=float(x[-1]),
        baseline=baseline,
        change=change,
        change_se=change_se,
        change_ci_low=change - z * change_se,
        change_ci_high=change + z * change_se,
        change_p=_p(change / change_se),
        slope=slope,
        slope_se=slope_se,
        slope_ci_low=slope - z * slope_se,
        slope_ci_high=slope + z * slope_se,
        slope_p=_p(slope / slope_se),
        between_cycle_sd=math.sqrt(tau2),
        direction="more_lenient" if change > 0 else "more_severe",
    )


def drift_tests(
    histories: Mapping[str, Sequence[CyclePoint]],
    *,
    confidence: float = 0.90,
    min_cycles: int = 3,
    pooled: bool = True,
) -> list[DriftTest]:
    """:func:`drift_test` for every grader, with the pooled between-cycle SD as a floor.

    ``pooled=False`` tests each grader against their own history alone.
    """
    floor = pooled_between_cycle_sd(histories) if pooled else 0.0
    return [
        drift_test(
            g,
            h,
            confidence=confidence,
            min_cycles=min_cycles,
            between_cycle_sd_floor=floor,
        )
        for g, h in sorted(histories.items())
    ]


def rank_drifting(
    tests: Sequence[DriftTest],
    *,
    fdr: float = 0.05,
    min_change: float = 0.05,
    confidence: float = 0.90,
) -> tuple[DriftTest, ...]:
    """Every test with its q-values filled in; drifting graders first, most assured first.

    A grader drifts when the change test passes at false-discovery rate ``fdr`` with
    ``|change| >= min_change``, or the trend does with a total movement over the
    cycles (``|slope| · (n − 1)``) of at least ``min_change``.

    >>> pts = lambda last: [CyclePoint(cycle=f"c{i}", leniency=v, std_error=0.02)
    ...                     for i, v in enumerate((0.0, 0.01, 0.0, last))]
    >>> ranked = rank_drifting([drift_test("a", pts(0.02)), drift_test("b", pts(0.3))])
    >>> [(t.grader_id, t.drifting) for t in ranked]
    [('b', True), ('a', False)]
    """
    if not 0.0 < fdr < 1.0:
        raise InputError(f"fdr must be in (0, 1), got {fdr}", field="fdr")
    if min_change < 0.0:
        raise InputError(f"min_change must be >= 0, got {min_change}", field="min_change")
    z = _z(confidence)
    tested = [i for i, t in enumerate(tests) if t.change_p is not None and t.slope_p is not None]
    change_q = benjamini_hochberg(np.array([tests[i].change_p for i in tested], dtype=np.float64))
    slope_q = benjamini_hochberg(np.array([tests[i].slope_p for i in tested], dtype=np.float64))
    out = list(tests)
    for j, i in enumerate(tested):
        t = tests[i]
        # tested graders have every estimate (drift_test fills all or none)
        assert t.change is not None
        assert t.change_se is not None
        assert t.slope is not None
        assert t.slope_se is not None
        span = max(t.n_cycles - 1, 1)
        by_change = change_q[j] <= fdr and abs(t.change) >= min_change
        by_trend = slope_q[j] <= fdr and abs(t.slope) * span >= min_change
        assured = max(abs(t.change) - z * t.change_se, (abs(t.slope) - z * t.slope_se) * span)
        direction: Direction | None = t.direction
        if by_trend and not by_change:
            direction = "more_lenient" if t.slope > 0 else "more_severe"
        out[i] = msgspec.structs.replace(
            t,
            change_q=float(change_q[j]),
            slope_q=float(slope_q[j]),
            drifting=bool(by_change or by_trend),
            assured=float(assured),
            direction=direction,
        )

    def key(t: DriftTest) -> tuple[int, float, str]:
        return (
            0 if t.drifting else 1,
            -(t.assured if t.assured is not None else -1e9),
            t.grader_id,
        )

    return tuple(sorted(out, key=key))


def self_grading(
    table: GradeTable, graders: Sequence[GraderEffect], *, confidence: float = 0.90
) -> tuple[SelfGrading, ...]:
    """Leniency of each self-grading grader on their own KRs, measured apart from the rest.

    A self-grade is compared with the KR's reference: the mean of the other graders'
    grades less their leniency (graders with an estimated leniency only) and the
    evidence grade, where there is one. Differences are reported in Google 0–1 units.
    Graders who never grade their own KRs are not listed.

    Examples
    --------
    >>> from anchors.scales import parse_scale
    >>> from calibrate.table import GradeRecord
    >>> recs = [GradeRecord(kr_id=f"k{i}", grader_id=g, grade=v, owner_id="ann")
    ...         for i in range(3) for g, v in (("ann", 0.9), ("bob", 0.6))]
    >>> t = GradeTable.from_records(recs, parse_scale("google"))
    >>> eff = [GraderEffect(grader_id="bob", n_grades=3, n_linking=3, component=0,
    ...        leniency=0.0, std_error=0.02, ci_low=None, ci_high=None, z=None,
    ...        p_value=None, q_value=None, flag="ok")]
    >>> round(self_grading(t, eff)[0].self_leniency, 3)
    0.3
    """
    z = _z(confidence)
    scale = table.scale
    span = scale.span
    lenient = {g.grader_id: g.leniency for g in graders}
    # per grade: is it a self-grade?
    kr_owner = table.kr_owner
    grader_ids = table.grader_ids
    is_self = np.fromiter(
        (
            kr_owner[k] is not None and kr_owner[k] == grader_ids[g]
            for k, g in zip(table.kr_index.tolist(), table.grader_index.tolist(), strict=True)
        ),
        dtype=bool,
        count=table.n_grades,
    )
    if not is_self.any():
        return ()
    # per grade: the grade less its grader's leniency (NaN where not estimable)
    len_arr = np.array(
        [
            np.nan if (v := lenient.get(g)) is None else v
            for g in grader_ids  # grader order of the table
        ],
        dtype=np.float64,
    )
    adjusted = table.grade - len_arr[table.grader_index]
    others = ~is_self & np.isfinite(adjusted)
    n_kr = table.n_krs
    other_sum = np.bincount(
        table.kr_index[others], weights=adjusted[others], minlength=n_kr
    ).astype(np.float64)
    other_n = np.bincount(table.kr_index[others], minlength=n_kr).astype(np.float64)
    ev = table.evidence
    has_ev = np.isfinite(ev)
    ref_sum = other_sum + np.where(has_ev, ev, 0.0)
    ref_n = other_n + has_ev
    with np.errstate(invalid="ignore", divide="ignore"):
        reference = np.where(ref_n > 0, ref_sum / np.maximum(ref_n, 1.0), np.nan)

    out: list[SelfGrading] = []
    self_rows = np.flatnonzero(is_self)
    by_grader: dict[int, list[int]] = {}
    for r in self_rows.tolist():
        by_grader.setdefault(int(table.grader_index[r]), []).append(r)
    for gi, rows in sorted(by_grader.items()):
        gid = grader_ids[gi]
        gaps = np.array(
            [
                (table.grade[r] - reference[table.kr_index[r]]) / span
                for r in rows
                if np.isfinite(reference[table.kr_index[r]])
            ],
            dtype=np.float64,
        )
        others_len = lenient.get(gid)
        on_others = None if others_len is None else others_len / span
        m = gaps.shape[0]
        reason: str | None = None
        est = se = None
        if m == 0:
            reason = (
                "no self-graded KR has another grader with an estimated leniency or evidence "
                "to compare with"
            )
        else:
            est = float(gaps.mean())
            if m >= 2:
                se = float(gaps.std(ddof=1) / math.sqrt(m))
            else:
                reason = "one comparable self-grade: no standard error"
        out.append(
            SelfGrading(
                grader_id=gid,
                n_self_grades=len(rows),
                n_compared=m,
                self_leniency=est,
                std_error=se,
                ci_low=None if est is None or se is None else est - z * se,
                ci_high=None if est is None or se is None else est + z * se,
                leniency_on_others=on_others,
                difference=None if est is None or on_others is None else est - on_others,
                reason=reason,
            )
        )
    return tuple(out)


def sandbagging(
    history: Mapping[str, Sequence[tuple[str, float | None]]],
    *,
    threshold: float = 0.95,
    min_cycles: int = 2,
) -> tuple[SandbagFlag, ...]:
    """Owners whose calibrated achievement (0–1) stayed ``>= threshold`` in their latest cycles.

    ``history`` maps owner id to ``(cycle, achievement)`` pairs, oldest first; an
    achievement of ``None`` (not estimable) breaks a streak. An owner is flagged when
    the streak of latest cycles at or above the threshold is at least ``min_cycles``
    long. Healthy stretch goals average about 0.6–0.7 (Google's guidance).

    >>> flags = sandbagging({"o1": [("q1", 0.97), ("q2", 0.99)], "o2": [("q1", 0.7), ("q2", 1.0)]})
    >>> [(f.owner_id, f.cycles) for f in flags]
    [('o1', ('q1', 'q2'))]
    """
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"threshold must be in (0, 1], got {threshold}", field="threshold")
    if min_cycles < 2:
        raise InputError(f"min_cycles must be at least 2, got {min_cycles}", field="min_cycles")
    out: list[SandbagFlag] = []
    for owner, points in sorted(history.items()):
        streak: list[tuple[str, float]] = []
        for cycle, value in reversed(points):
            if value is None or not math.isfinite(value) or value < threshold:
                break
            streak.append((cycle, value))
        if len(streak) >= min_cycles:
            streak.reverse()
            values = tuple(v for _, v in streak)
            out.append(
                SandbagFlag(
                    owner_id=owner,
                    cycles=tuple(c for c, _ in streak),
                    achievements=values,
                    mean_achievement=float(np.mean(values)),
                )
            )
    return tuple(out)
