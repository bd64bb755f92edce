"""Decoding and validating bulk request bodies (JSON or CSV), listing every invalid row at once.

A bulk request is all-or-nothing, so the whole body is checked before anything is
written, and the problem response names each bad row (1-based, as counted in the
request: the CSV header is not a row) and field.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

import msgspec

from anchors import Scale
from calibrate import MAX_ID_LENGTH
from service.problems import ProblemError
from service.schemas import FieldProblem, GradeIn, KRIn

__all__ = ["MAX_LISTED_ERRORS", "check_id", "parse_grades", "parse_krs"]

T = TypeVar("T", bound=msgspec.Struct)

#: A body with more invalid values than this lists only the first ones.
MAX_LISTED_ERRORS = 1000

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_AT_FIELD = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]*)`")


def check_id(value: str | None, field: str, row: int | None, errors: list[FieldProblem]) -> None:
    """Append a problem when ``value`` is not a usable id (empty, too long, control characters)."""
    if value is None:
        return
    if not value.strip():
        errors.append(FieldProblem(problem="must be a non-empty id", field=field, row=row))
    elif len(value) > MAX_ID_LENGTH:
        errors.append(
            FieldProblem(problem=f"is longer than {MAX_ID_LENGTH} characters", field=field, row=row)
        )
    elif _CONTROL.search(value):
        errors.append(FieldProblem(problem="contains control characters", field=field, row=row))


def _field_of(message: str) -> str | None:
    for pattern in (_UNKNOWN, _MISSING, _AT_FIELD):
        match = pattern.search(message)
        if match:
            return match.group(1)
    return None


def _problem_of(exc: msgspec.DecodeError | UnicodeDecodeError) -> str:
    return str(exc).split(" - at `", 1)[0]


def _json_rows(body: bytes, key: str) -> list[msgspec.Raw]:
    """The raw rows of ``[...]`` or ``{key: [...]}``; 400 for malformed JSON."""
    try:
        top = msgspec.json.decode(body, type=list[msgspec.Raw] | dict[str, msgspec.Raw])
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: test it first
        raise ProblemError(
            400, f"the body must be a JSON array of rows or an object {{{key!r}: [...]}}"
        ) from exc
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ProblemError(400, f"malformed JSON: {exc}") from exc
    if isinstance(top, list):
        return top
    unknown = sorted(set(top) - {key})
    if unknown:
        raise ProblemError(
            400,
            f"unknown field {unknown[0]!r} in the body",
            errors=[FieldProblem(problem="unknown field", field=name) for name in unknown],
        )
    if key not in top:
        raise ProblemError(
            400,
            f"the body has no {key!r} array",
            errors=[FieldProblem(problem="missing", field=key)],
        )
    try:
        return msgspec.json.decode(top[key], type=list[msgspec.Raw])
    except msgspec.ValidationError as exc:
        raise ProblemError(
            400,
            f"{key!r} must be an array",
            errors=[FieldProblem(problem="not an array", field=key)],
        ) from exc


def _decode_json(
    body: bytes, key: str, kind: type[T], errors: list[FieldProblem]
) -> list[tuple[int, T]]:
    decoder = msgspec.json.Decoder(kind)
    out: list[tuple[int, T]] = []
    for row, raw in enumerate(_json_rows(body, key), start=1):
        try:
            out.append((row, decoder.decode(raw)))
        # A row is valid JSON (the array was read as raw rows), so what else fails is a
        # field (ValidationError) or text that is not UTF-8: DecodeError in msgspec 0.23
        # (ValidationError is its subclass), UnicodeDecodeError in earlier releases.
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            errors.append(
                FieldProblem(problem=_problem_of(exc), field=_field_of(str(exc)), row=row)
            )
    return out


def _csv_records(body: bytes, fields: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProblemError(
            400, f"malformed CSV: not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise ProblemError(400, "malformed CSV: no header row")
        header = [h.strip() for h in header]
        unknown = [h for h in header if h not in fields]
        if unknown:
            raise ProblemError(
                400,
                f"malformed CSV: unknown column {unknown[0]!r}",
                errors=[FieldProblem(problem="unknown column", field=h) for h in unknown],
            )
        if len(set(header)) != len(header):
            raise ProblemError(400, "malformed CSV: a column appears twice in the header")
        for row, cells in enumerate(reader, start=1):
            if not cells:
                continue  # blank line
            if len(cells) != len(header):
                raise ProblemError(
                    400,
                    f"malformed CSV: row {row} has {len(cells)} cells, the header {len(header)}",
                    errors=[FieldProblem(problem="wrong number of cells", row=row)],
                )
            # An empty cell means "not given", so optional fields take their default.
            yield row, {h: c for h, c in zip(header, cells, strict=True) if c != ""}
    except csv.Error as exc:
        raise ProblemError(400, f"malformed CSV at line {reader.line_num}: {exc}") from exc


def _decode_csv(body: bytes, kind: type[T], errors: list[FieldProblem]) -> list[tuple[int, T]]:
    fields = tuple(kind.__struct_fields__)
    out: list[tuple[int, T]] = []
    for row, record in _csv_records(body, fields):
        try:
            out.append((row, msgspec.convert(record, kind, strict=False)))
        except msgspec.ValidationError as exc:
            errors.append(
                FieldProblem(problem=_problem_of(exc), field=_field_of(str(exc)), row=row)
            )
    return out


def _decode(
    body: bytes, content_type: str, key: str, kind: type[T], errors: list[FieldProblem]
) -> list[tuple[int, T]]:
    """The decoded rows, each with its 1-based row number in the request."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("text/csv", "application/csv"):
        return _decode_csv(body, kind, errors)
    if media in ("", "application/json") or media.endswith("+json"):
        return _decode_json(body, key, kind, errors)
    raise ProblemError(
        415, f"unsupported content type {media!r}: send application/json or text/csv"
    )


def _finish(
    rows: list[tuple[int, T]], errors: list[FieldProblem], max_rows: int, what: str
) -> list[T]:
    n = len({row for row, _ in rows} | {e.row for e in errors if e.row is not None})
    if n > max_rows:
        raise ProblemError(
            413,
            f"{n} {what} in one request; send at most {max_rows}",
            errors=[FieldProblem(problem=f"more than {max_rows} rows", field=what)],
        )
    if errors:
        errors.sort(key=lambda e: (e.row or 0, e.field or ""))
        raise ProblemError(
            400,
            f"{len(errors)} invalid value(s) in the {what}; nothing was written",
            errors=errors[:MAX_LISTED_ERRORS],
        )
    if n == 0:
        raise ProblemError(
            400, f"no {what} given", errors=[FieldProblem(problem="empty", field=what)]
        )
    return [item for _, item in rows]


def _finite(value: float | None, field: str, row: int, errors: list[FieldProblem]) -> bool:
    if value is not None and not math.isfinite(value):
        errors.append(FieldProblem(problem=f"{value} is not a finite number", field=field, row=row))
        return False
    return True


def parse_grades(body: bytes, content_type: str, scale: Scale, *, max_rows: int) -> list[GradeIn]:
    """Decode and check a bulk grade body against ``scale``; one 400 lists every bad row."""
    errors: list[FieldProblem] = []
    rows = _decode(body, content_type, "grades", GradeIn, errors)
    seen: dict[tuple[str, str], int] = {}
    for row, g in rows:
        check_id(g.kr_id, "kr_id", row, errors)
        check_id(g.grader_id, "grader_id", row, errors)
        check_id(g.owner_id, "owner_id", row, errors)
        if _finite(g.grade, "grade", row, errors) and not scale.low <= g.grade <= scale.high:
            errors.append(
                FieldProblem(
                    problem=f"grade {g.grade:g} is outside the {scale.name} scale "
                    f"[{scale.low:g}, {scale.high:g}]",
                    field="grade",
                    row=row,
                )
            )
        first = seen.setdefault((g.kr_id, g.grader_id), row)
        if first != row:
            errors.append(
                FieldProblem(
                    problem=f"the same (kr_id, grader_id) as row {first}",
                    field="grader_id",
                    row=row,
                )
            )
    return _finish(rows, errors, max_rows, "grades")


def parse_krs(
    body: bytes,
    content_type: str,
    *,
    max_rows: int,
    check_evidence: Callable[[KRIn], str | None] | None = None,
) -> list[KRIn]:
    """Decode and check a bulk KR body; ``check_evidence`` says what is wrong with evidence."""
    errors: list[FieldProblem] = []
    rows = _decode(body, content_type, "krs", KRIn, errors)
    seen: dict[str, int] = {}
    for row, kr in rows:
        check_id(kr.kr_id, "kr_id", row, errors)
        check_id(kr.owner_id, "owner_id", row, errors)
        check_id(kr.org_unit, "org_unit", row, errors)
        finite = True
        for name in ("baseline", "target", "actual", "threshold", "tolerance", "weight"):
            finite &= _finite(getattr(kr, name), name, row, errors)
        if kr.weight is not None and kr.weight < 0:
            errors.append(FieldProblem(problem="must be >= 0", field="weight", row=row))
            finite = False
        for name in ("milestones_done", "milestones_total"):
            value = getattr(kr, name)
            if value is not None and value < 0:
                errors.append(FieldProblem(problem="must be >= 0", field=name, row=row))
                finite = False
        if kr.description is not None and len(kr.description) > 10_000:
            errors.append(
                FieldProblem(problem="longer than 10000 characters", field="description", row=row)
            )
        first = seen.setdefault(kr.kr_id, row)
        if first != row:
            errors.append(
                FieldProblem(problem=f"the same kr_id as row {first}", field="kr_id", row=row)
            )
        elif finite and check_evidence is not None:
            problem = check_evidence(kr)
            if problem is not None:
                field, _, text = problem.partition(": ")
                errors.append(FieldProblem(problem=text or problem, field=field or None, row=row))
    return _finish(rows, errors, max_rows, "krs")
