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
from collections.abc import Iterable

import msgspec

from anchors.catalogue import (
    BinaryRule,
    Catalogue,
    MaintainRule,
    MetricRule,
    MilestoneRule,
    default_catalogue,
)
from anchors.errors import EvidenceError
from anchors.kr import EVIDENCE_FIELDS, KeyResult, KRType, infer_kr_type

__all__ = ["EvidenceGrade", "EvidenceProblem", "grade_evidence", "grade_many"]

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
            warnings.append(
                f"overshoot of {overshoot:.0%} is above {rule.ambition_overshoot:.0%}: "
                "the target may not have been ambitious"
            )
    elif attainment < 0:
        reasons.append(
            f"moved the wrong way: {'below' if rising else 'above'} the baseline by "
            f"{-attainment:.0%} of the planned change; the grade is 0.0"
        )
    return min(max(attainment, 0.0), 1.0), reasons, overshoot, warnings


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
