"""Model specifications: frozen settings that ``fit`` a :class:`GradeTable`.

A spec holds settings only; what a fit learns lives in the returned
:class:`~calibrate.results.CalibrationFit`, which carries the spec back.

>>> AdditiveModel(confidence=0.95).confidence
0.95
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import msgspec

from calibrate.errors import ModelError

if TYPE_CHECKING:
    from calibrate.results import CalibrationFit
    from calibrate.table import GradeTable

__all__ = [
    "MODEL_NAMES",
    "AdditiveModel",
    "AffineModel",
    "FixedModel",
    "HeldVariance",
    "MeanModel",
    "Model",
    "ZScoreModel",
    "model_from_name",
]


class _Spec(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="name"
):
    """Settings shared by every model."""

    #: Two-sided coverage of every interval.
    confidence: float = 0.90
    #: False-discovery rate at which graders are flagged (Benjamini–Hochberg q-values).
    fdr: float = 0.05
    #: Smallest leniency worth flagging, on Google's 0–1 scale (converted to the input scale).
    min_effect: float = 0.05
    #: Fewer linking grades than this and a grader is ``insufficient_data``.
    min_linked: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ModelError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0.0 < self.fdr < 1.0:
            raise ModelError(f"fdr must be in (0, 1), got {self.fdr}")
        if not 0.0 <= self.min_effect < 1.0:
            raise ModelError(f"min_effect must be in [0, 1), got {self.min_effect}")
        if self.min_linked < 1:
            raise ModelError(f"min_linked must be at least 1, got {self.min_linked}")

    def fit(self, table: GradeTable) -> CalibrationFit:
        """Fit this model to ``table`` and return the frozen result."""
        from calibrate.engine import fit_model

        return fit_model(self, table)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data, as stored in every result."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


class MeanModel(_Spec, frozen=True, tag="mean"):
    """Raw average of each KR's grades: the naive baseline."""


class ZScoreModel(_Spec, frozen=True, tag="zscore"):
    """Per-grader standardisation (the common HR baseline), back on the pooled mean and SD."""


class FixedModel(_Spec, frozen=True, tag="fixed"):
    """Two-way fixed effects by least squares (KR + grader), no shrinkage.

    Evidence grades enter as a reference grader whose effect is fixed at 0.
    Without evidence, grader effects sum to zero within each linked part.
    """


class HeldVariance(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Variance components to hold instead of estimating them (input-scale units).

    Their ratios to ``residual`` are held; the residual variance itself is re-estimated.
    A what-if preview holds the baseline's components, so the moves it shows come
    from the proposed changes, not from re-estimated variances.
    """

    kr: float
    grader: float
    residual: float
    evidence: float | None = None

    def __post_init__(self) -> None:
        for name in ("kr", "grader", "residual", "evidence"):
            value = getattr(self, name)
            if value is None and name == "evidence":
                continue
            if not (isinstance(value, float | int) and math.isfinite(value) and value > 0):
                raise ModelError(f"hold_variance.{name} must be a finite number > 0")


class AdditiveModel(_Spec, frozen=True, tag="additive"):
    """Grade = KR achievement + grader leniency + noise, crossed random effects.

    Variance components by REML. Evidence grades are extra observations of a KR's
    achievement, with their own estimated noise variance, and define the zero of
    leniency. Leniency is measured within KRs (against the evidence and co-graders;
    the KR effects carry no prior) and shrunk empirical-Bayes with a spike-and-slab
    prior. A KR's calibrated grade weights its grades by their grader's own noise
    variance (empirical Bayes over all graders) and its evidence; intervals use t
    quantiles. See
    :mod:`calibrate.scoring`.
    """

    #: Hold these variance components instead of estimating them by REML.
    hold_variance: HeldVariance | None = None


class AffineModel(_Spec, frozen=True, tag="affine"):
    """Additive plus a per-grader scale on the KR achievement, shrunk toward 1.

    A scale below 1 means the grader compresses grades toward the middle.
    """

    #: Hold these variance components instead of estimating them by REML.
    hold_variance: HeldVariance | None = None
    #: Smallest compression or expansion worth flagging, as |1 - scale|.
    min_scale_effect: float = 0.2
    #: Alternating updates between the scales and the additive part.
    max_iterations: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.min_scale_effect < 1.0:
            raise ModelError(f"min_scale_effect must be in (0, 1), got {self.min_scale_effect}")
        if self.max_iterations < 1:
            raise ModelError("max_iterations must be at least 1")


Model = MeanModel | ZScoreModel | FixedModel | AdditiveModel | AffineModel

_BY_NAME: dict[str, type[_Spec]] = {
    "mean": MeanModel,
    "zscore": ZScoreModel,
    "fixed": FixedModel,
    "additive": AdditiveModel,
    "affine": AffineModel,
}
MODEL_NAMES: tuple[str, ...] = tuple(_BY_NAME)


def model_from_name(name: str, **settings: Any) -> Model:
    """Build a model spec by name (``additive``, ``affine``, ``fixed``, ``zscore``, ``mean``).

    >>> model_from_name("fixed", confidence=0.95).confidence
    0.95
    """
    cls = _BY_NAME.get(name)
    if cls is None:
        raise ModelError(f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)}")
    try:
        spec = cls(**settings)
    except TypeError as exc:
        raise ModelError(str(exc)) from exc
    return spec  # type: ignore[return-value]
