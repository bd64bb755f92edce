"""The Key Result as the anchors package sees it: its type and its evidence.

A :class:`KeyResult` is plain data. Construction rejects only what is wrong
for every KR type (an empty id, a negative weight, a non-finite number);
whether the evidence suits the KR's type is decided when it is graded, so a
batch can report every bad KR at once (see :func:`anchors.evidence.grade_many`).

>>> kr = KeyResult(kr_id="kr-1", baseline=30, target=50, actual=42)
>>> infer_kr_type(kr)
'metric'
"""

from __future__ import annotations

import math
from typing import Final, Literal

import msgspec

from anchors.errors import EvidenceError

__all__ = [
    "DIRECTIONS",
    "EVIDENCE_FIELDS",
    "KR_TYPES",
    "MAX_ID_LENGTH",
    "Direction",
    "KRType",
    "KeyResult",
    "infer_kr_type",
]

KRType = Literal["metric", "milestone", "binary", "maintain"]
Direction = Literal["increase", "decrease", "at_least", "at_most"]

#: Every KR type, in the order the catalogue lists them.
KR_TYPES: Final[tuple[KRType, ...]] = ("metric", "milestone", "binary", "maintain")
DIRECTIONS: Final[tuple[Direction, ...]] = ("increase", "decrease", "at_least", "at_most")

#: Longest id accepted (the same limit as ``calibrate.MAX_ID_LENGTH``).
MAX_ID_LENGTH: Final = 200

#: The fields that carry evidence. ``tolerance`` and ``direction`` only qualify
#: evidence, so a KR with nothing but those has no evidence.
EVIDENCE_FIELDS: Final[tuple[str, ...]] = (
    "baseline",
    "target",
    "actual",
    "milestones_done",
    "milestones_total",
    "done",
    "threshold",
)

_NUMERIC_FIELDS: Final[tuple[str, ...]] = (
    "baseline",
    "target",
    "actual",
    "threshold",
    "tolerance",
    "weight",
)


class KeyResult(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One Key Result with whatever evidence of its achievement is known.

    ``kr_type`` may be left out and is then inferred from the fields present
    (:func:`infer_kr_type`). A binary KR gives ``done`` or, equivalently,
    ``actual`` 0 or 1. ``direction`` is inferred for a metric (from target
    against baseline) and defaults to ``at_least`` for a maintain KR;
    ``tolerance`` defaults to the catalogue's maintain rule.
    """

    kr_id: str
    owner_id: str | None = None
    kr_type: KRType | None = None
    baseline: float | None = None
    target: float | None = None
    actual: float | None = None
    milestones_done: int | None = None
    milestones_total: int | None = None
    done: bool | None = None
    threshold: float | None = None
    tolerance: float | None = None
    direction: Direction | None = None
    description: str | None = None
    weight: float | None = None
    org_unit: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.kr_id, self.kr_id, "kr_id", required=True)
        for name in ("owner_id", "org_unit"):
            _check_id(self.kr_id, getattr(self, name), name, required=False)
        # msgspec checks these Literals when decoding, but not when Python code builds a KR.
        if self.kr_type is not None and self.kr_type not in KR_TYPES:
            raise EvidenceError(
                self.kr_id, "kr_type", f"{self.kr_type!r} is not one of {', '.join(KR_TYPES)}"
            )
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise EvidenceError(
                self.kr_id, "direction", f"{self.direction!r} is not one of {', '.join(DIRECTIONS)}"
            )
        for name in _NUMERIC_FIELDS:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise EvidenceError(self.kr_id, name, f"must be a finite number, got {value!r}")
        if self.weight is not None and self.weight < 0:
            raise EvidenceError(self.kr_id, "weight", f"must not be negative, got {self.weight:g}")
        if self.tolerance is not None and self.tolerance < 0:
            raise EvidenceError(
                self.kr_id, "tolerance", f"must not be negative, got {self.tolerance:g}"
            )

    @property
    def has_evidence(self) -> bool:
        """True when at least one evidence field is set."""
        return any(getattr(self, name) is not None for name in EVIDENCE_FIELDS)


def _check_id(kr_id: str, value: object, name: str, *, required: bool) -> None:
    if value is None and not required:
        return
    # When the KR id itself is bad, the error still has to name some KR: use a
    # short printable form of what was given.
    label = kr_id[:40] + "…" if isinstance(kr_id, str) and len(kr_id) > 40 else str(kr_id)
    if not isinstance(value, str) or not value.strip():
        raise EvidenceError(label, name, "must be a non-empty id")
    if len(value) > MAX_ID_LENGTH:
        raise EvidenceError(
            label, name, f"is longer than {MAX_ID_LENGTH} characters ({len(value)})"
        )


def infer_kr_type(kr: KeyResult) -> KRType | None:
    """The KR's type: as given, else inferred from its evidence, else ``None``.

    Inference looks for the most specific fields first: milestone counts mean
    ``milestone``; a threshold means ``maintain`` (it also needs an actual, so
    it must come before the metric test); a baseline or a target means
    ``metric``; ``done`` means ``binary``; an actual alone is read as a metric
    (grading then names the missing baseline). No evidence at all gives ``None``.

    >>> infer_kr_type(KeyResult(kr_id="a", threshold=99.9, actual=99.95))
    'maintain'
    >>> infer_kr_type(KeyResult(kr_id="b")) is None
    True
    """
    if kr.kr_type is not None:
        return kr.kr_type
    if kr.milestones_done is not None or kr.milestones_total is not None:
        return "milestone"
    if kr.threshold is not None:
        return "maintain"
    if kr.baseline is not None or kr.target is not None:
        return "metric"
    if kr.done is not None:
        return "binary"
    if kr.actual is not None:
        return "metric"
    return None
