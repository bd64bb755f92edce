"""Behavioural anchors: KR types, grading scales, evidence rules and the anchor catalogue."""

from anchors.errors import AnchorError, CatalogueError, EvidenceError, ScaleError
from anchors.scales import GOOGLE_LEVELS, NAMED_SCALES, Scale, convert, parse_scale

__all__ = [
    "GOOGLE_LEVELS",
    "NAMED_SCALES",
    "AnchorError",
    "CatalogueError",
    "EvidenceError",
    "Scale",
    "ScaleError",
    "convert",
    "parse_scale",
]
