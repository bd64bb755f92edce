"""The HTTP API's request and response bodies (msgspec structs, so OpenAPI follows the code).

Inputs forbid unknown fields, so a misspelt field is a 400 naming it rather than a
silently ignored value. Times are UTC ``datetime``; estimates that could not be made
are ``None`` with a ``reason``, as in the core results.
"""

from __future__ import annotations

from datetime import datetime
from typing import Generic, Literal, TypeVar

import msgspec

__all__ = [
    "SCOPES",
    "AchievementState",
    "ApiKeyCreated",
    "ApiKeyIn",
    "ApiKeyOut",
    "CatalogueOut",
    "EvidenceOut",
    "FieldProblem",
    "GradeIn",
    "GradeOut",
    "GradeValue",
    "GradeVersion",
    "GradesIn",
    "HealthOut",
    "KRIn",
    "KROut",
    "KRsIn",
    "OutcomeOut",
    "OwnerOut",
    "Page",
    "RunIn",
    "RunOut",
    "RunStatus",
    "Scope",
    "UpsertResult",
]

T = TypeVar("T")

Scope = Literal[
    "grades:write", "scores:read", "calibration:run", "anchors:admin", "hr:read", "admin"
]
SCOPES: tuple[str, ...] = (
    "grades:write",
    "scores:read",
    "calibration:run",
    "anchors:admin",
    "hr:read",
    "admin",
)
RunStatus = Literal["queued", "running", "done", "failed"]
#: ``provisional``: from a run that is not published; ``published-provisional``: from the
#: published run of a cycle that is still open; ``final``: the cycle is locked (sessions).
AchievementState = Literal["provisional", "published-provisional", "final"]


class FieldProblem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One invalid value: 1-based row of a bulk request (if any), field and what is wrong."""

    problem: str
    field: str | None = None
    row: int | None = None


class GradeIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One grade on the cycle's scale: grader ``grader_id`` graded KR ``kr_id``."""

    kr_id: str
    grader_id: str
    grade: float
    owner_id: str | None = None


class GradesIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A bulk grade upsert (a bare JSON array of grades is accepted too, and CSV)."""

    grades: list[GradeIn]


class GradeValue(msgspec.Struct, frozen=True, array_like=True):
    """A grade as stored: compact, byte-identical for identical grades (re-sends are no-ops)."""

    grade: float
    owner_id: str | None = None


class GradeOut(msgspec.Struct, frozen=True, kw_only=True):
    """A stored grade with its version (1 = never changed) and time of last change."""

    kr_id: str
    grader_id: str
    grade: float
    owner_id: str | None
    version: int
    updated_at: datetime


class GradeVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One earlier or current value of a grade."""

    version: int
    grade: float
    owner_id: str | None
    updated_at: datetime


class KRIn(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    """A Key Result with its type and evidence (fields as in :class:`anchors.KeyResult`)."""

    kr_id: str
    owner_id: str | None = None
    kr_type: str | None = None
    baseline: float | None = None
    target: float | None = None
    actual: float | None = None
    milestones_done: int | None = None
    milestones_total: int | None = None
    done: bool | None = None
    threshold: float | None = None
    tolerance: float | None = None
    direction: str | None = None
    description: str | None = None
    weight: float | None = None
    org_unit: str | None = None


class KRsIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A bulk KR upsert (a bare JSON array is accepted too, and CSV)."""

    krs: list[KRIn]


class EvidenceOut(msgspec.Struct, frozen=True, kw_only=True):
    """The anchors' grade of a KR's evidence (Google 0–1 scale), its level and why."""

    grade: float
    kr_type: str
    level: str
    level_title: str
    reasons: list[str]
    warnings: list[str]


class OutcomeOut(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the KR's description reads as an output (activity) rather than an outcome."""

    is_output: bool
    triggers: list[str]
    reasons: list[str]
    suggestion: str | None


class KROut(msgspec.Struct, frozen=True, kw_only=True):
    """A stored KR with its evidence grade, the reason when there is none, and the outcome check."""

    kr: KRIn
    version: int
    updated_at: datetime
    evidence: EvidenceOut | None
    evidence_reason: str | None
    outcome: OutcomeOut | None


class UpsertResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a bulk upsert did; ``replayed``: answered from an earlier same Idempotency-Key."""

    received: int
    created: int
    updated: int
    unchanged: int
    replayed: bool = False


class Page(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """One page of a bulk read; pass ``next_cursor`` as ``cursor`` for the next (None: last)."""

    items: list[T]
    next_cursor: str | None


class RunIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A calibration request: model name, scale (default: the cycle's) and interval coverage."""

    model: str = "additive"
    scale: str | None = None
    confidence: float = 0.90


class RunOut(msgspec.Struct, frozen=True, kw_only=True):
    """A calibration run: its status and, once done, what it fitted."""

    run_id: str
    cycle: str
    status: RunStatus
    model: str
    scale: str
    confidence: float
    published: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    error: str | None
    input_hash: str | None
    model_version: str | None
    n_grades: int | None
    n_krs: int | None
    n_graders: int | None
    summary: str | None


class OwnerOut(msgspec.Struct, frozen=True, kw_only=True):
    """One owner's calibrated achievement (cycle scale) with interval and state."""

    owner_id: str
    n_krs: int
    achievement: float | None
    std_error: float | None
    ci_low: float | None
    ci_high: float | None
    reason: str | None
    state: AchievementState
    run_id: str


class CatalogueOut(msgspec.Struct, frozen=True, kw_only=True):
    """An anchor catalogue as TOML: stored revision (0 = the default), its own version, types."""

    revision: int
    version: str
    toml: str
    types: list[str]


class ApiKeyIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new API key for this organisation."""

    scopes: list[Scope]
    name: str | None = None
    rate_limit: int | None = None


class ApiKeyOut(msgspec.Struct, frozen=True, kw_only=True):
    """An API key's record (never the key itself)."""

    key_id: str
    org: str
    scopes: list[str]
    name: str | None
    rate_limit: int | None
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A created key: ``key`` is shown this once and never stored."""

    key: str
    record: ApiKeyOut


class HealthOut(msgspec.Struct, frozen=True, kw_only=True):
    """Liveness or readiness."""

    status: Literal["ok", "unavailable"]
    detail: str | None = None
