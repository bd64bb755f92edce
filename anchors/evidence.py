"""Evidence grades: what a KR's own numbers say its grade should be.

Each KR type has a rule (see the catalogue, where the settings live):

- ``metric``: attainment = (actual − baseline) / (target − baseline), clipped
  to [0, 1]; overshoot beyond the target is reported separately.
- ``milestone``: milestones_done / milestones_total.
- ``binary``: 1.0 when done, 0.0 when not.
- ``maintain``: 1.0 at or beyond the threshold, a straight line from 1.0 down
  to the catalogue's ``band_floor`` across the tolerance band, 0.0 beyond it.

Every grade carries sentences that explain it, with the numbers used.

>>> g = grade_evidence(KeyResult(kr_id="kr-1", baseline=30, target=50, actual=42))
>>> g.grade, g.level, g.reasons[0]
(0.6, '0.3', 'actual 42 vs baseline 30 and target 50: 60% of the way')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from anchors.catalogue import (
    BinaryRule,
    Catalogue,
    MaintainRule,
    MetricRule,
    MilestoneRule,
    default_catalogue,
)
from anchors.errors import EvidenceError
from anchors.kr import EVIDENCE_FIELDS, KR_TYPES, Direction, KeyResult, KRType, infer_kr_type

__all__ = [
    "EvidenceBatch",
    "EvidenceColumns",
    "EvidenceGrade",
    "EvidenceProblem",
    "grade_columns",
    "grade_evidence",
    "grade_many",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# The evidence fields each type reads; the others are reported as ignored.
_FIELDS_OF: dict[KRType, frozenset[str]] = {
    "metric": frozenset({"baseline", "target", "actual"}),
    "milestone": frozenset({"milestones_done", "milestones_total"}),
    "binary": frozenset({"done", "actual"}),
    "maintain": frozenset({"threshold", "actual"}),
}


class EvidenceGrade(msgspec.Struct, frozen=True, kw_only=True):
    """The grade a KR's evidence supports, on Google's 0–1 scale, with its reasons.

    ``level`` is the catalogue level the grade falls in (the highest at or below
    it, written ``"0.0"``, ``"0.3"``, ``"0.7"`` or ``"1.0"``). ``overshoot`` is the
    attainment beyond the target for a metric (0.25 for 125 %), else ``None``.
    """

    kr_id: str
    kr_type: KRType
    grade: float
    level: str
    level_title: str
    level_description: str
    reasons: tuple[str, ...]
    overshoot: float | None = None
    warnings: tuple[str, ...] = ()
    catalogue_version: str = ""


class EvidenceProblem(msgspec.Struct, frozen=True, kw_only=True):
    """Why one KR's evidence could not be graded: the KR, the field and the problem."""

    kr_id: str
    field: str
    message: str

    @classmethod
    def from_error(cls, error: EvidenceError) -> EvidenceProblem:
        """The problem an :class:`EvidenceError` describes."""
        return cls(kr_id=error.kr_id, field=error.field, message=error.problem)

    def __str__(self) -> str:
        return f"KR {self.kr_id!r}, field {self.field!r}: {self.message}"


def grade_evidence(kr: KeyResult, catalogue: Catalogue | None = None) -> EvidenceGrade | None:
    """The evidence grade of ``kr``, or ``None`` when it carries no evidence at all.

    Evidence that is there but cannot be graded raises :class:`EvidenceError`
    naming the KR and the field: a missing field the KR's type needs, a target
    equal to its baseline, milestone counts that are negative or impossible, a
    direction that contradicts the numbers.

    >>> grade_evidence(KeyResult(kr_id="k", milestones_done=3, milestones_total=4)).grade
    0.75
    >>> grade_evidence(KeyResult(kr_id="k", description="no numbers")) is None
    True
    """
    cat = default_catalogue() if catalogue is None else catalogue
    kr_type = infer_kr_type(kr)
    if kr_type is None or not kr.has_evidence:
        return None
    rule = cat.rule_for(kr_type)
    overshoot: float | None = None
    extra: list[str] = []
    match rule:
        case MetricRule():
            grade, reasons, overshoot, extra = _grade_metric(kr, rule)
        case MilestoneRule():
            grade, reasons = _grade_milestone(kr)
        case BinaryRule():
            grade, reasons = _grade_binary(kr)
        case MaintainRule():
            grade, reasons = _grade_maintain(kr, rule)
    level = cat.describe(kr_type, grade)
    ignored = [
        name
        for name in EVIDENCE_FIELDS
        if name not in _FIELDS_OF[kr_type] and getattr(kr, name) is not None
    ]
    warnings = list(extra)
    if ignored:
        warnings.append(f"{', '.join(ignored)} ignored: a {kr_type} KR is graded without them")
    return EvidenceGrade(
        kr_id=kr.kr_id,
        kr_type=kr_type,
        grade=grade,
        level=level.label,
        level_title=level.title,
        level_description=level.description,
        reasons=tuple(reasons),
        overshoot=overshoot,
        warnings=tuple(warnings),
        catalogue_version=cat.version,
    )


def grade_many(
    krs: Iterable[KeyResult], catalogue: Catalogue | None = None
) -> tuple[dict[str, EvidenceGrade], list[EvidenceProblem]]:
    """Grade a batch, collecting every KR's problem instead of stopping at the first.

    Returns the grades of the KRs with gradable evidence (KRs without evidence
    are left out) and one :class:`EvidenceProblem` per KR that could not be
    graded, in input order. A repeated ``kr_id`` is a problem; the first is kept.

    >>> grades, problems = grade_many([
    ...     KeyResult(kr_id="a", done=True),
    ...     KeyResult(kr_id="b", baseline=5, target=5, actual=6),
    ... ])
    >>> sorted(grades), [(p.kr_id, p.field) for p in problems]
    (['a'], [('b', 'target')])
    """
    cat = default_catalogue() if catalogue is None else catalogue
    grades: dict[str, EvidenceGrade] = {}
    problems: list[EvidenceProblem] = []
    seen: set[str] = set()
    for kr in krs:
        if kr.kr_id in seen:
            problems.append(
                EvidenceProblem(
                    kr_id=kr.kr_id,
                    field="kr_id",
                    message="appears more than once; the first occurrence is used",
                )
            )
            continue
        seen.add(kr.kr_id)
        try:
            grade = grade_evidence(kr, cat)
        except EvidenceError as exc:
            problems.append(EvidenceProblem.from_error(exc))
            continue
        if grade is not None:
            grades[kr.kr_id] = grade
    return grades, problems


# --- the rules ----------------------------------------------------------------------------


def _require(kr: KeyResult, name: str, kr_type: str) -> float:
    value: float | None = getattr(kr, name)
    if value is None:
        raise EvidenceError(kr.kr_id, name, f"missing: a {kr_type} KR needs it")
    return float(value)


def _grade_metric(
    kr: KeyResult, rule: MetricRule
) -> tuple[float, list[str], float | None, list[str]]:
    baseline = _require(kr, "baseline", "metric")
    target = _require(kr, "target", "metric")
    actual = _require(kr, "actual", "metric")
    if target == baseline:
        raise EvidenceError(
            kr.kr_id,
            "target",
            f"equals the baseline ({baseline:g}), so there is no planned change to measure",
        )
    rising = target > baseline
    if kr.direction is not None and kr.direction != ("increase" if rising else "decrease"):
        if kr.direction in ("at_least", "at_most"):
            problem = (
                f"{kr.direction!r} is for maintain KRs; a metric goes 'increase' or 'decrease'"
            )
        else:
            problem = (
                f"{kr.direction!r} contradicts target {target:g} "
                f"{'above' if rising else 'below'} baseline {baseline:g}"
            )
        raise EvidenceError(kr.kr_id, "direction", problem)
    attainment = (actual - baseline) / (target - baseline)
    if not math.isfinite(attainment):
        # Finite inputs can still overflow when baseline and target are extreme.
        raise EvidenceError(kr.kr_id, "actual", "attainment overflows; the numbers are too large")
    reasons = [
        f"actual {actual:g} vs baseline {baseline:g} and target {target:g}: "
        f"{attainment:.0%} of the way"
    ]
    if not rising:
        reasons.append(
            f"a decreasing target: lower is better, from {baseline:g} down to {target:g}"
        )
    warnings: list[str] = []
    overshoot: float | None = None
    if attainment > 1:
        overshoot = attainment - 1
        reasons.append(
            f"beat the target by {overshoot:.0%} of the planned change; the grade is capped at 1.0"
        )
        if overshoot > rule.ambition_overshoot:
            warnings.append(_overshoot_warning(overshoot, rule))
    elif attainment < 0:
        reasons.append(
            f"moved the wrong way: {'below' if rising else 'above'} the baseline by "
            f"{-attainment:.0%} of the planned change; the grade is 0.0"
        )
    return min(max(attainment, 0.0), 1.0), reasons, overshoot, warnings


def _overshoot_warning(overshoot: float, rule: MetricRule) -> str:
    return (
        f"overshoot of {overshoot:.0%} is above {rule.ambition_overshoot:.0%}: "
        "the target may not have been ambitious"
    )


def _grade_milestone(kr: KeyResult) -> tuple[float, list[str]]:
    if kr.milestones_total is None:
        raise EvidenceError(kr.kr_id, "milestones_total", "missing: a milestone KR needs it")
    if kr.milestones_done is None:
        raise EvidenceError(kr.kr_id, "milestones_done", "missing: a milestone KR needs it")
    done, total = kr.milestones_done, kr.milestones_total
    if total <= 0:
        raise EvidenceError(kr.kr_id, "milestones_total", f"must be at least 1, got {total}")
    if done < 0:
        raise EvidenceError(kr.kr_id, "milestones_done", f"must not be negative, got {done}")
    if done > total:
        raise EvidenceError(
            kr.kr_id,
            "milestones_done",
            f"{done} is more than milestones_total ({total})",
        )
    grade = done / total
    return grade, [f"{done} of {total} milestones done ({grade:.0%})"]


def _grade_binary(kr: KeyResult) -> tuple[float, list[str]]:
    if kr.done is not None:
        done = bool(kr.done)
        if kr.actual is not None and kr.actual != float(done):
            raise EvidenceError(
                kr.kr_id, "actual", f"{kr.actual:g} contradicts done = {str(done).lower()}"
            )
        source = "done" if done else "not done"
    elif kr.actual is not None:
        if kr.actual not in (0.0, 1.0):
            raise EvidenceError(
                kr.kr_id,
                "actual",
                f"a binary KR takes actual 0 or 1 (or done true/false), got {kr.actual:g}",
            )
        done = kr.actual == 1.0
        source = f"actual {kr.actual:g} ({'done' if done else 'not done'})"
    else:
        raise EvidenceError(kr.kr_id, "done", "missing: a binary KR needs done or actual 0/1")
    return (1.0 if done else 0.0), [f"{source}: a binary KR grades {1.0 if done else 0.0:.1f}"]


def _grade_maintain(kr: KeyResult, rule: MaintainRule) -> tuple[float, list[str]]:
    threshold = _require(kr, "threshold", "maintain")
    actual = _require(kr, "actual", "maintain")
    direction = kr.direction or rule.default_direction
    if direction not in ("at_least", "at_most"):
        raise EvidenceError(
            kr.kr_id,
            "direction",
            f"{direction!r} is for metric KRs; a maintain KR goes 'at_least' or 'at_most'",
        )
    tolerance = kr.tolerance if kr.tolerance is not None else rule.default_tolerance(threshold)
    source = "given" if kr.tolerance is not None else "catalogue default"
    shortfall = threshold - actual if direction == "at_least" else actual - threshold
    side = "at or above" if direction == "at_least" else "at or below"
    wrong = "below" if direction == "at_least" else "above"
    if shortfall <= 0:
        return 1.0, [f"actual {actual:g} is {side} the threshold {threshold:g}: held"]
    band = f"the tolerance band of {tolerance:g} ({source})"
    if shortfall <= tolerance:
        grade = 1.0 - (1.0 - rule.band_floor) * shortfall / tolerance
        return grade, [
            f"actual {actual:g} is {shortfall:g} {wrong} the threshold {threshold:g}, "
            f"inside {band}",
            f"the grade falls linearly across the band from 1.0 to {rule.band_floor:g}: "
            f"{shortfall / tolerance:.0%} of the band used, grade {grade:.2f}",
        ]
    return 0.0, [
        f"actual {actual:g} is {shortfall:g} {wrong} the threshold {threshold:g}, "
        f"beyond {band}: grade 0.0"
    ]


# --- many KRs at once, a column at a time ---------------------------------------------------


@dataclass(frozen=True)
class EvidenceColumns:
    """The evidence of many KRs, one list per field (``None`` where a KR has no value).

    Row ``i`` is the KR ``key_result(i)``; :func:`grade_columns` grades them all.
    """

    kr_id: Sequence[str]
    kr_type: Sequence[KRType | None]
    baseline: Sequence[float | None]
    target: Sequence[float | None]
    actual: Sequence[float | None]
    milestones_done: Sequence[int | None]
    milestones_total: Sequence[int | None]
    done: Sequence[bool | None]
    threshold: Sequence[float | None]
    tolerance: Sequence[float | None]
    direction: Sequence[Direction | None]

    def __len__(self) -> int:
        return len(self.kr_id)

    def key_result(
        self,
        i: int,
        *,
        owner_id: str | None = None,
        description: str | None = None,
        weight: float | None = None,
        org_unit: str | None = None,
    ) -> KeyResult:
        """Row ``i`` as a :class:`KeyResult` (raises :class:`EvidenceError` as it would)."""
        return KeyResult(
            kr_id=self.kr_id[i],
            owner_id=owner_id,
            description=description,
            weight=weight,
            org_unit=org_unit,
            kr_type=self.kr_type[i],
            baseline=self.baseline[i],
            target=self.target[i],
            actual=self.actual[i],
            milestones_done=self.milestones_done[i],
            milestones_total=self.milestones_total[i],
            done=self.done[i],
            threshold=self.threshold[i],
            tolerance=self.tolerance[i],
            direction=self.direction[i],
        )


@dataclass(frozen=True)
class EvidenceBatch:
    """The evidence grades of :class:`EvidenceColumns`, as :func:`grade_many` would give them.

    ``grade[i]`` is row ``i``'s grade (NaN: no evidence, or evidence that could not be
    graded), ``warnings`` holds the rows with remarks, ``problems`` one
    :class:`EvidenceProblem` per row that could not be graded (a KR that cannot even be
    built counts too), in row order, with ``problem_rows`` their rows. The full
    :class:`EvidenceGrade` with its reasons is made on request by :meth:`evidence_grade`.
    """

    columns: EvidenceColumns
    catalogue: Catalogue
    grade: npt.NDArray[np.float64]
    warnings: dict[int, tuple[str, ...]]
    problems: list[EvidenceProblem]
    problem_rows: list[int]

    def evidence_grade(self, i: int) -> EvidenceGrade | None:
        """Row ``i``'s grade with its level and reasons (``None`` where ``grade[i]`` is NaN)."""
        if not math.isfinite(self.grade[i]):
            return None
        return grade_evidence(self.columns.key_result(i), self.catalogue)

    def grades(self) -> dict[str, EvidenceGrade]:
        """Every grade by KR id: what :func:`grade_many` returns as its first value."""
        out: dict[str, EvidenceGrade] = {}
        for i in np.flatnonzero(np.isfinite(self.grade)).tolist():
            grade = self.evidence_grade(i)
            if grade is not None:
                out[self.columns.kr_id[i]] = grade
        return out


def _floats(values: Sequence[float | int | None]) -> tuple[FloatArray, BoolArray]:
    """Values (0.0 where None) and presence; an all-empty or full column costs little."""
    n = len(values)
    missing = list(values).count(None)
    if missing == n:
        return np.zeros(n), np.zeros(n, dtype=bool)
    if missing == 0:
        return np.array(values, dtype=np.float64), np.ones(n, dtype=bool)
    has = np.fromiter((v is not None for v in values), dtype=bool, count=n)
    return np.array([0.0 if v is None else v for v in values], dtype=np.float64), has


def grade_columns(cols: EvidenceColumns, catalogue: Catalogue | None = None) -> EvidenceBatch:
    """Grade many KRs a column at a time: the grades, warnings and problems of
    :func:`grade_many` over the rows that build as a :class:`KeyResult`, plus one problem
    per row that does not.

    Rows whose grading is plain (no missing or contradicting field, no ignored field,
    no overflow) are graded with numpy, by the same arithmetic in the same order as
    :func:`grade_evidence`, so the grades are the same doubles; every other row is
    graded one at a time by :func:`grade_evidence` itself.

    >>> cols = EvidenceColumns(kr_id=["a", "b"], kr_type=[None, None], baseline=[0.0, 5.0],
    ...     target=[10.0, 5.0], actual=[4.0, 6.0], milestones_done=[None] * 2,
    ...     milestones_total=[None] * 2, done=[None] * 2, threshold=[None] * 2,
    ...     tolerance=[None] * 2, direction=[None] * 2)
    >>> batch = grade_columns(cols)
    >>> batch.grade.tolist()[0], [(p.kr_id, p.field) for p in batch.problems]
    (0.4, [('b', 'target')])
    """
    cat = default_catalogue() if catalogue is None else catalogue
    n = len(cols)
    baseline, has_b = _floats(cols.baseline)
    target, has_t = _floats(cols.target)
    actual, has_a = _floats(cols.actual)
    threshold, has_th = _floats(cols.threshold)
    tolerance, has_tol = _floats(cols.tolerance)
    done_n, has_md = _floats(cols.milestones_done)
    total_n, has_mt = _floats(cols.milestones_total)
    done_f, has_done = _floats(cols.done)
    done = done_f != 0
    present = {
        "baseline": has_b,
        "target": has_t,
        "actual": has_a,
        "milestones_done": has_md,
        "milestones_total": has_mt,
        "done": has_done,
        "threshold": has_th,
    }
    has_evidence = np.zeros(n, dtype=bool)
    for has in present.values():
        has_evidence |= has
    with np.errstate(all="ignore"):
        # A KR without evidence is not graded (nor built). One that cannot be built (a
        # non-finite number, a negative tolerance) or whose counts are beyond exact
        # doubles goes the slow way.
        odd = np.zeros(n, dtype=bool)
        for values, has in ((baseline, has_b), (target, has_t), (actual, has_a),
                            (threshold, has_th), (tolerance, has_tol)):  # fmt: skip
            odd |= has & ~np.isfinite(values)
        odd |= has_tol & (tolerance < 0)
        odd |= (has_md & (np.abs(done_n) >= 2.0**53)) | (has_mt & (np.abs(total_n) >= 2.0**53))
        odd &= has_evidence

        types = np.where(has_evidence, _infer_types(cols.kr_type, present, n), -1)
        grade = np.full(n, np.nan)
        slow = odd.copy()
        warned: list[int] = []
        for kr_type in KR_TYPES:
            rows = (types == KR_TYPES.index(kr_type)) & ~odd
            if not rows.any():
                continue
            # a field the type does not read is reported as ignored: the slow way
            for name, has in present.items():
                if name not in _FIELDS_OF[kr_type]:
                    slow |= rows & has
            rows &= ~slow
            rule = cat.rule_for(kr_type)
            match rule:
                case MetricRule():
                    ok, value, over = _metric_rows(cols, baseline, target, actual, has_b, has_t,
                                                   has_a, rows, rule)  # fmt: skip
                    warned += np.flatnonzero(ok & over).tolist()
                case MilestoneRule():
                    ok = rows & has_md & has_mt & (total_n > 0) & (done_n >= 0)
                    ok &= done_n <= total_n
                    value = done_n / np.where(ok, total_n, 1.0)
                case BinaryRule():
                    by_done = has_done & (~has_a | (actual == done.astype(np.float64)))
                    by_actual = ~has_done & has_a & ((actual == 0.0) | (actual == 1.0))
                    ok = rows & (by_done | by_actual)
                    value = np.where(has_done, done.astype(np.float64), actual == 1.0)
                    value = np.where(value != 0, 1.0, 0.0)
                case MaintainRule():
                    ok, value = _maintain_rows(cols, threshold, actual, tolerance, has_th, has_a,
                                               has_tol, rows, rule)  # fmt: skip
            grade[ok] = value[ok]
            slow |= rows & ~ok
    warnings: dict[int, tuple[str, ...]] = {}
    metric_rule = cat.rule_for("metric")
    assert isinstance(metric_rule, MetricRule)
    for i in warned:
        overshoot = float(
            (actual[i] - baseline[i]) / (target[i] - baseline[i]) - 1  # as _grade_metric
        )
        warnings[i] = (_overshoot_warning(overshoot, metric_rule),)

    # The slow rows, and the rows of a repeated id, one at a time as grade_many does.
    problems: dict[int, EvidenceProblem] = {}
    kr_ids = cols.kr_id
    repeated = len(set(kr_ids)) != n
    loop = range(n) if repeated else np.flatnonzero(slow).tolist()
    seen: set[str] = set()
    for i in loop:
        if repeated and not slow[i]:
            if not has_evidence[i]:
                continue
            if kr_ids[i] in seen:
                grade[i] = np.nan
                warnings.pop(i, None)
                problems[i] = _repeated(kr_ids[i])
            seen.add(kr_ids[i])
            continue
        try:
            kr = cols.key_result(i)
        except EvidenceError as exc:
            problems[i] = EvidenceProblem.from_error(exc)
            continue
        if not kr.has_evidence:
            continue
        if repeated:
            if kr.kr_id in seen:
                problems[i] = _repeated(kr.kr_id)
                continue
            seen.add(kr.kr_id)
        try:
            found = grade_evidence(kr, cat)
        except EvidenceError as exc:
            problems[i] = EvidenceProblem.from_error(exc)
            continue
        if found is not None:
            grade[i] = found.grade
            if found.warnings:
                warnings[i] = found.warnings
    rows_with = sorted(problems)
    return EvidenceBatch(
        columns=cols,
        catalogue=cat,
        grade=grade,
        warnings=dict(sorted(warnings.items())),
        problems=[problems[i] for i in rows_with],
        problem_rows=rows_with,
    )


def _repeated(kr_id: str) -> EvidenceProblem:
    return EvidenceProblem(
        kr_id=kr_id, field="kr_id", message="appears more than once; the first occurrence is used"
    )


def _infer_types(
    given: Sequence[KRType | None], present: dict[str, BoolArray], n: int
) -> npt.NDArray[np.int64]:
    """Per row, the index in KR_TYPES of its type (as infer_kr_type); -1 for none."""
    code: dict[KRType, int] = {t: i for i, t in enumerate(KR_TYPES)}
    out = np.full(n, -1, dtype=np.int64)
    # the rules of infer_kr_type, weakest first, so that stronger ones overwrite
    out[present["actual"]] = code["metric"]
    out[present["done"]] = code["binary"]
    out[present["baseline"] | present["target"]] = code["metric"]
    out[present["threshold"]] = code["maintain"]
    out[present["milestones_done"] | present["milestones_total"]] = code["milestone"]
    lookup: dict[KRType | None, int] = {t: i for i, t in enumerate(KR_TYPES)}
    lookup[None] = -1
    explicit = np.fromiter(map(lookup.__getitem__, given), np.int64, count=n)
    return np.where(explicit >= 0, explicit, out)


def _metric_rows(
    cols: EvidenceColumns,
    baseline: FloatArray,
    target: FloatArray,
    actual: FloatArray,
    has_b: BoolArray,
    has_t: BoolArray,
    has_a: BoolArray,
    rows: BoolArray,
    rule: MetricRule,
) -> tuple[BoolArray, FloatArray, BoolArray]:
    """Metric rows graded as _grade_metric does: ok rows, grades, overshoot warnings."""
    ok = rows & has_b & has_t & has_a & (target != baseline)
    rising = target > baseline
    if list(cols.direction).count(None) < len(cols.direction):
        direction = np.array([d or "" for d in cols.direction], dtype=object)
        fits = (direction == "") | (direction == np.where(rising, "increase", "decrease"))
        ok &= fits.astype(bool)
    attainment = (actual - baseline) / np.where(ok, target - baseline, 1.0)
    ok &= np.isfinite(attainment)
    # min(max(a, 0.0), 1.0) as Python does it (a -0.0 stays -0.0)
    value = np.where(attainment < 0, 0.0, np.where(attainment > 1, 1.0, attainment))
    over = (attainment > 1) & (attainment - 1 > rule.ambition_overshoot)
    return ok, value, over


def _maintain_rows(
    cols: EvidenceColumns,
    threshold: FloatArray,
    actual: FloatArray,
    tolerance: FloatArray,
    has_th: BoolArray,
    has_a: BoolArray,
    has_tol: BoolArray,
    rows: BoolArray,
    rule: MaintainRule,
) -> tuple[BoolArray, FloatArray]:
    """Maintain rows graded as _grade_maintain does: ok rows and grades."""
    direction = np.array([d or rule.default_direction for d in cols.direction], dtype=object)
    at_least = (direction == "at_least").astype(bool)
    at_most = (direction == "at_most").astype(bool)
    ok = rows & has_th & has_a & (at_least | at_most)
    default = np.where(
        threshold == 0, rule.zero_threshold_tolerance, rule.tolerance_fraction * np.abs(threshold)
    )
    band = np.where(has_tol, tolerance, default)
    shortfall = np.where(at_least, threshold - actual, actual - threshold)
    inside = 1.0 - (1.0 - rule.band_floor) * shortfall / np.where(band == 0, 1.0, band)
    value = np.where(shortfall <= 0, 1.0, np.where(shortfall <= band, inside, 0.0))
    return ok, value
