"""CSV input: grades and Key Results read into columns, with errors that name file, row and column.

``okrcal calibrate`` reads its files through this module; :func:`read_columns` takes
any iterable of lines, so that a CSV upload can be read by the same rules:

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

Parsing is column-wise. A file is split with ``str.split`` in blocks for as long as
the text is plain (no quotes, the same number of commas on every line); from the first
block that is not, the csv module takes over and its rows are transposed into one list
of strings per column in chunks. Numbers are converted with one numpy call per column.
A per-row Python loop runs only to locate the first bad cell once a column is known to
hold one.
"""

from __future__ import annotations

import csv
import difflib
import functools
import gc
import hashlib
import io
import itertools
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from anchors.errors import EvidenceError
from anchors.evidence import EvidenceColumns, EvidenceProblem
from anchors.kr import DIRECTIONS, EVIDENCE_FIELDS, KR_TYPES, Direction, KeyResult, KRType
from anchors.scales import Scale
from calibrate import MAX_ID_LENGTH, GradeTable, InputError
from calibrate.table import factorise

__all__ = [
    "GRADES_SPEC",
    "KRS_SPEC",
    "CodedOwners",
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
    "read_grades_file",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

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
    try:
        data = path.read_bytes()
    except OSError:
        data = b""  # the general path words the error
    plain = _plain_columns(data, spec, name, path) if data else None
    if plain is not None:
        return plain, "sha256:" + hashlib.sha256(data).hexdigest()
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


def read_grades_file(path: Path, *, source: str | None = None) -> tuple[GradeColumns, str]:
    """A GRADES.csv read and checked as by :func:`read_csv_file` + :func:`grades_from_columns`.

    Returns the grades and the file's sha256. A plain file (ASCII without quotes, blank
    lines or surrounding spaces, the same number of fields on every line, numbers that
    parse, one owner per KR) is parsed with numpy a column at a time and its ids coded
    with :func:`numpy.unique`, without a Python string per cell; anything else, and so
    every input error, goes the general way, whose messages name the row and column.
    """
    name = source if source is not None else str(path)
    try:
        data = path.read_bytes()
    except OSError:
        data = b""  # the general path words the error
    fast = _plain_grades(data, name, path) if data else None
    if fast is not None:
        return fast, "sha256:" + hashlib.sha256(data).hexdigest()
    cols, digest = read_csv_file(path, GRADES_SPEC, source=name)
    return grades_from_columns(cols), digest


# Bytes a plain CSV may hold: printable ASCII but the quote, which leaves out spaces
# (cells would need stripping) and every control character but the line feed.
_PLAIN_BYTES: Final = bytes(range(0x21, 0x7F)).replace(b'"', b"") + b"\n"
# Longest cell of a column coded with numpy; longer ones go the general way.
_PLAIN_WIDTH: Final = 64


def _plain_grades(data: bytes, source: str, path: Path) -> GradeColumns | None:
    table = _plain_fields(data, GRADES_SPEC)
    if table is None:
        return None
    header, buf, starts, ends = table
    n_rows = starts.shape[0]
    cols = CsvColumns(source, header, {}, n_rows, path)
    col = header.index
    grades = _plain_floats(buf, starts[:, col("grade")], ends[:, col("grade")])
    kr = _plain_codes(buf, starts[:, col("kr_id")], ends[:, col("kr_id")])
    grader = _plain_codes(buf, starts[:, col("grader_id")], ends[:, col("grader_id")])
    if grades is None or kr is None or grader is None:
        return None
    owners: Mapping[str, str] = {}
    if "owner_id" in header:
        owner = _plain_codes(buf, starts[:, col("owner_id")], ends[:, col("owner_id")])
        if owner is None:
            return None
        found = _plain_owners(kr, owner)
        if found is None:
            return None
        owners = found
    cycle_codes: tuple[list[str | None], IntArray] | None = None
    if "cycle" in header:
        cycle = _plain_codes(buf, starts[:, col("cycle")], ends[:, col("cycle")])
        if cycle is None:
            return None
        cycle_codes = ([c or None for c in cycle[0]], cycle[1])
    return GradeColumns(
        source=cols,
        kr_names=kr[0],
        kr_index=kr[1],
        grader_names=grader[0],
        grader_index=grader[1],
        grades=grades,
        owners=owners,
        cycle_codes=cycle_codes,
    )


def _plain_columns(data: bytes, spec: CsvSpec, source: str, path: Path) -> CsvColumns | None:
    """A plain CSV (see :func:`_plain_fields`) split with one ``str.split``; None if not plain."""
    table = _plain_fields(data, spec)
    if table is None or len(table[0]) == 1:
        return None
    header, buf, starts, _ = table
    text = buf.tobytes().decode("ascii")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    # plain: every line has the header's number of fields, no cell needs stripping
    cells = text[:-1].replace("\n", ",").split(",")
    width = len(header)
    columns = {h: cells[j::width] for j, h in enumerate(header)}
    return CsvColumns(source, header, columns, starts.shape[0], path)


def _plain_fields(
    data: bytes, spec: CsvSpec
) -> tuple[tuple[str, ...], npt.NDArray[np.uint8], IntArray, IntArray] | None:
    """Header, bytes, and the start and end offsets of every cell (rows x columns) of
    a plain CSV; ``None`` when the file is anything but plain."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if not data.isascii():
        return None
    crlf = b"\r" in data
    cut = data.find(b"\n")
    body = data[cut + 1 :]
    if cut <= 0 or not body or body.startswith((b"\n", b"\r\n")) or b"\n\n" in body:
        return None
    if body.translate(None, _PLAIN_BYTES + b"\r") if crlf else body.translate(None, _PLAIN_BYTES):
        return None
    head = data[:cut].decode("ascii").removesuffix("\r")
    if '"' in head or "\r" in head or (crlf and b"\n\r\n" in body):
        return None
    try:
        header = _check_header(head.split(","), spec, "", 1)
    except CsvInputError:
        return None
    width = len(header)
    if not body.endswith(b"\n"):
        body += b"\n"
    buf = np.frombuffer(body, dtype=np.uint8)
    if crlf:
        # every carriage return must end a line (as half of CRLF)
        cr = np.flatnonzero(buf == ord("\r"))
        if not (buf[cr + 1] == ord("\n")).all():
            return None
    is_nl = buf == ord("\n")
    line_ends = np.flatnonzero(is_nl)
    cell_ends = np.flatnonzero(is_nl | (buf == ord(",")))
    n_rows = line_ends.shape[0]
    if cell_ends.shape[0] != n_rows * width:
        return None
    ends = cell_ends.reshape(n_rows, width)
    if not np.array_equal(ends[:, -1], line_ends):
        return None
    starts = np.empty_like(ends)
    starts[:, 1:] = ends[:, :-1] + 1
    starts[0, 0] = 0
    starts[1:, 0] = line_ends[:-1] + 1
    if crlf:
        ends[:, -1] -= buf[line_ends - 1] == ord("\r")
    # The csv path drops rows of empty cells at the end: leave such files to it.
    if ends[-1, -1] - starts[-1, 0] == width - 1:
        return None
    return header, buf, starts, ends


def _plain_cells(
    buf: npt.NDArray[np.uint8], starts: IntArray, ends: IntArray
) -> npt.NDArray[np.uint8] | None:
    """The cells from ``starts`` to ``ends``, one zero-padded row of bytes each (None:
    a cell is too long). The width is a whole number of 8-byte words."""
    lengths = ends - starts
    longest = int(lengths.max())
    if longest > _PLAIN_WIDTH:
        return None
    width = max(8, -(-longest // 8) * 8)
    # each cell's row is the window of `width` bytes from its start: one gather for all
    fits = starts <= buf.shape[0] - width  # all but cells in the file's last bytes
    if fits.all():
        cells = sliding_window_view(buf, width)[starts]
    else:
        cells = np.zeros((starts.shape[0], width), dtype=np.uint8)
        if buf.shape[0] >= width:
            cells[fits] = sliding_window_view(buf, width)[starts[fits]]
        for i in np.flatnonzero(~fits).tolist():
            tail = buf[starts[i] : starts[i] + width]
            cells[i, : tail.shape[0]] = tail
    if int(lengths.min()) != width:
        cells[np.arange(width) >= lengths[:, None]] = 0  # the bytes past each cell
    out: npt.NDArray[np.uint8] = cells
    return out


def _plain_codes(
    buf: npt.NDArray[np.uint8], starts: IntArray, ends: IntArray
) -> tuple[list[str], IntArray] | None:
    """The distinct cells, sorted, and each cell's position among them."""
    cells = _plain_cells(buf, starts, ends)
    if cells is None:
        return None
    # ASCII bytes sort as their strings do, and a cell holds no NUL: sorting the
    # zero-padded bytes (as big-endian integers when they fit in one) sorts the ids.
    as_bytes = cells.view(f"S{cells.shape[1]}").ravel()
    keys = cells.view(">u8").ravel() if cells.shape[1] == 8 else as_bytes
    order = np.argsort(keys)  # equal keys get one code whatever their order
    ordered = keys[order]
    first = np.empty(ordered.shape[0], dtype=bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    codes = np.empty(ordered.shape[0], dtype=np.int64)
    codes[order] = np.cumsum(first) - 1
    # one decode for all the names (a cell holds no line feed)
    names = b"\n".join(as_bytes[order[first]].tolist()).decode("ascii").split("\n")
    return names, codes


# 10**k for the exact decimal fast path (exact doubles up to 10**22)
_POW10: Final = np.array([float(10**k) for k in range(23)])


def _count_per_row(flags: npt.NDArray[np.bool_]) -> IntArray:
    """How many flags are set in each row (rows a whole number of 8 bytes wide)."""
    if not hasattr(np, "bitwise_count"):  # numpy < 2.0
        summed: IntArray = flags.sum(axis=1, dtype=np.int64)
        return summed
    words = np.ascontiguousarray(flags).view(np.uint64)
    counts: IntArray = np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    return counts


def _plain_floats(
    buf: npt.NDArray[np.uint8], starts: IntArray, ends: IntArray
) -> FloatArray | None:
    cells = _plain_cells(buf, starts, ends)
    if cells is None:
        return None
    # Plain decimals (digits with at most one point, at most 15 digits) are read as
    # integer / 10**k: both exact doubles, and IEEE division rounds correctly, so this
    # is the double nearest the decimal - what float() gives.
    digit = (cells >= ord("0")) & (cells <= ord("9"))
    point = cells == ord(".")
    # per row counts: booleans are bytes 0/1, so a row's 8-byte words count its bits
    n_digits = _count_per_row(digit)
    simple = (
        (_count_per_row(~(digit | point | (cells == 0))) == 0)
        & (_count_per_row(point) <= 1)
        & (n_digits > 0)
        & (n_digits <= 15)
    )
    value = np.zeros(cells.shape[0], dtype=np.int64)
    decimals = np.zeros(cells.shape[0], dtype=np.int64)
    seen_point = np.zeros(cells.shape[0], dtype=bool)
    for j in range(int((ends - starts).max())):
        d = digit[:, j]
        value = np.where(d, value * 10 + (cells[:, j].astype(np.int64) - ord("0")), value)
        decimals += d & seen_point
        seen_point |= point[:, j]
    out: FloatArray = value / _POW10[np.minimum(decimals, 22)]
    if not simple.all():
        rest = ~simple
        try:
            # numpy reads bytes with Python's own float parser: the numbers of float()
            out[rest] = cells[rest].view(f"S{cells.shape[1]}").ravel().astype(np.float64)
        except ValueError:
            return None
    return out


def _plain_owners(
    kr: tuple[list[str], IntArray], owner: tuple[list[str], IntArray]
) -> CodedOwners | None:
    """KR -> owner from coded columns; None when some KR has two owners (an error)."""
    names, codes = owner
    has = codes != 0 if names and names[0] == "" else np.ones(codes.shape, dtype=bool)
    kr_codes = kr[1][has]
    owner_codes = codes[has]
    owner_of = np.full(len(kr[0]), -1, dtype=np.int64)
    owner_of[kr_codes] = owner_codes  # the last owner given wins ...
    if (owner_of[kr_codes] != owner_codes).any():  # ... so any other means two owners
        return None
    if any(len(o) > MAX_ID_LENGTH for o in names):
        return None
    return CodedOwners(kr[0], names, owner_of)


class CodedOwners(Mapping[str, str]):
    """KR id -> owner id, kept as codes: ``owners[code[i]]`` owns ``kr_names[i]`` (-1:
    no owner). A GradeTable takes the codes as they are (:func:`build_grade_table`);
    the mapping is made only when asked for, as when owners from a KRS.csv are merged.
    """

    def __init__(self, kr_names: list[str], owners: list[str], code: IntArray) -> None:
        self.kr_names, self.owners, self.code = kr_names, owners, code

    @functools.cached_property
    def _as_dict(self) -> dict[str, str]:
        krs = np.flatnonzero(self.code >= 0)
        return dict(
            zip(
                map(self.kr_names.__getitem__, krs.tolist()),
                map(self.owners.__getitem__, self.code[krs].tolist()),
                strict=True,
            )
        )

    def to_dict(self) -> dict[str, str]:
        """A new dict of the same KR -> owner pairs."""
        return self._as_dict.copy()

    def __getitem__(self, kr_id: str) -> str:
        return self._as_dict[kr_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._as_dict)

    def __len__(self) -> int:
        return len(self._as_dict)


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
        # The cut fell on the "\n" of a final "\r\n": drop its "\r" as well.
        body = raw[:-1] if block and raw.endswith("\r") else raw
        if "\r" in body:
            body = body.replace("\r\n", "\n")
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
    if len(header) == 1:
        for sep, label in ((";", "semicolons"), ("\t", "tabs")):
            if sep in header[0]:
                raise CsvInputError(
                    source,
                    f"the header is separated by {label}; save the file as comma-separated CSV",
                    line=line,
                )
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
    """The grades of a GRADES.csv, validated as far as CSV goes, ready for a GradeTable.

    Ids are coded: ``kr_names[kr_index[i]]`` is the KR of grade ``i`` (the names are
    distinct and each has a grade); likewise graders and, when the file has a cycle
    column, cycles (``None`` for an empty cycle cell).
    """

    source: CsvColumns
    kr_names: list[str]
    kr_index: IntArray
    grader_names: list[str]
    grader_index: IntArray
    grades: FloatArray
    #: Owner of each KR, where the grades name one (:class:`CodedOwners` from a plain file).
    owners: Mapping[str, str]
    cycle_codes: tuple[list[str | None], IntArray] | None = None

    @property
    def kr_ids(self) -> list[str]:
        """The KR of each grade."""
        return _decode(self.kr_names, self.kr_index)

    @property
    def grader_ids(self) -> list[str]:
        """The grader of each grade."""
        return _decode(self.grader_names, self.grader_index)

    @property
    def cycles(self) -> list[str] | None:
        """The cycle of each grade (``""`` where empty); ``None`` without a cycle column."""
        if self.cycle_codes is None:
            return None
        names = ["" if c is None else c for c in self.cycle_codes[0]]
        return _decode(names, self.cycle_codes[1])


def _decode(names: list[str], codes: IntArray) -> list[str]:
    return list(map(names.__getitem__, codes.tolist()))


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
    # Everything below runs at C speed: a dict of the last owner seen per KR, then one
    # pass comparing every row's owner with it.
    if "" in owner_col:
        krs_with = list(itertools.compress(kr_ids, owner_col))
        owned = [o for o in owner_col if o]
    else:
        krs_with, owned = kr_ids, owner_col
    owners = dict(zip(krs_with, owned, strict=True))
    conflict = any(map(operator.ne, map(owners.__getitem__, krs_with), owned))
    too_long = bool(owners) and max(map(len, owners.values())) > MAX_ID_LENGTH
    if not conflict and not too_long:
        return owners
    # Some KR has two owners or some owner id is too long: find the first such row.
    first: dict[str, tuple[str, int]] = {}
    for i, (kr, owner) in enumerate(zip(kr_ids, owner_col, strict=True)):
        if not owner:
            continue
        if len(owner) > MAX_ID_LENGTH:
            raise cols.error(
                f"is longer than {MAX_ID_LENGTH} characters", row=i + 1, column="owner_id"
            )
        prev, row = first.setdefault(kr, (owner, i + 1))
        if prev != owner:
            raise cols.error(
                f"KR {kr!r} has owner {owner!r} here but {prev!r} at row {row}",
                row=i + 1,
                column="owner_id",
            )
    raise AssertionError("owner conflict not found")  # pragma: no cover


def grades_from_columns(cols: CsvColumns) -> GradeColumns:
    """Check a GRADES.csv read by :func:`read_columns`: numbers, and one owner per KR.

    Range, finiteness, ids and duplicates are checked by :func:`build_grade_table`
    (through :class:`~calibrate.GradeTable`, so the rules live in one place).
    """
    kr_ids = cols.columns["kr_id"]
    grades = _float_column(cols, "grade")
    owners = _owners_from_grades(cols, kr_ids)
    kr_names, kr_index = factorise(kr_ids)
    grader_names, grader_index = factorise(cols.columns["grader_id"])
    cycles = cols.columns.get("cycle")
    cycle_codes: tuple[list[str | None], IntArray] | None = None
    if cycles is not None:
        names, codes = factorise(cycles)
        cycle_codes = ([c or None for c in names], codes)
    return GradeColumns(
        source=cols,
        kr_names=kr_names,
        kr_index=kr_index,
        grader_names=grader_names,
        grader_index=grader_index,
        grades=grades,
        owners=owners,
        cycle_codes=cycle_codes,
    )


# --------------------------------------------------------------------------- key results


@dataclass(frozen=True)
class KeyResultRows:
    """The Key Results of a KRS.csv.

    ``evidence`` holds every row's evidence, in file order, for
    :func:`anchors.evidence.grade_columns`. ``key_results`` are the rows with some
    evidence as :class:`~anchors.kr.KeyResult` values (for :func:`anchors.grade_many`),
    made on first use. A KR whose evidence could not even be represented (a
    non-finite number, a negative tolerance) is left out of them and reported in
    ``problems``; its owner, weight and description still count.
    """

    source: CsvColumns
    evidence: EvidenceColumns
    owners: dict[str, str]
    weights: dict[str, float]
    descriptions: dict[str, str]
    row_of: dict[str, int] = field(default_factory=dict)
    org_units: dict[str, str] = field(default_factory=dict)

    @functools.cached_property
    def _built(self) -> tuple[list[KeyResult], list[EvidenceProblem]]:
        key_results: list[KeyResult] = []
        problems: list[EvidenceProblem] = []
        ev = self.evidence
        for i, kr_id in enumerate(ev.kr_id):
            if all(getattr(ev, name)[i] is None for name in EVIDENCE_FIELDS):
                continue
            try:
                key_results.append(
                    ev.key_result(
                        i,
                        owner_id=self.owners.get(kr_id),
                        description=self.descriptions.get(kr_id),
                        weight=self.weights.get(kr_id),
                        org_unit=self.org_units.get(kr_id),
                    )
                )
            except EvidenceError as exc:
                problems.append(EvidenceProblem.from_error(exc))
        return key_results, problems

    @property
    def key_results(self) -> list[KeyResult]:
        """The KRs with some evidence that could be represented, in file order."""
        return self._built[0]

    @property
    def problems(self) -> list[EvidenceProblem]:
        """One problem per KR whose evidence could not even be represented."""
        return self._built[1]


def _first(values: Iterable[object], bad: Callable[[Any], bool]) -> int:
    """0-based index of the first value for which ``bad`` holds (one is known to exist)."""
    return next(i for i, v in enumerate(values) if bad(v))


def _optional_floats(cols: CsvColumns, name: str) -> list[float | None]:
    """A numeric column: empty cells are None; text that is not a number is an error."""
    values = cols.columns.get(name)
    if values is None or not any(values):
        return [None] * cols.n_rows
    full = "" not in values
    try:
        # "nan" stands in for empty cells only to keep the conversion in one numpy call
        numbers = np.array(
            values if full else [v or "nan" for v in values], dtype=np.float64
        ).tolist()
    except ValueError:
        i = _first(values, lambda v: v != "" and not _is_float(v))
        raise cols.error(_not_a_number(values[i]), row=i + 1, column=name) from None
    if full:
        return numbers  # type: ignore[no-any-return]
    return [x if v else None for v, x in zip(values, numbers, strict=True)]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _optional_counts(cols: CsvColumns, name: str) -> list[int | None]:
    numbers = _optional_floats(cols, name)
    if numbers.count(None) == len(numbers):
        return [None] * len(numbers)
    bad = [x is not None and not (math.isfinite(x) and x == int(x)) for x in numbers]
    if any(bad):
        i = bad.index(True)
        text = cols.columns[name][i]
        raise cols.error(f"{text!r} is not a whole number", row=i + 1, column=name)
    return [None if x is None else int(x) for x in numbers]


_BOOLS: Final[dict[str, bool]] = {
    **dict.fromkeys(("1", "true", "yes", "y", "done"), True),
    **dict.fromkeys(("0", "false", "no", "n", "not done"), False),
}
_KR_TYPE_OF: Final[dict[str, KRType]] = {t: t for t in KR_TYPES}
_DIRECTION_OF: Final[dict[str, Direction]] = {d: d for d in DIRECTIONS}
_T = TypeVar("_T")


def _optional_choices(
    cols: CsvColumns, name: str, allowed: Mapping[str, _T], expected: str
) -> list[_T | None]:
    values = cols.columns.get(name)
    if values is None or not any(values):
        return [None] * cols.n_rows
    # a few distinct texts, each looked up once
    meaning = {v: allowed.get(v.lower()) for v in set(values)}
    out = list(map(meaning.__getitem__, values))
    if None in out:
        for i, (v, x) in enumerate(zip(values, out, strict=True)):
            if v and x is None:
                raise cols.error(f"{v!r} is not {expected}", row=i + 1, column=name)
    return out


def _optional_texts(cols: CsvColumns, name: str, *, is_id: bool = False) -> list[str | None]:
    values = cols.columns.get(name)
    if values is None:
        return [None] * cols.n_rows
    if is_id and values and max(map(len, values)) > MAX_ID_LENGTH:
        i = _first(values, lambda v: len(v) > MAX_ID_LENGTH)
        raise cols.error(f"is longer than {MAX_ID_LENGTH} characters", row=i + 1, column=name)
    return [v or None for v in values]


def _kr_ids(cols: CsvColumns) -> list[str]:
    ids = cols.columns["kr_id"]
    if "" in ids:
        i = ids.index("")
        raise cols.error("is empty; every Key Result needs an id", row=i + 1, column="kr_id")
    if max(map(len, ids)) > MAX_ID_LENGTH:
        i = _first(ids, lambda v: len(v) > MAX_ID_LENGTH)
        raise cols.error(f"is longer than {MAX_ID_LENGTH} characters", row=i + 1, column="kr_id")
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for i, kr_id in enumerate(ids):
            if kr_id in seen:
                raise cols.error(
                    f"KR {kr_id!r} appears twice (first at row {seen[kr_id] + 1})",
                    row=i + 1,
                    column="kr_id",
                )
            seen[kr_id] = i
    return ids


def key_results_from_columns(cols: CsvColumns) -> KeyResultRows:
    """Turn a KRS.csv into :class:`~anchors.kr.KeyResult` values.

    Errors (exit code 2 in the CLI): a cell that should be a number and is not, a
    count that is not whole, an unknown ``kr_type``/``direction``, a bad ``done``,
    an empty, over-long or repeated ``kr_id``, an over-long owner or org unit, a
    negative or non-finite weight. Evidence that is a number but cannot be used is
    not an error here: it becomes a per-KR problem, and the KR has no evidence grade.

    Columns are checked one at a time, so with several bad cells the first one
    reported is the first in the first bad column. Only KRs with some evidence
    become :class:`~anchors.kr.KeyResult` objects: the anchors grade nothing else.
    """
    kr_ids = _kr_ids(cols)
    owners = _optional_texts(cols, "owner_id", is_id=True)
    units = _optional_texts(cols, "org_unit", is_id=True)
    descriptions = _optional_texts(cols, "description")
    numbers = {name: _optional_floats(cols, name) for name in _KR_NUMBERS}
    counts = {name: _optional_counts(cols, name) for name in _KR_COUNTS}
    done = _optional_choices(cols, "done", _BOOLS, "1/0, true/false or yes/no")
    kr_types = _optional_choices(cols, "kr_type", _KR_TYPE_OF, "one of " + ", ".join(KR_TYPES))
    directions = _optional_choices(
        cols, "direction", _DIRECTION_OF, "one of " + ", ".join(DIRECTIONS)
    )
    weights = numbers["weight"]
    bad_weight = [
        w is not None and not (math.isfinite(w) and w >= 0)
        for w in (weights if weights.count(None) < len(weights) else ())
    ]
    if any(bad_weight):
        i = bad_weight.index(True)
        raise cols.error(
            f"{cols.columns['weight'][i]!r}: a weight must be a finite number >= 0",
            row=i + 1,
            column="weight",
        )

    evidence = EvidenceColumns(
        kr_id=kr_ids,
        kr_type=kr_types,
        baseline=numbers["baseline"],
        target=numbers["target"],
        actual=numbers["actual"],
        milestones_done=counts["milestones_done"],
        milestones_total=counts["milestones_total"],
        done=done,
        threshold=numbers["threshold"],
        tolerance=numbers["tolerance"],
        direction=directions,
    )
    return KeyResultRows(
        source=cols,
        evidence=evidence,
        owners=_given(kr_ids, owners),
        weights=_given(kr_ids, weights),
        descriptions=_given(kr_ids, descriptions),
        row_of=dict(zip(kr_ids, range(1, len(kr_ids) + 1), strict=True)),
        org_units=_given(kr_ids, units),
    )


def _given(kr_ids: list[str], values: list[_T | None]) -> dict[str, _T]:
    """KR id -> value, for the KRs with a value."""
    missing = values.count(None)
    if missing == len(values):
        return {}
    if missing == 0:
        return dict(zip(kr_ids, values, strict=True))  # type: ignore[arg-type]
    return {k: v for k, v in zip(kr_ids, values, strict=True) if v is not None}


# --------------------------------------------------------------------------- the table


def _merge_owners(grades: GradeColumns, krs: KeyResultRows | None) -> dict[str, str]:
    coded = grades.owners
    # a copy of the mapping CodedOwners made once (dict() of a Mapping asks key by key)
    owners = coded.to_dict() if isinstance(coded, CodedOwners) else dict(coded)
    if krs is None:
        return owners
    given = krs.owners
    # owners.get(kr, owner) == owner: the grades name no owner or the same one
    if all(map(operator.eq, map(owners.get, given.keys(), given.values()), given.values())):
        owners.update(given)
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
    The same (KR, grader) pair may appear once per cycle.
    """
    coded = grades.owners if isinstance(grades.owners, CodedOwners) and krs is None else None
    owners = None if coded is not None else _merge_owners(grades, krs)
    weights = krs.weights if krs is not None else None
    try:
        return GradeTable.from_codes(
            grades.kr_names,
            grades.kr_index,
            grades.grader_names,
            grades.grader_index,
            grades.grades,
            scale,
            evidence=evidence,
            owners=owners,
            weights=weights,
            cycles=grades.cycle_codes,
            owner_codes=None if coded is None else (coded.owners, coded.code),
        )
    except InputError as exc:
        if exc.field == "weight" and krs is not None:
            raise krs.source.error(exc.problem, column="weight") from None
        raise grades.source.error(exc.problem, row=exc.row, column=exc.field) from None
