"""The calibration room: agenda, what-if previews, and final owner achievement.

Pure functions on top of the engine. A session looks at one scope of a cycle
(some owners' KRs and the graders who graded them) in one calibration run:

* :func:`build_agenda` orders what deserves the room's time, each item with its
  reasons: flagged graders, KRs whose interval straddles an anchor level
  boundary, the largest raw-versus-calibrated gaps, and KRs written as outputs.
  With fewer graders in scope than ``min_graders``, per-grader statistics are
  withheld (a handful of people could be told apart) and the agenda says so.
* :func:`what_if` refits the scope with proposed changes (override a grade,
  exclude a grader, add a grade) and reports what moved against the same scope
  refitted unchanged, so every difference is due to the changes alone.
* :func:`final_owners` folds the session's adjusted KR grades into the owners'
  achievement at lock time.

>>> from anchors.scales import parse_scale
>>> from calibrate.models import model_from_name
>>> from calibrate.table import GradeRecord
>>> recs = [GradeRecord(kr_id=f"k{i}", grader_id=g, grade=0.5 + 0.05 * i, owner_id="o1")
...         for i in range(4) for g in ("ann", "bob")]
>>> table = GradeTable.from_records(recs, parse_scale("google"))
>>> result = what_if(table, model_from_name("mean"),
...                  [OverrideGrade(kr_id="k1", grader_id="ann", grade=0.95)])
>>> [(k.kr_id, round(k.after, 2), k.crosses_level) for k in result.krs]
[('k1', 0.75, True)]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec
import numpy as np

from anchors.outcome import check_outcome
from anchors.scales import Scale, crosses_level, level_boundaries, level_index
from calibrate.errors import InputError
from calibrate.models import AdditiveModel, AffineModel, HeldVariance, Model
from calibrate.results import CalibrationFit, GraderEffect, KRScore, OwnerAchievement
from calibrate.table import GradeTable

__all__ = [
    "AddGrade",
    "Agenda",
    "AgendaItem",
    "AgendaKind",
    "Change",
    "ExcludeGrader",
    "FlagChange",
    "KRChange",
    "OverrideGrade",
    "OwnerChange",
    "WhatIfResult",
    "apply_changes",
    "build_agenda",
    "final_owners",
    "small_group_reason",
    "what_if",
]

AgendaKind = Literal["flagged_grader", "straddles_boundary", "large_gap", "output_not_outcome"]
_KIND_ORDER: tuple[AgendaKind, ...] = (
    "flagged_grader",
    "straddles_boundary",
    "large_gap",
    "output_not_outcome",
)
_FLAGGED = ("lenient", "severe", "compressing", "expanding")


class AgendaItem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing for the room: a grader or a KR, why it is here (every reason), in order."""

    position: int
    kind: AgendaKind
    subject: Literal["grader", "kr"]
    subject_id: str
    reasons: tuple[str, ...]
    kinds: tuple[AgendaKind, ...]
    owner_id: str | None = None
    #: The number that ordered the item within its kind (|leniency|, |gap|, ...), 0–1 units.
    magnitude: float | None = None


class Agenda(msgspec.Struct, frozen=True, kw_only=True):
    """The ordered agenda of a session's scope, and whether grader statistics were withheld."""

    items: tuple[AgendaItem, ...]
    n_krs: int
    n_graders: int
    grader_stats_withheld: bool
    withheld_reason: str | None = None


class OverrideGrade(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="override_grade"
):
    """Replace one grader's grade of a KR (or, without ``grader_id``, every grade of the KR)."""

    kr_id: str
    grade: float
    grader_id: str | None = None


class ExcludeGrader(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="exclude_grader"
):
    """Leave out every grade this grader gave in the scope."""

    grader_id: str


class AddGrade(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="add_grade"
):
    """A further grade of a KR by a grader who has not graded it yet (a second opinion)."""

    kr_id: str
    grader_id: str
    grade: float


Change = OverrideGrade | ExcludeGrader | AddGrade


class KRChange(msgspec.Struct, frozen=True, kw_only=True):
    """A KR whose calibrated grade moved (input scale), and whether it changed anchor level."""

    kr_id: str
    owner_id: str | None
    before: float | None
    after: float | None
    delta: float | None
    level_before: int | None
    level_after: int | None
    crosses_level: bool
    reason: str | None = None


class OwnerChange(msgspec.Struct, frozen=True, kw_only=True):
    """An owner whose achievement moved, and whether it changed anchor level."""

    owner_id: str
    before: float | None
    after: float | None
    delta: float | None
    crosses_level: bool


class FlagChange(msgspec.Struct, frozen=True, kw_only=True):
    """A grader whose flag cleared or appeared (``None``: not in that fit, e.g. excluded)."""

    grader_id: str
    before: str | None
    after: str | None


class WhatIfResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the proposed changes would do; nothing is saved."""

    n_changes: int
    n_krs: int
    n_grades_before: int
    n_grades_after: int
    krs: tuple[KRChange, ...]
    crossings: tuple[str, ...]
    owners: tuple[OwnerChange, ...]
    flags_cleared: tuple[FlagChange, ...]
    flags_appeared: tuple[FlagChange, ...]
    grader_stats_withheld: bool
    withheld_reason: str | None = None


def small_group_reason(n_graders: int, min_graders: int) -> str | None:
    """Why per-grader statistics are withheld for a scope of ``n_graders``, or None."""
    if n_graders >= min_graders:
        return None
    return (
        f"per-grader statistics withheld: the scope has {n_graders} grader(s), fewer than "
        f"{min_graders}; with so few, a grader's numbers identify them and are too unstable "
        "to discuss"
    )


@dataclass
class _Entry:
    kind: AgendaKind
    subject: Literal["grader", "kr"]
    reasons: list[str]
    kinds: list[AgendaKind]
    magnitude: float
    owner: str | None
    sid: str = ""


def _g(scale: Scale, value: float) -> float:
    return float(scale.to_google(value))


def build_agenda(
    krs: Sequence[KRScore],
    graders: Sequence[GraderEffect],
    scale: Scale,
    *,
    descriptions: Mapping[str, str | None] | None = None,
    min_graders: int = 4,
    max_gaps: int = 20,
    min_gap: float = 0.1,
) -> Agenda:
    """The ordered agenda of one scope.

    Parameters
    ----------
    krs, graders
        The run's KR scores and grader effects, restricted to the scope.
    scale
        The run's scale (grades, intervals and boundaries are on it).
    descriptions
        KR descriptions by id, for the output-versus-outcome check.
    min_graders
        Fewer graders than this and no grader statistic appears.
    max_gaps, min_gap
        At most ``max_gaps`` gap items, each with ``|raw − calibrated| >= min_gap`` on
        Google's 0–1 scale.

    Items come by kind (flagged graders, straddling KRs, gaps, outputs), and within a
    kind by size. A KR listed under several kinds appears once, at its first kind, with
    every reason.

    >>> from anchors.scales import parse_scale
    >>> k = KRScore(kr_id="k1", owner_id="o1", n_grades=2, raw_grade=0.9, evidence_grade=None,
    ...             calibrated_grade=0.65, std_error=0.04, ci_low=0.6, ci_high=0.72)
    >>> [i.kinds for i in build_agenda([k], [], parse_scale("google"), min_graders=0).items]
    [('straddles_boundary', 'large_gap')]
    """
    if min_graders < 0 or max_gaps < 0 or min_gap < 0:
        raise InputError("min_graders, max_gaps and min_gap must be >= 0", field="agenda")
    withheld = small_group_reason(len(graders), min_graders)
    entries: dict[tuple[str, str], _Entry] = {}

    def add(
        kind: AgendaKind,
        subject: Literal["grader", "kr"],
        sid: str,
        reason: str,
        magnitude: float,
        owner: str | None = None,
    ) -> None:
        entry = entries.get((subject, sid))
        if entry is None:
            entries[(subject, sid)] = _Entry(kind, subject, [reason], [kind], magnitude, owner, sid)
        else:
            entry.reasons.append(reason)
            entry.kinds.append(kind)

    if withheld is None:
        flagged = [g for g in graders if g.flag in _FLAGGED]
        for g in sorted(flagged, key=lambda g: (-abs(g.leniency or 0.0), g.grader_id)):
            lin = g.leniency or 0.0
            size = lin / scale.span
            detail = f"leniency {size:+.2f} on the 0–1 scale"
            if g.flag in ("compressing", "expanding") and g.scale is not None:
                detail = f"scale {g.scale:.2f} (1 = spreads grades like the evidence)"
            q = f", q = {g.q_value:.3g}" if g.q_value is not None else ""
            add(
                "flagged_grader",
                "grader",
                g.grader_id,
                f"grader flagged {g.flag}: {detail}{q}",
                abs(size),
            )

    points = level_boundaries(scale)[1:-1]
    straddling: list[tuple[float, KRScore, float]] = []
    gaps: list[tuple[float, KRScore]] = []
    for k in krs:
        lo, hi, cal = k.ci_low, k.ci_high, k.calibrated_grade
        if lo is not None and hi is not None and cal is not None and crosses_level(lo, hi, scale):
            inside = [p for p in points if lo < p <= hi]
            nearest = min(inside or points, key=lambda p: abs(p - cal))
            straddling.append((abs(_g(scale, cal) - _g(scale, nearest)), k, nearest))
        if k.calibrated_grade is not None:
            gap = abs(_g(scale, k.raw_grade) - _g(scale, k.calibrated_grade))
            if gap >= min_gap:
                gaps.append((gap, k))
    for distance, k, p in sorted(straddling, key=lambda x: (x[0], x[1].kr_id)):
        add(
            "straddles_boundary",
            "kr",
            k.kr_id,
            f"interval [{k.ci_low:.3g}, {k.ci_high:.3g}] straddles the anchor level boundary "
            f"at {p:g}: the level is not settled by the grades",
            distance,
            k.owner_id,
        )
    for gap, k in sorted(gaps, key=lambda x: (-x[0], x[1].kr_id))[:max_gaps]:
        add(
            "large_gap",
            "kr",
            k.kr_id,
            f"raw grade {k.raw_grade:.3g} vs calibrated {k.calibrated_grade:.3g}: "
            f"a gap of {gap:.2f} on the 0–1 scale",
            gap,
            k.owner_id,
        )
    owner_of = {k.kr_id: k.owner_id for k in krs}
    for kr_id in sorted((descriptions or {}).keys()):
        text = (descriptions or {}).get(kr_id)
        if kr_id not in owner_of or not text:
            continue
        check = check_outcome(text)
        if check.is_output:
            because = "; ".join(check.reasons) or "describes an activity"
            add(
                "output_not_outcome",
                "kr",
                kr_id,
                f"graded as an output rather than an outcome: {because}",
                0.0,
                owner_of[kr_id],
            )

    # stable sort: keeps the within-kind order in which items were added
    ordered = sorted(entries.values(), key=lambda e: _KIND_ORDER.index(e.kind))
    items = tuple(
        AgendaItem(
            position=i + 1,
            kind=e.kind,
            subject=e.subject,
            subject_id=sid,
            reasons=tuple(e.reasons),
            kinds=tuple(e.kinds),
            owner_id=e.owner,
            magnitude=e.magnitude,
        )
        for i, (e, sid) in enumerate((e, e.sid) for e in ordered)
    )
    return Agenda(
        items=items,
        n_krs=len(krs),
        n_graders=len(graders),
        grader_stats_withheld=withheld is not None,
        withheld_reason=withheld,
    )


def _check_grade(value: float, scale: Scale, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"grade {value!r} is not a finite number", field=field)
    if not scale.low <= value <= scale.high:
        raise InputError(
            f"grade {value:g} is outside the {scale.name} scale [{scale.low:g}, {scale.high:g}]",
            field=field,
        )
    return float(value)


def apply_changes(
    table: GradeTable, changes: Sequence[Change], *, known_graders: Collection[str] = ()
) -> GradeTable:
    """The table with ``changes`` applied, in order.

    KRs must be in the table. Graders must be in the table, or (for ``add_grade``)
    in ``known_graders`` (e.g. the cycle's other graders). Errors name the change
    by its position: ``changes[2].kr_id``. KRs and graders left without a grade drop
    out of the table.
    """
    scale = table.scale
    gr_names = list(table.grader_ids)
    kr_pos = {k: i for i, k in enumerate(table.kr_ids)}
    gr_pos = {g: i for i, g in enumerate(gr_names)}
    ki = table.kr_index.copy()
    gi = table.grader_index.copy()
    vals = table.grade.copy()

    def grader(name: str, field: str, *, new_ok: bool) -> int:
        pos = gr_pos.get(name)
        if pos is None:
            if not (new_ok and name in known_graders):
                raise InputError(f"unknown grader {name!r}", field=field)
            pos = gr_pos[name] = len(gr_names)
            gr_names.append(name)
        return pos

    for i, change in enumerate(changes):
        at = f"changes[{i}]"
        if isinstance(change, ExcludeGrader):
            g = grader(change.grader_id, f"{at}.grader_id", new_ok=False)
            keep = gi != g
            ki, gi, vals = ki[keep], gi[keep], vals[keep]
            continue
        k = kr_pos.get(change.kr_id)
        if k is None:
            raise InputError(f"unknown KR {change.kr_id!r} in this scope", field=f"{at}.kr_id")
        grade = _check_grade(change.grade, scale, f"{at}.grade")
        if change.grader_id is None:
            rows = np.flatnonzero(ki == k)
            if rows.shape[0] == 0:
                raise InputError(f"KR {change.kr_id!r} has no grades left", field=f"{at}.kr_id")
            vals[rows] = grade
            continue
        g = grader(change.grader_id, f"{at}.grader_id", new_ok=isinstance(change, AddGrade))
        rows = np.flatnonzero((ki == k) & (gi == g))
        if isinstance(change, AddGrade):
            if rows.shape[0]:
                raise InputError(
                    f"grader {change.grader_id!r} already graded KR {change.kr_id!r}; "
                    "use override_grade",
                    field=f"{at}.grader_id",
                )
            ki = np.append(ki, k)
            gi = np.append(gi, g)
            vals = np.append(vals, grade)
        elif rows.shape[0] == 0:
            raise InputError(
                f"grader {change.grader_id!r} has no grade of KR {change.kr_id!r}; use add_grade",
                field=f"{at}.grader_id",
            )
        else:
            vals[rows] = grade
    if vals.shape[0] == 0:
        raise InputError("the changes leave no grades in the scope", field="changes")

    # Back to the table's canonical form (ids sorted, grades by KR, grader, value)
    # directly with numpy: rebuilding from strings would cost more than the changes.
    used_k = np.unique(ki)
    kr_remap = np.full(table.n_krs, -1, dtype=np.int64)
    kr_remap[used_k] = np.arange(used_k.shape[0])
    order_g = sorted(set(gi.tolist()), key=lambda j: gr_names[j])
    gr_remap = np.full(len(gr_names), -1, dtype=np.int64)
    gr_remap[order_g] = np.arange(len(order_g))
    ki, gi = kr_remap[ki], gr_remap[gi]
    order = np.lexsort((vals, gi, ki))
    ki, gi, vals = ki[order], gi[order], vals[order]
    digest = hashlib.sha256(table.input_hash.encode())
    digest.update(msgspec.json.encode(list(changes)))
    used = used_k.tolist()
    return GradeTable(
        scale=scale,
        kr_ids=tuple(table.kr_ids[j] for j in used),
        grader_ids=tuple(gr_names[j] for j in order_g),
        kr_index=ki,
        grader_index=gi,
        grade=vals,
        evidence=table.evidence[used_k],
        kr_owner=tuple(table.kr_owner[j] for j in used),
        kr_weight=table.kr_weight[used_k],
        input_hash="sha256:" + digest.hexdigest(),
        cycles=table.cycles,
    )


def _level(value: float | None, scale: Scale) -> int | None:
    return None if value is None else level_index(value, scale)


def _held_like(model: Model, before: CalibrationFit) -> Model:
    """The model with the baseline's variance components held (mixed models only).

    Holding them keeps the preview fast (no REML search) and shows the moves the
    proposed changes cause, not the small drift of re-estimated variances.
    """
    v = before.variance
    if not isinstance(model, AdditiveModel | AffineModel) or model.hold_variance is not None:
        return model
    if v.kr is None or v.grader is None or v.residual is None:
        return model
    if min(v.kr, v.grader, v.residual) <= 0 or (v.evidence is not None and v.evidence <= 0):
        return model
    held = HeldVariance(kr=v.kr, grader=v.grader, residual=v.residual, evidence=v.evidence)
    return msgspec.structs.replace(model, hold_variance=held)


def what_if(
    table: GradeTable,
    model: Model,
    changes: Sequence[Change],
    *,
    baseline: CalibrationFit | None = None,
    known_graders: Collection[str] = (),
    min_graders: int = 4,
    tolerance: float = 1e-3,
) -> WhatIfResult:
    """Preview ``changes`` on the scope ``table``: recalculated scores, crossings, flag changes.

    ``baseline`` is ``model`` fitted to ``table`` unchanged (fitted here when not
    given; a caller previewing many changes on one scope passes it once).
    KRs that lose every grade are reported with ``after = None`` and the reason.
    Mixed models hold the baseline's variance components, so the moves come from the
    changes themselves; moves smaller than ``tolerance`` (Google 0–1 units) are not listed.
    """
    if not changes:
        raise InputError("propose at least one change", field="changes")
    scale = table.scale
    tol = tolerance * scale.span
    before = baseline if baseline is not None else model.fit(table)
    changed_table = apply_changes(table, changes, known_graders=known_graders)
    after = _held_like(model, before).fit(changed_table)

    after_kr = {k.kr_id: k for k in after.krs}
    kr_changes: list[KRChange] = []
    for k in before.krs:
        new = after_kr.get(k.kr_id)
        b = k.calibrated_grade
        a = None if new is None else new.calibrated_grade
        if new is not None and b is not None and a is not None and abs(a - b) <= tol:
            continue
        if new is not None and b is None and a is None:
            continue
        lb, la = _level(b, scale), _level(a, scale)
        kr_changes.append(
            KRChange(
                kr_id=k.kr_id,
                owner_id=k.owner_id,
                before=b,
                after=a,
                delta=None if a is None or b is None else a - b,
                level_before=lb,
                level_after=la,
                crosses_level=lb is not None and la is not None and lb != la,
                reason="no grades left in the scope" if new is None else new.reason,
            )
        )
    kr_changes.sort(key=lambda c: (-abs(c.delta or 0.0), c.kr_id))

    after_owner = {o.owner_id: o for o in after.owners}
    owner_changes: list[OwnerChange] = []
    for o in before.owners:
        n = after_owner.get(o.owner_id)
        b = o.achievement
        a = None if n is None else n.achievement
        if b is not None and a is not None and abs(a - b) <= tol:
            continue
        if b is None and a is None:
            continue
        owner_changes.append(
            OwnerChange(
                owner_id=o.owner_id,
                before=b,
                after=a,
                delta=None if a is None or b is None else a - b,
                crosses_level=b is not None and a is not None and crosses_level(b, a, scale),
            )
        )
    owner_changes.sort(key=lambda c: (-abs(c.delta or 0.0), c.owner_id))

    withheld = small_group_reason(table.n_graders, min_graders)
    cleared: list[FlagChange] = []
    appeared: list[FlagChange] = []
    if withheld is None:
        after_flag = {g.grader_id: g.flag for g in after.graders}
        for g in before.graders:
            new_flag = after_flag.pop(g.grader_id, None)
            was = g.flag in _FLAGGED
            now = new_flag in _FLAGGED
            if was and (not now or new_flag != g.flag):
                cleared.append(FlagChange(grader_id=g.grader_id, before=g.flag, after=new_flag))
            if now and (not was or new_flag != g.flag):
                appeared.append(FlagChange(grader_id=g.grader_id, before=g.flag, after=new_flag))
        for gid, new_flag in sorted(after_flag.items()):  # graders only in the changed fit
            if new_flag in _FLAGGED:
                appeared.append(FlagChange(grader_id=gid, before=None, after=new_flag))

    return WhatIfResult(
        n_changes=len(changes),
        n_krs=table.n_krs,
        n_grades_before=table.n_grades,
        n_grades_after=changed_table.n_grades,
        krs=tuple(kr_changes),
        crossings=tuple(c.kr_id for c in kr_changes if c.crosses_level),
        owners=tuple(owner_changes),
        flags_cleared=tuple(cleared),
        flags_appeared=tuple(appeared),
        grader_stats_withheld=withheld is not None,
        withheld_reason=withheld,
    )


def final_owners(
    krs: Sequence[KRScore],
    owners: Sequence[OwnerAchievement],
    final_grades: Mapping[str, float],
    *,
    weights: Mapping[str, float] | None = None,
) -> tuple[OwnerAchievement, ...]:
    """Owners' achievement with the session's final KR grades folded in.

    An owner without an adjusted KR keeps the run's numbers. An adjusted owner's
    achievement is the weighted mean of their KRs' final grades (adjusted where set,
    calibrated otherwise); the interval moves with it, its width unchanged, since an
    adjustment is a decision, not a new measurement. ``reason`` names the adjusted KRs.

    >>> k = [KRScore(kr_id=f"k{i}", owner_id="o", n_grades=1, raw_grade=0.5, evidence_grade=None,
    ...              calibrated_grade=0.5, std_error=0.1, ci_low=0.3, ci_high=0.7) for i in (1, 2)]
    >>> o = [OwnerAchievement(owner_id="o", n_krs=2, achievement=0.5, std_error=0.07,
    ...                       ci_low=0.38, ci_high=0.62)]
    >>> final_owners(k, o, {"k1": 0.9})[0].achievement
    0.7
    """
    w = weights or {}
    by_owner: dict[str, list[KRScore]] = {}
    for k in krs:
        if k.owner_id is not None:
            by_owner.setdefault(k.owner_id, []).append(k)
    out: list[OwnerAchievement] = []
    for o in owners:
        mine = by_owner.get(o.owner_id, [])
        adjusted = sorted(k.kr_id for k in mine if k.kr_id in final_grades)
        if not adjusted:
            out.append(o)
            continue
        total = weight = 0.0
        for k in mine:
            value = final_grades.get(k.kr_id, k.calibrated_grade)
            if value is None:
                continue
            wk = float(w.get(k.kr_id, 1.0))
            total += wk * value
            weight += wk
        achievement = total / weight if weight > 0 else None
        shift = (
            None if achievement is None or o.achievement is None else achievement - o.achievement
        )
        out.append(
            msgspec.structs.replace(
                o,
                achievement=achievement,
                ci_low=None if shift is None or o.ci_low is None else o.ci_low + shift,
                ci_high=None if shift is None or o.ci_high is None else o.ci_high + shift,
                reason=f"includes session adjustments of KR(s) {', '.join(adjusted)}"
                if achievement is not None
                else "no KR with a final grade",
            )
        )
    return tuple(out)
