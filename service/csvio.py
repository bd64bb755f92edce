"""CSV input: grades and Key Results read into columns, with errors that name file, row and column.

The CLI (``okrcal calibrate``) and the HTTP service's bulk upload read CSV the same
way through this module:

* the first non-blank line is a header; names are matched without regard to case or
  surrounding spaces. A missing required column, an unknown column (so that a typo
  such as ``grde`` is caught rather than silently ignored) and a repeated column are
  errors;
* UTF-8, with or without a byte-order mark; CRLF or LF line endings; quoted fields
  (which may contain commas and line breaks);
* blank lines are skipped and not counted; rows whose every cell is empty at the end
  of the file (spreadsheet exports leave these) are dropped;
* cells are stripped of surrounding spaces.

**Row numbers** in messages count data rows from 1 and do *not* count the header or
blank lines: "row 1" is the first row under the header. When the input is a file the
message also gives the line of the file (counting the header), which is what an editor
shows.

Parsing is column-wise: the csv module's rows are transposed into one list of strings
per column in chunks, and numbers are converted with one numpy call per column. A
per-row Python loop runs only to locate the first bad cell once a column is known to
hold one.
"""

from __future__ import annotations

import csv
import difflib
import gc
import hashlib
import io
import itertools
import math
import operator
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

import numpy as np
import numpy.typing as npt

from anchors.errors import EvidenceError
from anchors.evidence import EvidenceProblem
from anchors.kr import DIRECTIONS, EVIDENCE_FIELDS, KR_TYPES, Direction, KeyResult, KRType
from anchors.scales import Scale
from calibrate import MAX_ID_LENGTH, GradeRecord, GradeTable, InputError

__all__ = [
    "GRADES_SPEC",
    "KRS_SPEC",
    "CsvColumns",
    "CsvInputError",
    "CsvSpec",
    "GradeColumns",
    "KeyResultRows",
    "build_grade_table",
    "file_sha256",
    "grades_from_columns",
    "key_results_from_columns",
    "read_columns",
    "read_csv_file",
]

FloatArray = npt.NDArray[np.float64]

_SPACE: Final = re.compile(r"\s")

# Rows transposed per step: large enough that the per-chunk overhead vanishes, small
# enough that the row lists of one chunk stay a few MB.
_CHUNK: Final = 65536
# Characters split per step on the plain-CSV path; bounds its temporary lists likewise.
_BLOCK: Final = 1 << 23


class CsvInputError(ValueError):
    """Bad CSV input. Names the source, and where known the data row, the line and the column.

    ``row`` counts data rows from 1, not counting the header or blank lines;
    ``line`` is the line of the file (counting the header) where the row starts.
    """

    def __init__(
        self,
        source: str,
        problem: str,
        *,
        row: int | None = None,
        column: str | None = None,
        line: int | None = None,
    ) -> None:
        self.source = source
        self.problem = problem
        self.row = row
        self.column = column
        self.line = line
        super().__init__(self._message())

    def _message(self) -> str:
        where = [self.source]
        if self.row is not None:
            detail = "not counting the header"
            if self.line is not None:
                detail += f"; line {self.line} of the file"
            where.append(f"row {self.row} ({detail})")
        elif self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.problem}"


@dataclass(frozen=True)
class CsvSpec:
    """The columns a kind of CSV file must and may have (lower-case names)."""

    kind: str
    required: tuple[str, ...]
    optional: tuple[str, ...]

    @property
    def allowed(self) -> tuple[str, ...]:
        return self.required + self.optional


#: GRADES.csv: one grade per row.
GRADES_SPEC: Final = CsvSpec(
    kind="grades",
    required=("kr_id", "grader_id", "grade"),
    optional=("owner_id", "cycle"),
)

_KR_NUMBERS: Final = ("baseline", "target", "actual", "threshold", "tolerance", "weight")
_KR_COUNTS: Final = ("milestones_done", "milestones_total")

#: KRS.csv: one Key Result per row, with whatever evidence is known.
KRS_SPEC: Final = CsvSpec(
    kind="key results",
    required=("kr_id",),
    optional=(
        "owner_id",
        "kr_type",
        *_KR_NUMBERS[:4],
        *_KR_COUNTS,
        "done",
        "tolerance",
        "direction",
        "description",
        "weight",
        "org_unit",
    ),
)


@dataclass(frozen=True)
class CsvColumns:
    """A CSV file read column-wise: ``columns[name][row - 1]`` is the stripped cell text.

    ``path`` is set when the data came from a file, so that errors can give its line.
    """

    source: str
    header: tuple[str, ...]
    columns: Mapping[str, list[str]]
    n_rows: int
    path: Path | None = None

    def error(
        self, problem: str, *, row: int | None = None, column: str | None = None
    ) -> CsvInputError:
        """An error at ``row`` (data row, 1-based) and ``column`` of this input, with its line."""
        line = None
        if row is not None and self.path is not None:
            line = _line_of_row(self.path, row)
        return CsvInputError(self.source, problem, row=row, column=column, line=line)


def file_sha256(path: Path, source: str) -> str:
    """``sha256:<hex>`` of a file's bytes; a missing or unreadable file is a CsvInputError."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    except FileNotFoundError:
        raise CsvInputError(source, "no such file") from None
    except IsADirectoryError:
        raise CsvInputError(source, "is a directory, not a CSV file") from None
    except OSError as exc:
        raise CsvInputError(source, f"cannot be read: {exc.strerror or exc}") from None
    return "sha256:" + digest.hexdigest()


def read_csv_file(
    path: Path, spec: CsvSpec, *, source: str | None = None
) -> tuple[CsvColumns, str]:
    """Read a CSV file column-wise; returns the columns and the file's sha256.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "g.csv"
    >>> _ = p.write_text("kr_id,grader_id,grade\\r\\nk1,g1,0.7\\r\\n")
    >>> cols, _ = read_csv_file(p, GRADES_SPEC)
    >>> cols.columns["grade"], cols.n_rows
    (['0.7'], 1)
    """
    name = source if source is not None else str(path)
    digest = file_sha256(path, name)
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            cols = _read(fh, spec, name, fh)
    except OSError as exc:
        raise CsvInputError(name, f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        line = _first_bad_utf8_line(path)
        near = "" if line is None else f" (line {line})"
        raise CsvInputError(name, f"is not UTF-8 text{near}; save it as UTF-8 CSV") from None
    except CsvInputError as exc:
        if exc.row is None or exc.line is not None:
            raise
        line = _line_of_row(path, exc.row)
        raise CsvInputError(name, exc.problem, row=exc.row, column=exc.column, line=line) from None
    return CsvColumns(cols.source, cols.header, cols.columns, cols.n_rows, path), digest


def read_columns(lines: Iterable[str], spec: CsvSpec, *, source: str) -> CsvColumns:
    """Read CSV text (an iterable of lines, as from a file opened with ``newline=''``).

    Raises :class:`CsvInputError` for an empty input, a bad header, a row with the
    wrong number of fields, malformed quoting, text that is not UTF-8, or no data rows.
    """
    try:
        return _read(iter(lines), spec, source, None)
    except UnicodeDecodeError:
        raise CsvInputError(source, "is not UTF-8 text; save it as UTF-8 CSV") from None


def _read(lines: Iterator[str], spec: CsvSpec, source: str, fh: TextIO | None) -> CsvColumns:
    reader = csv.reader(lines, strict=True)
    header_row = _header(reader, source)
    if header_row is None:
        raise CsvInputError(
            source,
            "the file is empty; its first line must be a header naming the columns "
            + ", ".join(spec.required),
        )
    header = _check_header(header_row, spec, source, reader.line_num)
    width = len(header)
    cols: list[list[str]] = [[] for _ in header]
    # Millions of small strings and row lists make the cyclic garbage collector rescan
    # the heap over and over (it doubles the parse time); none of them can form a cycle.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        n_rows, n_lines, rest = 0, reader.line_num, None
        if fh is not None and width > 1:
            n_rows, fast_lines, rest = _read_plain_blocks(fh, cols)
            n_lines += fast_lines
            if rest is not None:
                reader = csv.reader(rest, strict=True)
        if fh is None or width == 1 or rest is not None:
            n_rows = _read_rows(reader, cols, n_rows, n_lines, source)
    finally:
        if gc_was_enabled:
            gc.enable()
    for i, col in enumerate(cols):
        cols[i] = _strip_all(col)
    n_rows = _trim_trailing_empty(cols, n_rows)
    if n_rows == 0:
        raise CsvInputError(source, "has a header but no data rows")
    return CsvColumns(source, header, dict(zip(header, cols, strict=True)), n_rows)


def _read_rows(
    reader: Any, cols: list[list[str]], n_rows: int, line_offset: int, source: str
) -> int:
    """Transpose the csv module's rows into ``cols``, a chunk at a time."""
    width = len(cols)
    while True:
        chunk = _next_chunk(reader, source, line_offset)
        if not chunk:
            return n_rows
        if any(len(r) != width for r in chunk):
            chunk = _drop_blank_rows(chunk, width, n_rows, source)
        for col, values in zip(cols, zip(*chunk, strict=True), strict=False):
            col.extend(values)
        n_rows += len(chunk)


def _read_plain_blocks(fh: TextIO, cols: list[list[str]]) -> tuple[int, int, Iterator[str] | None]:
    """Split blocks of plain CSV (no quotes) with str.split, twice as fast as the csv module.

    Returns the rows read, the lines consumed, and - as soon as a block holds a quote,
    a lone carriage return or a line with the wrong number of commas - the rest of the
    input as lines for the csv module, which also reports what is wrong with them.
    """
    width = len(cols)
    commas = width - 1
    count_commas = operator.methodcaller("count", ",")
    n_rows = n_lines = 0
    carry = ""
    while True:
        block = fh.read(_BLOCK)
        data = carry + block
        if block:
            cut = data.rfind("\n")
            if cut < 0:
                carry = data
                continue
            raw, carry = data[:cut], data[cut + 1 :]
        elif data:
            raw, carry = data, ""
        else:
            return n_rows, n_lines, None
        body = raw.replace("\r\n", "\n") if "\r" in raw else raw
        lines = body.split("\n")
        if '"' not in body and "\r" not in body:
            counts = set(map(count_commas, lines))
            if counts != {commas}:
                # blank lines are skipped (as by the csv path); anything else is not plain
                rows = [line for line in lines if line.strip()]
                counts = set(map(count_commas, rows))
            else:
                rows = lines
            if counts == {commas} or not rows:
                cells = ",".join(rows).split(",") if rows else []
                for i, col in enumerate(cols):
                    col.extend(cells[i::width])
                n_rows += len(rows)
                n_lines += len(lines)
                continue
        rest = raw + "\n" + carry + fh.readline() if block else raw
        return n_rows, n_lines, itertools.chain(io.StringIO(rest, newline=""), fh)


def _first_bad_utf8_line(path: Path) -> int | None:
    try:
        data = path.read_bytes()
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return data.count(b"\n", 0, exc.start) + 1
    except OSError:
        return None
    return None


def _header(reader: Iterator[list[str]], source: str) -> list[str] | None:
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                return row
    except csv.Error as exc:
        line = getattr(reader, "line_num", None)
        raise CsvInputError(source, f"malformed CSV header: {exc}", line=line) from None
    return None


def _check_header(row: list[str], spec: CsvSpec, source: str, line: int) -> tuple[str, ...]:
    header = tuple(cell.strip().lstrip("\ufeff").strip().lower() for cell in row)
    for pos, name in enumerate(header, start=1):
        if not name:
            raise CsvInputError(source, f"header column {pos} has no name", line=line)
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise CsvInputError(source, "appears twice in the header", column=name, line=line)
        seen.add(name)
    unknown = [name for name in header if name not in spec.allowed]
    missing = [name for name in spec.required if name not in seen]
    # When no name is known the first line is most likely data, not a misspelt header.
    if unknown and len(unknown) < len(header):
        name = unknown[0]
        close = difflib.get_close_matches(name, spec.allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise CsvInputError(
            source,
            f"unknown column in the header{hint}; a {spec.kind} file has the columns "
            f"{', '.join(spec.required)} and optionally {', '.join(spec.optional)}",
            column=name,
            line=line,
        )
    if missing:
        raise CsvInputError(
            source,
            f"the header has no column {missing[0]!r} (found {', '.join(header)}); "
            f"the first line must name the columns {', '.join(spec.required)}",
            column=missing[0],
            line=line,
        )
    return header


def _next_chunk(reader: Any, source: str, line_offset: int) -> list[list[str]]:
    try:
        return list(itertools.islice(reader, _CHUNK))
    except csv.Error as exc:
        line = line_offset + reader.line_num
        raise CsvInputError(source, f"malformed CSV: {exc}", line=line) from None


def _is_blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _drop_blank_rows(
    chunk: list[list[str]], width: int, rows_before: int, source: str
) -> list[list[str]]:
    kept: list[list[str]] = []
    for r in chunk:
        if _is_blank(r):
            continue
        if len(r) != width:
            row = rows_before + len(kept) + 1
            raise CsvInputError(
                source,
                f"has {len(r)} field(s) but the header has {width}; "
                "quote cells that contain a comma",
                row=row,
            )
        kept.append(r)
    return kept


def _strip_all(col: list[str]) -> list[str]:
    # Stripping a million cells costs more than checking whether any needs it.
    if _SPACE.search("".join(col)) is None:
        return col
    return [s.strip() for s in col]


def _trim_trailing_empty(cols: list[list[str]], n_rows: int) -> int:
    n = n_rows
    while n > 0 and not any(col[n - 1] for col in cols):
        n -= 1
    if n < n_rows:
        for col in cols:
            del col[n:]
    return n


def _line_of_row(path: Path, row: int) -> int | None:
    """The line of ``path`` (1-based, counting the header) where data row ``row`` starts."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, strict=True)
            header_seen = False
            data_row = 0
            last_line = 0
            for record in reader:
                start = last_line + 1
                last_line = reader.line_num
                if not header_seen:
                    header_seen = any(cell.strip() for cell in record)
                    continue
                if _is_blank(record):
                    continue
                data_row += 1
                if data_row == row:
                    return start
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    return None


# --------------------------------------------------------------------------- grades


@dataclass(frozen=True)
class GradeColumns:
    """The grades of a GRADES.csv, validated as far as CSV goes, ready for a GradeTable."""

    source: CsvColumns
    kr_ids: list[str]
    grader_ids: list[str]
    grades: FloatArray
    #: Owner of each KR, where the grades name one.
    owners: dict[str, str]
    #: Cycle of each grade; ``None`` when the file has no cycle column.
    cycles: list[str] | None


def _float_column(cols: CsvColumns, name: str) -> FloatArray:
    values = cols.columns[name]
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        pass
    for i, text in enumerate(values):
        try:
            float(text)
        except ValueError:
            raise cols.error(_not_a_number(text), row=i + 1, column=name) from None
    raise AssertionError("numpy refused a column that float() accepts")  # pragma: no cover


def _not_a_number(text: str) -> str:
    if not text:
        return "is empty; a number is required"
    hint = " (use a decimal point, not a comma)" if "," in text else ""
    return f"{text!r} is not a number{hint}"


def _owners_from_grades(cols: CsvColumns, kr_ids: list[str]) -> dict[str, str]:
    owner_col = cols.columns.get("owner_id")
    if owner_col is None:
        return {}
    owners: dict[str, str] = {}
    for i, (kr, owner) in enumerate(zip(kr_ids, owner_col, strict=True)):
        if not owner:
            continue
        prev = owners.setdefault(kr, owner)
        if prev != owner:
            first = next(j for j, k in enumerate(kr_ids) if k == kr and owner_col[j])
            raise cols.error(
                f"KR {kr!r} has owner {owner!r} here but {prev!r} at row {first + 1}",
                row=i + 1,
                column="owner_id",
            )
        if len(owner) > MAX_ID_LENGTH:
            raise cols.error(
                f"is longer than {MAX_ID_LENGTH} characters", row=i + 1, column="owner_id"
            )
    return owners


def grades_from_columns(cols: CsvColumns) -> GradeColumns:
    """Check a GRADES.csv read by :func:`read_columns`: numbers, and one owner per KR.

    Range, finiteness, ids and duplicates are checked by :func:`build_grade_table`
    (through :class:`~calibrate.GradeTable`, so the rules live in one place).
    """
    kr_ids = cols.columns["kr_id"]
    grades = _float_column(cols, "grade")
    return GradeColumns(
        source=cols,
        kr_ids=kr_ids,
        grader_ids=cols.columns["grader_id"],
        grades=grades,
        owners=_owners_from_grades(cols, kr_ids),
        cycles=cols.columns.get("cycle"),
    )


# --------------------------------------------------------------------------- key results


@dataclass(frozen=True)
class KeyResultRows:
    """The Key Results of a KRS.csv.

    ``key_results`` go to :func:`anchors.grade_many`. A KR whose evidence could not
    even be represented (a non-finite number, a negative tolerance) is left out of it
    and reported in ``problems``; its owner, weight and
    description still count.
    """

    source: CsvColumns
    key_results: list[KeyResult]
    problems: list[EvidenceProblem]
    owners: dict[str, str]
    weights: dict[str, float]
    descriptions: dict[str, str]
    row_of: dict[str, int] = field(default_factory=dict)


def _optional_float(cols: CsvColumns, name: str, row: int, text: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise cols.error(_not_a_number(text), row=row, column=name) from None


def _optional_count(cols: CsvColumns, name: str, row: int, text: str) -> int | None:
    value = _optional_float(cols, name, row, text)
    if value is None:
        return None
    if not math.isfinite(value) or value != int(value):
        raise cols.error(f"{text!r} is not a whole number", row=row, column=name)
    return int(value)


_TRUE: Final = frozenset({"1", "true", "yes", "y", "done"})
_FALSE: Final = frozenset({"0", "false", "no", "n", "not done"})


def _optional_bool(cols: CsvColumns, name: str, row: int, text: str) -> bool | None:
    if not text:
        return None
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise cols.error(f"{text!r} is not 1/0, true/false or yes/no", row=row, column=name)


def _choice(cols: CsvColumns, name: str, row: int, text: str, allowed: Sequence[str]) -> str | None:
    if not text:
        return None
    low = text.lower()
    if low not in allowed:
        raise cols.error(f"{text!r} is not one of {', '.join(allowed)}", row=row, column=name)
    return low


def _kr_type(cols: CsvColumns, row: int, text: str) -> KRType | None:
    value = _choice(cols, "kr_type", row, text, KR_TYPES)
    for t in KR_TYPES:
        if t == value:
            return t
    return None


def _direction(cols: CsvColumns, row: int, text: str) -> Direction | None:
    value = _choice(cols, "direction", row, text, DIRECTIONS)
    for d in DIRECTIONS:
        if d == value:
            return d
    return None


def key_results_from_columns(cols: CsvColumns) -> KeyResultRows:
    """Turn a KRS.csv into :class:`~anchors.kr.KeyResult` values.

    Errors (exit code 2 in the CLI): a cell that should be a number and is not, a
    count that is not whole, an unknown ``kr_type``/``direction``, a bad ``done``,
    an empty or repeated ``kr_id``, an empty or over-long owner, a negative or
    non-finite weight. Evidence that is a number but cannot be used is not an error
    here: it becomes a per-KR problem, and the KR has no evidence grade.
    """
    c = cols.columns
    empty = [""] * cols.n_rows

    def col(name: str) -> list[str]:
        return c.get(name, empty)

    kr_col = c["kr_id"]
    number_cols = {name: col(name) for name in _KR_NUMBERS}
    count_cols = {name: col(name) for name in _KR_COUNTS}
    owner_col, type_col, done_col = col("owner_id"), col("kr_type"), col("done")
    dir_col, desc_col, unit_col = col("direction"), col("description"), col("org_unit")

    key_results: list[KeyResult] = []
    problems: list[EvidenceProblem] = []
    owners: dict[str, str] = {}
    weights: dict[str, float] = {}
    descriptions: dict[str, str] = {}
    row_of: dict[str, int] = {}
    for i, kr_id in enumerate(kr_col):
        row = i + 1
        if not kr_id:
            raise cols.error("is empty; every Key Result needs an id", row=row, column="kr_id")
        if kr_id in row_of:
            raise cols.error(
                f"KR {kr_id!r} appears twice (first at row {row_of[kr_id]})",
                row=row,
                column="kr_id",
            )
        row_of[kr_id] = row
        nums = {name: _optional_float(cols, name, row, v[i]) for name, v in number_cols.items()}
        counts = {name: _optional_count(cols, name, row, v[i]) for name, v in count_cols.items()}
        weight = nums["weight"]
        if weight is not None and not (math.isfinite(weight) and weight >= 0):
            raise cols.error(
                f"{col('weight')[i]!r}: a weight must be a finite number >= 0",
                row=row,
                column="weight",
            )
        owner = owner_col[i] or None
        description = desc_col[i] or None
        try:
            kr = KeyResult(
                kr_id=kr_id,
                owner_id=owner,
                kr_type=_kr_type(cols, row, type_col[i]),
                baseline=nums["baseline"],
                target=nums["target"],
                actual=nums["actual"],
                milestones_done=counts["milestones_done"],
                milestones_total=counts["milestones_total"],
                done=_optional_bool(cols, "done", row, done_col[i]),
                threshold=nums["threshold"],
                tolerance=nums["tolerance"],
                direction=_direction(cols, row, dir_col[i]),
                description=description,
                weight=weight,
                org_unit=unit_col[i] or None,
            )
        except EvidenceError as exc:
            if exc.field not in EVIDENCE_FIELDS and exc.field != "tolerance":
                raise cols.error(exc.problem, row=row, column=exc.field) from None
            problems.append(EvidenceProblem.from_error(exc))
        else:
            key_results.append(kr)
        if owner is not None:
            owners[kr_id] = owner
        if weight is not None:
            weights[kr_id] = weight
        if description is not None:
            descriptions[kr_id] = description
    return KeyResultRows(cols, key_results, problems, owners, weights, descriptions, row_of)


# --------------------------------------------------------------------------- the table


def _merge_owners(grades: GradeColumns, krs: KeyResultRows | None) -> dict[str, str]:
    owners = dict(grades.owners)
    if krs is None:
        return owners
    for kr_id, owner in krs.owners.items():
        prev = owners.setdefault(kr_id, owner)
        if prev != owner:
            raise krs.source.error(
                f"KR {kr_id!r} has owner {owner!r} here but {prev!r} in {grades.source.source}",
                row=krs.row_of[kr_id],
                column="owner_id",
            )
    return owners


def build_grade_table(
    grades: GradeColumns,
    scale: Scale,
    *,
    evidence: Mapping[str, float] | None = None,
    krs: KeyResultRows | None = None,
) -> GradeTable:
    """Validate the grades into a :class:`~calibrate.GradeTable`, errors naming file, row, column.

    ``evidence`` holds evidence grades on the 0–1 scale by KR id (from the anchors).
    A file with more than one cycle goes through the record builder, which keeps the
    same (KR, grader) pair apart across cycles; one cycle uses the vectorised builder.
    """
    owners = _merge_owners(grades, krs)
    weights = krs.weights if krs is not None else None
    try:
        if grades.cycles is not None and len(set(grades.cycles)) > 1:
            records = [
                GradeRecord(kr_id=k, grader_id=g, grade=float(v), cycle=c or None)
                for k, g, v, c in zip(
                    grades.kr_ids,
                    grades.grader_ids,
                    grades.grades.tolist(),
                    grades.cycles,
                    strict=True,
                )
            ]
            return GradeTable.from_records(
                records, scale, evidence=evidence, owners=owners, weights=weights
            )
        return GradeTable.from_arrays(
            grades.kr_ids,
            grades.grader_ids,
            grades.grades,
            scale,
            evidence=evidence,
            owners=owners,
            weights=weights,
        )
    except InputError as exc:
        if exc.field == "weight" and krs is not None:
            raise krs.source.error(exc.problem, column="weight") from None
        raise grades.source.error(exc.problem, row=exc.row, column=exc.field) from None
