"""Behavioural anchors: KR types, grading scales, evidence rules and the anchor catalogue.

Pure functions of data: no I/O beyond reading the catalogue shipped in the
package. The service and the CLI wrap these.
"""

from anchors.catalogue import (
    AnchorLevel,
    BinaryRule,
    Catalogue,
    MaintainRule,
    MetricRule,
    MilestoneRule,
    Rule,
    TypeAnchors,
    catalogue_to_builtins,
    catalogue_to_toml,
    default_catalogue,
    default_catalogue_text,
    load_catalogue,
)
from anchors.errors import AnchorError, CatalogueError, EvidenceError, ScaleError
from anchors.evidence import EvidenceGrade, EvidenceProblem, grade_evidence, grade_many
from anchors.kr import KR_TYPES, Direction, KeyResult, KRType, infer_kr_type
from anchors.outcome import OutcomeCheck, check_outcome
from anchors.scales import (
    GOOGLE_LEVELS,
    NAMED_SCALES,
    Scale,
    convert,
    crosses_level,
    level_boundaries,
    level_index,
    parse_scale,
)

__all__ = [
    "GOOGLE_LEVELS",
    "KR_TYPES",
    "NAMED_SCALES",
    "AnchorError",
    "AnchorLevel",
    "BinaryRule",
    "Catalogue",
    "CatalogueError",
    "Direction",
    "EvidenceError",
    "EvidenceGrade",
    "EvidenceProblem",
    "KRType",
    "KeyResult",
    "MaintainRule",
    "MetricRule",
    "MilestoneRule",
    "OutcomeCheck",
    "Rule",
    "Scale",
    "ScaleError",
    "TypeAnchors",
    "catalogue_to_builtins",
    "catalogue_to_toml",
    "check_outcome",
    "convert",
    "crosses_level",
    "default_catalogue",
    "default_catalogue_text",
    "grade_evidence",
    "grade_many",
    "infer_kr_type",
    "level_boundaries",
    "level_index",
    "load_catalogue",
    "parse_scale",
]
