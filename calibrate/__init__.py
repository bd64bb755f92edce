"""Statistical normalisation of OKR grades: grader leniency, compression and calibrated scores.

Pure numerics (numpy, scipy): a :class:`GradeTable` in, a frozen
:class:`CalibrationFit` out. No I/O, no clock, no global random state.
"""

from calibrate.errors import CalibrateError, InputError, ModelError
from calibrate.models import (
    MODEL_NAMES,
    AdditiveModel,
    AffineModel,
    FixedModel,
    HeldVariance,
    MeanModel,
    Model,
    ZScoreModel,
    model_from_name,
)
from calibrate.results import (
    MODEL_VERSION,
    CalibrationFit,
    ComparedWith,
    Component,
    GraderEffect,
    GraderFlag,
    KRColumns,
    KRScore,
    OwnerAchievement,
    UnexpectedGrade,
    VarianceComponents,
)
from calibrate.table import MAX_ID_LENGTH, GradeRecord, GradeTable

__all__ = [
    "MAX_ID_LENGTH",
    "MODEL_NAMES",
    "MODEL_VERSION",
    "AdditiveModel",
    "AffineModel",
    "CalibrateError",
    "CalibrationFit",
    "ComparedWith",
    "Component",
    "FixedModel",
    "GradeRecord",
    "GradeTable",
    "GraderEffect",
    "GraderFlag",
    "HeldVariance",
    "InputError",
    "KRColumns",
    "KRScore",
    "MeanModel",
    "Model",
    "ModelError",
    "OwnerAchievement",
    "UnexpectedGrade",
    "VarianceComponents",
    "ZScoreModel",
    "model_from_name",
]
