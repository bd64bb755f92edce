"""Errors raised by the anchors package.

Every error here derives from :class:`AnchorError`; catch that to handle any
problem with anchors, scales or evidence in one place::

    AnchorError (ValueError)
    ├── ScaleError        an unknown or malformed scale, or a value outside it
    ├── CatalogueError    a malformed anchor catalogue; names the entry
    └── EvidenceError     evidence that cannot be graded; names the KR and field

They subclass ``ValueError`` so Python callers can treat them as bad input, and
the service maps them to 400 problem responses in one place.
"""

from __future__ import annotations

__all__ = ["AnchorError", "CatalogueError", "EvidenceError", "ScaleError"]


class AnchorError(ValueError):
    """Base of every anchors error."""


class ScaleError(AnchorError):
    """A scale name that is not known, or a LOW:HIGH range that is malformed."""


class CatalogueError(AnchorError):
    """A malformed anchor catalogue. ``entry`` names the offending entry."""

    def __init__(self, entry: str, problem: str) -> None:
        super().__init__(f"catalogue entry {entry!r}: {problem}")
        self.entry = entry
        self.problem = problem


class EvidenceError(AnchorError):
    """Evidence that cannot be turned into a grade. Names the KR and the field."""

    def __init__(self, kr_id: str, field: str, problem: str) -> None:
        super().__init__(f"KR {kr_id!r}, field {field!r}: {problem}")
        self.kr_id = kr_id
        self.field = field
        self.problem = problem
