"""``okrcal calibrate``: calibrate a grades CSV offline and write the results to a directory.

::

    okrcal calibrate GRADES.csv [--krs KRS.csv] [--scale google|percent|five_point|LOW:HIGH]
                     [--model additive|affine|fixed|zscore|mean] [--confidence 0.9]
                     [--fdr 0.05] [--min-effect 0.05] [--min-linked 5] [--timings] --out DIR

Writes ``DIR/scores.csv`` (one row per KR), ``DIR/graders.csv`` (one row per grader),
``DIR/owners.csv`` (one row per owner) and ``DIR/fit.json`` (model, versions, input
hashes, variance components, graph components, diagnostics, warnings, outcome-check
flags), and prints a short summary. Numbers are written as the shortest decimal that
reads back to the same float; an estimate that could not be made is an empty cell.

Exit codes: 0 done; 2 bad input or usage, with a message on stderr that names the file,
the row (data rows counted from 1, not counting the header) and the column; 1 any other
failure (for example a full disk).

**The output directory** is never left half-written. Everything is validated and fitted
before anything is written; the four files are then written into a new directory beside
DIR, which replaces DIR with a rename. DIR may be missing, empty, or hold a previous
run's four files (they are replaced as a set). A DIR that holds anything else is refused
with exit code 2, so that a mistyped ``--out`` never deletes unrelated files.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import itertools
import operator
import os
import re
import secrets
import shutil
import stat
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import msgspec
import numpy as np
import numpy.typing as npt

from anchors import EvidenceProblem, Scale, ScaleError, check_outcome, parse_scale
from anchors.evidence import grade_columns
from calibrate import (
    MODEL_NAMES,
    CalibrateError,
    CalibrationFit,
    Component,
    KRColumns,
    Model,
    ModelError,
    UnexpectedGrade,
    VarianceComponents,
    model_from_name,
)
from service.csvio import (
    KRS_SPEC,
    CsvInputError,
    KeyResultRows,
    build_grade_table,
    key_results_from_columns,
    read_csv_file,
    read_grades_file,
)

__all__ = [
    "GRADERS_COLUMNS",
    "MISFIT_BAND",
    "OUTPUT_FILES",
    "OWNERS_COLUMNS",
    "SCORES_COLUMNS",
    "CalibrateReport",
    "add_arguments",
    "calibrate_to_dir",
    "run",
]

#: The files one run writes into DIR, replaced together.
OUTPUT_FILES: Final = ("scores.csv", "graders.csv", "owners.csv", "fit.json")

SCORES_COLUMNS: Final = (
    "kr_id", "n_grades", "raw_grade", "evidence_grade", "calibrated_grade", "ci_low", "ci_high",
    "owner_id", "std_error", "reason",
)  # fmt: skip
GRADERS_COLUMNS: Final = (
    "grader_id", "n_grades", "leniency", "std_error", "ci_low", "ci_high", "scale", "q_value",
    "flag", "n_linking", "component", "compared_with", "z", "p_value", "scale_std_error",
    "scale_q_value", "infit", "outfit", "reason",
)  # fmt: skip
OWNERS_COLUMNS: Final = (
    "owner_id", "n_krs", "achievement", "ci_low", "ci_high", "std_error", "reason",
)  # fmt: skip

# Infit/outfit mean-squares outside this band are the usual Rasch rule of thumb for a
# grader whose grades are noisier (> 1.5) or more predictable (< 0.5) than the model.
MISFIT_BAND: Final = (0.5, 1.5)

# How many per-KR messages go to the terminal; the rest are in fit.json.
_SHOWN: Final = 20

_OPTION_OF: Final = {
    "confidence": "--confidence",
    "fdr": "--fdr",
    "min_effect": "--min-effect",
    "min_linked": "--min-linked",
}


class _Clock:
    """Wall and CPU seconds per phase, for ``--timings``."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        # CPU spent before the clock started: interpreter start-up and imports
        self.phases: list[tuple[str, float | None, float]] = [("start-up", None, self._cpu)]

    def lap(self, phase: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.phases.append((phase, wall - self._wall, cpu - self._cpu))
        self._wall, self._cpu = wall, cpu

    def __str__(self) -> str:
        parts = [
            f"{name} {'-' if wall is None else f'{wall:.3f}'}/{cpu:.3f}"
            for name, wall, cpu in self.phases
        ]
        return "seconds wall/CPU: " + "; ".join(parts)


class UsageError(Exception):
    """A bad command-line option or output directory (exit code 2)."""


class InputFile(msgspec.Struct, frozen=True, kw_only=True):
    """One input file: its name as given, the sha256 of its bytes and its data rows."""

    role: str
    name: str
    sha256: str
    rows: int


class EvidenceNote(msgspec.Struct, frozen=True, kw_only=True):
    """A KR whose evidence could not be graded (it then has no evidence grade)."""

    kr_id: str
    row: int | None
    field: str
    message: str


class EvidenceWarning(msgspec.Struct, frozen=True, kw_only=True):
    """A remark on a KR's evidence grade that did not stop it (ignored fields, overshoot)."""

    kr_id: str
    message: str


class OutcomeFlag(msgspec.Struct, frozen=True, kw_only=True):
    """A KR whose description reads as an activity (an output) rather than an outcome."""

    kr_id: str
    description: str
    triggers: tuple[str, ...]
    reasons: tuple[str, ...]
    suggestion: str | None


class GraderMisfit(msgspec.Struct, frozen=True, kw_only=True):
    """A grader whose infit or outfit mean-square lies outside :data:`MISFIT_BAND`."""

    grader_id: str
    infit: float | None
    outfit: float | None


class Diagnostics(msgspec.Struct, frozen=True, kw_only=True):
    """Fit diagnostics: convergence, unexpected grades, grader misfit and flag counts."""

    converged: bool
    iterations: int
    flag_counts: dict[str, int]
    unexpected: tuple[UnexpectedGrade, ...]
    misfit_band: tuple[float, float]
    misfit: tuple[GraderMisfit, ...]


class CalibrateReport(msgspec.Struct, frozen=True, kw_only=True):
    """The content of ``fit.json``: how the numbers were made and what to watch out for."""

    okrcal_version: str | None
    model: str
    model_spec: dict[str, object]
    model_version: str
    input_hash: str
    scale: Scale
    confidence: float
    inputs: tuple[InputFile, ...]
    cycles: tuple[str, ...]
    n_grades: int
    n_krs: int
    n_graders: int
    n_owners: int
    n_evidence: int
    variance: VarianceComponents
    components: tuple[Component, ...]
    diagnostics: Diagnostics
    warnings: tuple[str, ...]
    evidence_problems: tuple[EvidenceNote, ...]
    evidence_warnings: tuple[EvidenceWarning, ...]
    outcome_flags: tuple[OutcomeFlag, ...]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``okrcal calibrate``."""
    parser.add_argument("grades", metavar="GRADES.csv", type=Path, help=_GRADES_HELP)
    parser.add_argument("--krs", metavar="KRS.csv", type=Path, help=_KRS_HELP)
    parser.add_argument(
        "--scale",
        default="google",
        help="grading scale of GRADES.csv: google (0-1), percent (0-100), five_point (1-5) "
        "or a range LOW:HIGH such as 1:25 (default google)",
    )
    parser.add_argument(
        "--model",
        default="additive",
        help=f"one of {', '.join(MODEL_NAMES)} (default additive)",
    )
    parser.add_argument(
        "--confidence", type=float, default=0.9, help="interval coverage (default 0.9)"
    )
    parser.add_argument(
        "--fdr", type=float, default=0.05, help="false-discovery rate for flags (default 0.05)"
    )
    parser.add_argument(
        "--min-effect",
        type=float,
        default=0.05,
        help="smallest leniency worth flagging, on the 0-1 scale (default 0.05)",
    )
    parser.add_argument(
        "--min-linked",
        type=int,
        default=5,
        help="fewer linking grades than this and a grader is insufficient_data (default 5)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        required=True,
        help="directory for scores.csv, graders.csv, owners.csv and fit.json; it must be "
        "new, empty, or hold only a previous run's files",
    )
    parser.add_argument(
        "--timings",
        action="store_true",
        help="print the wall and CPU seconds of each phase to stderr",
    )


_GRADES_HELP: Final = (
    "CSV with a header: kr_id, grader_id, grade; optional owner_id, cycle. "
    "Unknown columns are an error."
)
_KRS_HELP: Final = (
    "CSV with a header: kr_id; optional owner_id, kr_type, baseline, target, actual, "
    "milestones_done, milestones_total, done, threshold, tolerance, direction, description, "
    "weight, org_unit. Gives each KR its evidence grade."
)


def run(args: argparse.Namespace) -> int:
    """Run ``okrcal calibrate``; returns the exit code (0, 1 or 2)."""
    try:
        return calibrate_to_dir(
            grades=args.grades,
            krs=args.krs,
            scale=args.scale,
            model=args.model,
            settings={
                "confidence": args.confidence,
                "fdr": args.fdr,
                "min_effect": args.min_effect,
                "min_linked": args.min_linked,
            },
            out=args.out,
            stdout=sys.stdout,
            stderr=sys.stderr,
            timings=args.timings,
        )
    except (UsageError, CsvInputError) as exc:
        print(f"okrcal calibrate: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"okrcal calibrate: cannot write the results: {exc}", file=sys.stderr)
        return 1


def calibrate_to_dir(
    *,
    grades: Path,
    krs: Path | None,
    scale: str,
    model: str,
    settings: dict[str, float | int],
    out: Path,
    stdout: TextIO,
    stderr: TextIO,
    timings: bool = False,
) -> int:
    """Read, validate, fit, and write the four files into ``out`` as a set; returns 0.

    With ``timings``, the wall and CPU seconds of each phase go to ``stderr`` at the end.
    Raises :class:`UsageError` or :class:`~service.csvio.CsvInputError` for bad input
    (before anything is written) and :class:`OSError` when the results cannot be written.
    """
    # A run makes millions of strings, rows and result structs and no garbage cycles
    # worth collecting; without this the collector rescans them all, again and again.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        clock = _Clock()
        code = _calibrate_to_dir(grades, krs, scale, model, settings, out, stdout, stderr, clock)
        if timings:
            print(f"okrcal calibrate: timings: {clock}", file=stderr)
        return code
    finally:
        if gc_was_enabled:
            gc.enable()


def _calibrate_to_dir(
    grades: Path,
    krs: Path | None,
    scale: str,
    model: str,
    settings: dict[str, float | int],
    out: Path,
    stdout: TextIO,
    stderr: TextIO,
    clock: _Clock,
) -> int:
    the_scale = _parse_scale(scale)
    spec = _parse_model(model, settings)
    _check_out_dir(out)
    _import_meanwhile("calibrate.engine")

    grade_data, grades_sha = read_grades_file(grades, source=str(grades))
    clock.lap("read grades")
    n_rows = grade_data.source.n_rows
    inputs = [InputFile(role="grades", name=grades.name, sha256=grades_sha, rows=n_rows)]

    warnings: list[str] = []
    notes: list[EvidenceNote] = []
    evidence_warnings: list[EvidenceWarning] = []
    outcome_flags: list[OutcomeFlag] = []
    kr_rows: KeyResultRows | None = None
    evidence: dict[str, float] = {}
    if krs is not None:
        kr_cols, krs_sha = read_csv_file(krs, KRS_SPEC, source=str(krs))
        inputs.append(InputFile(role="krs", name=krs.name, sha256=krs_sha, rows=kr_cols.n_rows))
        kr_rows = key_results_from_columns(kr_cols)
        clock.lap("read krs")
        graded = set(grade_data.kr_names)
        ungraded = [k for k in kr_rows.row_of if k not in graded]
        if ungraded:
            warnings.append(
                f"{len(ungraded)} KR(s) in {krs.name} have no grades and were ignored "
                f"(first: {', '.join(repr(k) for k in ungraded[:3])})"
            )
        # every row at once, then only the KRs that have grades are used
        batch = grade_columns(kr_rows.evidence)
        ids = kr_rows.evidence.kr_id
        use = np.isfinite(batch.grade)
        use[use] = [ids[i] in graded for i in np.flatnonzero(use).tolist()]
        evidence = dict(zip(itertools.compress(ids, use), batch.grade[use].tolist(), strict=True))
        evidence_warnings = [
            EvidenceWarning(kr_id=k, message=text)
            for k, texts in sorted((ids[i], w) for i, w in batch.warnings.items() if use[i])
            for text in texts
        ]
        notes = _evidence_notes(kr_rows, batch.problems, graded)
        outcome_flags = _outcome_flags(kr_rows, graded)
        clock.lap("evidence")

    table = build_grade_table(grade_data, the_scale, evidence=evidence, krs=kr_rows)
    clock.lap("table")
    try:
        from calibrate.engine import fit_columns  # imported meanwhile by _import_meanwhile

        fit, kr_columns = fit_columns(spec, table)
    except CalibrateError as exc:
        # valid grades the model cannot take (say, too many graders in one linked group)
        raise CsvInputError(
            str(grades), f"the {model} model cannot fit these grades: {exc}"
        ) from None
    clock.lap("fit")
    report = _report(
        fit,
        the_scale,
        inputs,
        warnings,
        notes,
        evidence_warnings,
        outcome_flags,
        n_evidence=len(evidence),
        cycles=sorted(
            {c for c in grade_data.cycle_codes[0] if c} if grade_data.cycle_codes else ()
        ),
    )
    _write_outputs(out, fit, kr_columns, report)
    clock.lap("write")

    for note in notes[:_SHOWN]:
        where = f"row {note.row}, " if note.row is not None else ""
        print(
            f"okrcal calibrate: warning: {krs}, {where}KR {note.kr_id!r}, field {note.field!r}: "
            f"{note.message}; this KR has no evidence grade",
            file=stderr,
        )
    if len(notes) > _SHOWN:
        print(
            f"okrcal calibrate: warning: ... and {len(notes) - _SHOWN} more KR(s) with "
            "evidence that could not be graded (all listed in fit.json)",
            file=stderr,
        )
    for text in warnings:
        print(f"okrcal calibrate: warning: {text}", file=stderr)
    print(_summary(fit, report, out), file=stdout)
    return 0


# --------------------------------------------------------------------------- options


def _parse_scale(text: str) -> Scale:
    try:
        return parse_scale(text)
    except ScaleError as exc:
        raise UsageError(f"--scale: {exc}") from None


def _parse_model(name: str, settings: dict[str, float | int]) -> Model:
    if name not in MODEL_NAMES:
        raise UsageError(f"--model: unknown model {name!r}: use one of {', '.join(MODEL_NAMES)}")
    try:
        return model_from_name(name, **settings)
    except ModelError as exc:
        text = str(exc)
        option = next((o for f, o in _OPTION_OF.items() if text.startswith(f)), "--model")
        raise UsageError(f"{option}: {text}") from None


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES)
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise UsageError(
                f"--out {out}: the directory holds files okrcal did not write ({shown}); "
                "give a new or empty directory, or one with only a previous run's "
                + ", ".join(OUTPUT_FILES)
            )


# --------------------------------------------------------------------------- anchors


def _evidence_notes(
    rows: KeyResultRows, problems: Iterable[EvidenceProblem], graded: set[str]
) -> list[EvidenceNote]:
    notes = [
        EvidenceNote(kr_id=p.kr_id, row=rows.row_of.get(p.kr_id), field=p.field, message=p.message)
        for p in problems
        if p.kr_id in graded
    ]
    notes.sort(key=lambda n: (n.row if n.row is not None else 0, n.kr_id))
    return notes


def _outcome_flags(rows: KeyResultRows, graded: set[str]) -> list[OutcomeFlag]:
    flags: list[OutcomeFlag] = []
    for kr_id, text in rows.descriptions.items():
        if kr_id not in graded:
            continue
        check = check_outcome(text)
        if check.is_output:
            flags.append(
                OutcomeFlag(
                    kr_id=kr_id,
                    description=text,
                    triggers=tuple(check.triggers),
                    reasons=tuple(check.reasons),
                    suggestion=check.suggestion,
                )
            )
    return flags


# --------------------------------------------------------------------------- report


def _okrcal_version() -> str | None:
    from importlib import metadata  # not at start-up: it takes a while

    try:
        return metadata.version("okrcal")
    except metadata.PackageNotFoundError:
        return None


def _report(
    fit: CalibrationFit,
    scale: Scale,
    inputs: Sequence[InputFile],
    warnings: Sequence[str],
    notes: Sequence[EvidenceNote],
    evidence_warnings: Sequence[EvidenceWarning],
    outcome_flags: Sequence[OutcomeFlag],
    *,
    n_evidence: int,
    cycles: Sequence[str],
) -> CalibrateReport:
    counts: dict[str, int] = {}
    for g in fit.graders:
        counts[g.flag] = counts.get(g.flag, 0) + 1
    low, high = MISFIT_BAND
    misfit = tuple(
        GraderMisfit(grader_id=g.grader_id, infit=g.infit, outfit=g.outfit)
        for g in fit.graders
        if any(v is not None and not low <= v <= high for v in (g.infit, g.outfit))
    )
    return CalibrateReport(
        okrcal_version=_okrcal_version(),
        model=fit.model,
        model_spec=fit.model_spec,
        model_version=fit.model_version,
        input_hash=fit.input_hash,
        scale=scale,
        confidence=fit.confidence,
        inputs=tuple(inputs),
        cycles=tuple(cycles),
        n_grades=fit.n_grades,
        n_krs=fit.n_krs,
        n_graders=fit.n_graders,
        n_owners=len(fit.owners),
        n_evidence=n_evidence,
        variance=fit.variance,
        components=fit.components,
        diagnostics=Diagnostics(
            converged=fit.converged,
            iterations=fit.iterations,
            flag_counts=dict(sorted(counts.items())),
            unexpected=fit.unexpected,
            misfit_band=MISFIT_BAND,
            misfit=misfit,
        ),
        warnings=(*fit.warnings, *warnings),
        evidence_problems=tuple(notes),
        evidence_warnings=tuple(evidence_warnings),
        outcome_flags=tuple(outcome_flags),
    )


def _import_meanwhile(module: str) -> None:
    """Import ``module`` on another thread while this one reads the input files.

    The fit's imports (scipy, about 0.5 s on one core) are Python work that holds
    the GIL, but reading a large CSV is mostly numpy calls that release it, so the
    two overlap on a second core. The fit's own import waits on Python's module lock
    if this one is not done, and raises any error itself: here errors are dropped.
    """

    def run() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    threading.Thread(target=run, name=f"okrcal-import-{module}", daemon=True).start()


def _summary(fit: CalibrationFit, report: CalibrateReport, out: Path) -> str:
    lines = [fit.summary()]
    if report.n_evidence or report.evidence_problems:
        lines.append(
            f"evidence grades for {report.n_evidence} KR(s); "
            f"{len(report.evidence_problems)} KR(s) with evidence that could not be graded"
        )
    flags = report.outcome_flags
    if flags:
        lines.append(f"{len(flags)} KR(s) read as outputs (activities) rather than outcomes:")
        for f in flags[:5]:
            lines.append(f"  {f.kr_id}: {', '.join(f.triggers)} — {_clip(f.description, 60)}")
        if len(flags) > 5:
            lines.append(f"  ... and {len(flags) - 5} more (listed in fit.json)")
    lines.append(f"wrote {', '.join(str(out / name) for name in OUTPUT_FILES)}")
    return "\n".join(lines)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# --------------------------------------------------------------------------- writing


# Columns by how their cells are written; every other column holds floats or None.
_INT_COLUMNS: Final = frozenset({"n_grades", "n_linking", "component", "n_krs"})
_TEXT_COLUMNS: Final = frozenset(
    {"kr_id", "grader_id", "owner_id", "flag", "reason", "compared_with"}
)
_NEEDS_QUOTES: Final = re.compile(r'[",\r\n]')


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if _NEEDS_QUOTES.search(text) else text


def _column(name: str, values: list[Any]) -> list[str]:
    """One output column as CSV cells, converted a column at a time for speed."""
    if name in _INT_COLUMNS:
        if set(map(type, values)) <= {int}:
            return _json_cells(values)
        return [str(v) for v in values]
    if name in _TEXT_COLUMNS:
        cells: list[str] = ["" if v is None else v for v in values] if None in values else values
        if _NEEDS_QUOTES.search("".join(cells)):
            cells = [_quote(c) for c in cells]
        return cells
    return _float_cells(values)


def _json_cells(values: list[object]) -> list[str]:
    if not values:
        return []
    return msgspec.json.encode(values)[1:-1].decode("ascii").split(",")


def _float_cells(values: Sequence[float | None]) -> list[str]:
    """CSV cells of floats: ``repr(float(v))``, the shortest text that reads back to ``v``;
    ``None`` is an empty cell.

    msgspec writes the same shortest digits as ``repr`` (one call for the column is
    several times faster than a ``repr`` call per cell) but lays out very small and
    very large magnitudes differently (``0.00001`` for ``1e-05``, ``1e16`` for
    ``1e+16``) and writes NaN, infinities and ``None`` as ``null``: those cells, rare
    in practice, are redone with ``repr``.

    >>> _float_cells([0.1, None, 1e-05, 2.5e16, 3.0])
    ['0.1', '', '1e-05', '2.5e+16', '3.0']
    """
    vals = values if isinstance(values, list) else list(values)
    if not set(map(type, vals)) <= {float, type(None)}:
        # numpy floats, ints or bools: float() first, as repr(float(v)) would
        vals = [None if v is None else float(v) for v in vals]
    if not vals:
        return []
    cells = msgspec.json.encode(vals)[1:-1].decode("ascii").split(",")
    odd = _not_as_repr(np.array(vals, dtype=np.float64))  # None becomes NaN
    for i in np.flatnonzero(odd).tolist():
        v = vals[i]
        cells[i] = "" if v is None else repr(v)
    return cells


def _write_csv(path: Path, header: Sequence[str], items: Sequence[msgspec.Struct]) -> None:
    _write_columns(path, header, [list(map(operator.attrgetter(name), items)) for name in header])


#: A column to write: values (None for an empty cell), or a numpy array (NaN for one).
Column = list[Any] | npt.NDArray[Any]


def _write_columns(path: Path, header: Sequence[str], columns: Sequence[Column]) -> None:
    """One CSV file: the header, then a row per entry of the columns."""
    with path.open("wb") as fh:
        fh.write((",".join(header) + "\n").encode("utf-8"))
        body = _json_rows_body(header, columns)
        if body is not None:
            fh.writelines(body)
            return
        cells = [_column(name, _values(col)) for name, col in zip(header, columns, strict=True)]
        for start in range(0, len(cells[0]) if cells else 0, 1 << 16):
            rows = zip(*(c[start : start + (1 << 16)] for c in cells), strict=True)
            fh.write(("\n".join(map(",".join, rows)) + "\n").encode("utf-8"))


def _values(column: Column) -> list[Any]:
    """A column as Python values, None where an array holds NaN."""
    if not isinstance(column, np.ndarray):
        return column
    out: list[Any] = column.tolist()
    if column.dtype.kind == "f":
        for i in np.flatnonzero(np.isnan(column)).tolist():
            out[i] = None
    return out


# Text cells that JSON writes as they are and that hold no CSV syntax: no quote,
# comma or backslash, no bracket (the rows' JSON brackets become line ends), no
# control character (JSON escapes those; a CSV cell would need quotes for some).
_PLAIN_TEXT: Final = re.compile(r'[",\\\[\]\x00-\x1f]')


#: Rows encoded at a time: buffers of a few MB are reused by the allocator, where one
#: buffer for a whole 330k-row file is fresh memory that the kernel must map page by page.
_ROWS_AT_A_TIME: Final = 1 << 15


def _json_rows_body(header: Sequence[str], values: Sequence[Column]) -> list[bytes] | None:
    """The CSV rows as :func:`_column` cells would make them (in chunks of bytes to be
    joined), or None where they would differ.

    msgspec encodes all the rows as JSON arrays in one call, which turns into CSV by
    three byte replacements (``,null`` -> ``,``, ``],[`` -> line end, quotes dropped)
    when every text cell is plain (see ``_PLAIN_TEXT``) and every int an int. Floats
    are written by msgspec with ``repr``'s digits where ``repr`` is positional (0, or
    1e-4 <= |x| < 1e16); the few others (tiny p-values, NaN) go in as ``repr``'s text.
    Anything else (numpy numbers, text needing quotes) takes the cell-by-cell path.
    A numpy column needs no type check: its NaNs are written as JSON null, empty cells.
    """
    columns: list[list[Any]] = []
    for name, column in zip(header, values, strict=True):
        if isinstance(column, np.ndarray):
            columns.append(_array_json_values(column))
            continue
        kinds = set(map(type, column))
        if name in _INT_COLUMNS:
            ok = kinds <= {int}
        elif name in _TEXT_COLUMNS:
            ok = kinds <= {str, type(None)} and not _PLAIN_TEXT.search(
                "".join(filter(None, column))
            )
        else:
            ok = kinds <= {float, type(None)}
            column = _repr_where_json_differs(column) if ok else column
        if not ok:
            return None
        columns.append(column)
    if not columns or not columns[0]:
        return []
    if None in columns[0]:
        return None  # a row's first null has no comma before it (never so: ids come first)
    chunks = []
    for start in range(0, len(columns[0]), _ROWS_AT_A_TIME):
        rows = zip(*(c[start : start + _ROWS_AT_A_TIME] for c in columns), strict=True)
        encoded = msgspec.json.encode(list(rows))[2:-2]
        encoded = encoded.replace(b",null", b",").replace(b"],[", b"\n").replace(b'"', b"")
        chunks.append(encoded + b"\n")
    return chunks


def _array_json_values(column: npt.NDArray[Any]) -> list[Any]:
    """An int or float array as JSON-ready values: floats msgspec writes otherwise than
    ``repr`` as ``repr``'s text, NaN left as NaN (msgspec writes it as null)."""
    out: list[Any] = column.tolist()
    if column.dtype.kind != "f":
        return out
    for i in np.flatnonzero(_not_as_repr(column) & ~np.isnan(column)).tolist():
        out[i] = repr(out[i])
    return out


def _not_as_repr(values: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Where msgspec writes a float otherwise than ``repr``: NaN and infinities (as
    null), and magnitudes below 1e-4 or from 1e16 (``repr`` uses an exponent there)."""
    mags = np.abs(values)
    with np.errstate(invalid="ignore"):
        same: npt.NDArray[np.bool_] = np.isfinite(mags) & (
            (mags == 0) | ((mags >= 1e-4) & (mags < 1e16))
        )
    return ~same


def _repr_where_json_differs(column: list[Any]) -> list[Any]:
    """Floats and Nones, with ``repr(v)`` in place of each float msgspec writes otherwise."""
    odd = np.flatnonzero(_not_as_repr(np.array(column, dtype=np.float64)))  # None: NaN
    if odd.shape[0] == column.count(None):
        return column  # the NaNs are all Nones, written as empty cells
    out = column.copy()
    for i in odd.tolist():
        if out[i] is not None:
            out[i] = repr(out[i])
    return out


def _write_outputs(
    out: Path, fit: CalibrationFit, kr_columns: KRColumns, report: CalibrateReport
) -> None:
    # Through a symlink: replace the directory it points to, not the link.
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.okrcal-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        scores: dict[str, Column] = {
            "kr_id": list(kr_columns.kr_id),
            "owner_id": list(kr_columns.owner_id),
            "n_grades": kr_columns.n_grades,
            "raw_grade": kr_columns.raw_grade,
            "evidence_grade": kr_columns.evidence_grade,
            "calibrated_grade": kr_columns.calibrated_grade,
            "ci_low": kr_columns.ci_low,
            "ci_high": kr_columns.ci_high,
            "std_error": kr_columns.std_error,
            "reason": kr_columns.reason(),
        }
        _write_columns(staging / "scores.csv", SCORES_COLUMNS, [scores[n] for n in SCORES_COLUMNS])
        _write_csv(staging / "graders.csv", GRADERS_COLUMNS, fit.graders)
        _write_csv(staging / "owners.csv", OWNERS_COLUMNS, fit.owners)
        encoded = msgspec.json.format(msgspec.json.encode(report), indent=2)
        (staging / "fit.json").write_bytes(encoded + b"\n")
        _install(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _install(staging: Path, out: Path) -> None:
    """Put the staged directory in place of ``out`` so that DIR only ever holds a whole set."""
    _check_out_dir(out)  # again: DIR may have changed while the fit ran
    if not out.exists():
        staging.rename(out)
        return
    staging.chmod(stat.S_IMODE(out.stat().st_mode))
    if not any(out.iterdir()):
        # rename() replaces an empty directory on POSIX in one step.
        staging.replace(out)
        return
    # A previous run's set: move it aside, move the new set in, then delete the old one.
    # A crash in between leaves DIR missing (the old set beside it), never a mixed set.
    old = out.parent / f".{out.name}.okrcal-old-{os.getpid()}-{secrets.token_hex(4)}"
    out.rename(old)
    try:
        staging.rename(out)
    except BaseException:
        with contextlib.suppress(OSError):
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
