"""Frozen result objects of a calibration fit.

Every estimate carries its standard error and interval. An estimate that cannot
be made is ``None`` with a ``reason``; never NaN, never a silent 0. A
:class:`CalibrationFit` carries the model specification, the model version and
the hash of its input, so every number can be reproduced from its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = [
    "MODEL_VERSION",
    "CalibrationFit",
    "ComparedWith",
    "Component",
    "GraderEffect",
    "GraderFlag",
    "KRColumns",
    "KRScore",
    "OwnerAchievement",
    "UnexpectedGrade",
    "VarianceComponents",
]

#: Bumped whenever a model's numbers could change for the same input.
MODEL_VERSION = "2.2.0"

GraderFlag = Literal["lenient", "severe", "compressing", "expanding", "ok", "insufficient_data"]
#: What a leniency is measured against: the evidence grades; the average grader (in a
#: part of the grading graph no evidence reaches, set by that part's graders alone); or,
#: for the mean and zscore baselines, the mean of all grades.
ComparedWith = Literal["evidence", "graders", "raw_mean"]


class GraderEffect(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One grader's estimated leniency (and scale, for the affine model).

    ``leniency`` is in the input scale's units: how far this grader's grades sit
    above (+) or below (−) the evidence, or the average grader where no evidence
    links them; ``compared_with`` says which. Graders in a part (``component``) of
    the grading graph that no evidence reaches are compared with the graders of that
    part only, so two leniencies of different parts measured against ``graders``
    share no common zero. ``scale`` is 1 for a grader who spreads grades like the
    evidence, below 1 for one who compresses toward the middle.
    """

    grader_id: str
    n_grades: int
    n_linking: int
    component: int
    leniency: float | None
    std_error: float | None
    ci_low: float | None
    ci_high: float | None
    z: float | None
    p_value: float | None
    q_value: float | None
    flag: GraderFlag
    scale: float | None = None
    scale_std_error: float | None = None
    scale_q_value: float | None = None
    infit: float | None = None
    outfit: float | None = None
    reason: str | None = None
    #: None where ``leniency`` is None (and in results stored before version 2.2.0).
    compared_with: ComparedWith | None = None


class KRScore(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One KR: raw and evidence grade, and the calibrated grade with its interval (input scale)."""

    kr_id: str
    owner_id: str | None
    n_grades: int
    raw_grade: float
    evidence_grade: float | None
    calibrated_grade: float | None
    std_error: float | None
    ci_low: float | None
    ci_high: float | None
    reason: str | None = None


@dataclass(frozen=True, eq=False)
class KRColumns:
    """The per-KR results as columns: :attr:`CalibrationFit.krs` one column at a time.

    A reader that wants every KR at once (a CSV writer, say) takes these and skips a row
    object per KR. NaN marks what a row has as ``None``: an estimate that could not be
    made, or no evidence grade; ``reason`` is given for every KR without a standard error.
    """

    kr_id: tuple[str, ...]
    owner_id: tuple[str | None, ...]
    n_grades: npt.NDArray[np.int64]
    raw_grade: npt.NDArray[np.float64]
    evidence_grade: npt.NDArray[np.float64]
    calibrated_grade: npt.NDArray[np.float64]
    std_error: npt.NDArray[np.float64]
    ci_low: npt.NDArray[np.float64]
    ci_high: npt.NDArray[np.float64]
    #: Why a KR has no standard error (the same for all of them in one fit).
    missing_reason: str

    def reason(self) -> list[str | None]:
        """Per KR: ``missing_reason`` where the standard error is NaN, else None."""
        why = self.missing_reason
        return [why if bad else None for bad in np.isnan(self.std_error).tolist()]

    def rows(self) -> tuple[KRScore, ...]:
        """The same results as one :class:`KRScore` per KR."""
        return tuple(
            KRScore(
                kr_id=kid,
                owner_id=owner,
                n_grades=ng,
                raw_grade=rg,
                evidence_grade=evg,
                calibrated_grade=cg,
                std_error=sev,
                ci_low=lo,
                ci_high=hi,
                reason=rs,
            )
            for kid, owner, ng, rg, evg, cg, sev, lo, hi, rs in zip(
                self.kr_id,
                self.owner_id,
                self.n_grades.tolist(),
                self.raw_grade.tolist(),
                _nones(self.evidence_grade),
                _nones(self.calibrated_grade),
                _nones(self.std_error),
                _nones(self.ci_low),
                _nones(self.ci_high),
                self.reason(),
                strict=True,
            )
        )


def _nullable(
    values: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_]
) -> list[float | None]:
    """Floats where ``mask`` holds, ``None`` elsewhere (never NaN across the boundary)."""
    out: list[float | None] = values.tolist()
    for i in np.flatnonzero(~mask).tolist():
        out[i] = None
    return out


def _nones(values: npt.NDArray[np.float64]) -> list[float | None]:
    """Floats, with ``None`` where NaN."""
    return _nullable(values, ~np.isnan(values))


class OwnerAchievement(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An owner's achievement: the (weighted) mean of their calibrated KR grades."""

    owner_id: str
    n_krs: int
    achievement: float | None
    std_error: float | None
    ci_low: float | None
    ci_high: float | None
    reason: str | None = None


class VarianceComponents(msgspec.Struct, frozen=True, kw_only=True):
    """Variance components on the input scale, and the share of grade variance due to graders."""

    method: str
    kr: float | None
    grader: float | None
    residual: float | None
    evidence: float | None
    grader_share: float | None
    scale_sd: float | None = None
    reason: str | None = None


class Component(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A connected part of the grader–KR–evidence graph."""

    id: int
    n_graders: int
    n_krs: int
    n_evidence: int
    is_reference: bool


class UnexpectedGrade(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A grade far from what the model expects (|standardised residual| >= 3)."""

    kr_id: str
    grader_id: str
    grade: float
    expected: float
    std_residual: float


class CalibrationFit(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a fit found, with the spec, version and input hash that produced it."""

    model: str
    model_spec: dict[str, object]
    model_version: str
    input_hash: str
    scale: str
    scale_low: float
    scale_high: float
    confidence: float
    n_grades: int
    n_krs: int
    n_graders: int
    graders: tuple[GraderEffect, ...]
    krs: tuple[KRScore, ...]
    owners: tuple[OwnerAchievement, ...]
    variance: VarianceComponents
    components: tuple[Component, ...]
    unexpected: tuple[UnexpectedGrade, ...]
    converged: bool
    iterations: int
    warnings: tuple[str, ...] = ()

    def flagged(self) -> tuple[GraderEffect, ...]:
        """Graders flagged lenient, severe, compressing or expanding."""
        return tuple(g for g in self.graders if g.flag not in ("ok", "insufficient_data"))

    def summary(self) -> str:
        """A short readable summary: flagged graders, variance shares, components."""
        lines = [
            f"okrcal {self.model} model v{self.model_version}: {self.n_grades} grades, "
            f"{self.n_krs} KRs, {self.n_graders} graders on the {self.scale} scale",
            f"input {self.input_hash}",
        ]
        v = self.variance
        if v.grader_share is not None:
            lines.append(
                f"variance ({v.method}): KR {_fmt(v.kr)}, grader {_fmt(v.grader)}, "
                f"residual {_fmt(v.residual)}, evidence {_fmt(v.evidence)}; "
                f"graders explain {100 * v.grader_share:.1f}% of grade variance"
            )
        elif v.reason:
            lines.append(f"variance: {v.reason}")
        flagged = self.flagged()
        counts: dict[str, int] = {}
        for g in self.graders:
            counts[g.flag] = counts.get(g.flag, 0) + 1
        lines.append("graders: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
        for g in sorted(flagged, key=lambda g: -abs(g.leniency or 0.0))[:20]:
            extra = f", scale {g.scale:.2f}" if g.scale is not None else ""
            lines.append(
                f"  {g.flag:<11} {g.grader_id}: leniency {_fmt(g.leniency)} "
                f"± {_fmt(g.std_error)} (q={_fmt(g.q_value)}){extra}"
            )
        if len(flagged) > 20:
            lines.append(f"  ... and {len(flagged) - 20} more")
        unlinked = [c for c in self.components if not c.is_reference]
        if unlinked:
            lines.append(
                f"{len(unlinked)} part(s) of the grading graph are not linked to the reference: "
                f"{sum(c.n_graders for c in unlinked if c.n_graders >= 2)} grader(s) compared "
                "within their own part only, "
                f"{sum(c.n_graders for c in unlinked if c.n_graders < 2)} without comparable "
                "leniency"
            )
        lines.append(f"{len(self.unexpected)} unexpected grade(s) (|standardised residual| >= 3)")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"
