"""CSV reading and validation for grades and Key Results (service.csvio)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchors import parse_scale
from service import csvio
from service.csvio import (
    GRADES_SPEC,
    KRS_SPEC,
    CsvColumns,
    CsvInputError,
    CsvSpec,
    build_grade_table,
    grades_from_columns,
    key_results_from_columns,
    read_columns,
    read_csv_file,
)

GOOGLE = parse_scale("google")


def _write(tmp_path: Path, text: str | bytes, name: str = "grades.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def _load(path: Path, spec: CsvSpec) -> None:
    cols, _ = read_csv_file(path, spec, source=path.name)
    if spec is GRADES_SPEC:
        build_grade_table(grades_from_columns(cols), GOOGLE)
    else:
        key_results_from_columns(cols)


def _error(path: Path, spec: CsvSpec = GRADES_SPEC) -> CsvInputError:
    with pytest.raises(CsvInputError) as info:
        _load(path, spec)
    return info.value


# --------------------------------------------------------------------------- reading


def test_reads_columns_with_bom_crlf_quotes_and_blank_lines(tmp_path: Path) -> None:
    text = (
        "\ufeffKR_ID , Grader_ID,grade,owner_id\r\n"
        '"k,1",g1,0.7,"o ""x"""\r\n'
        "\r\n"
        'k2,"g\r\n2", 0.3 ,o2\r\n'
        "\r\n"
        ",,,\r\n"
        "\r\n"
    )
    cols, digest = read_csv_file(_write(tmp_path, text), GRADES_SPEC)
    assert cols.header == ("kr_id", "grader_id", "grade", "owner_id")
    assert cols.n_rows == 2
    assert cols.columns["kr_id"] == ["k,1", "k2"]
    assert cols.columns["grader_id"] == ["g1", "g\r\n2"]
    assert cols.columns["grade"] == ["0.7", "0.3"]
    assert cols.columns["owner_id"] == ['o "x"', "o2"]
    assert digest.startswith("sha256:")
    assert len(digest) == 7 + 64


def test_reads_from_a_text_stream_for_uploads() -> None:
    stream = io.StringIO("kr_id,grader_id,grade\nk1,g1,1\nk1,g2,0\n", newline="")
    cols = read_columns(stream, GRADES_SPEC, source="upload")
    assert cols.n_rows == 2
    assert cols.path is None
    data = grades_from_columns(cols)
    assert data.grades.tolist() == [1.0, 0.0]
    assert data.cycles is None


def test_many_rows_are_read_in_chunks_in_order(tmp_path: Path) -> None:
    n = 150_000  # more than two chunks
    lines = ["kr_id,grader_id,grade"] + [f"k{i},g{i % 7},{(i % 21) / 20}" for i in range(n)]
    cols, _ = read_csv_file(_write(tmp_path, "\n".join(lines) + "\n"), GRADES_SPEC)
    data = grades_from_columns(cols)
    assert cols.n_rows == n
    assert data.kr_ids[123_456] == "k123456"
    np.testing.assert_array_equal(data.grades, (np.arange(n) % 21) / 20)


# --------------------------------------------------------------------------- header and shape


@pytest.mark.parametrize(
    ("text", "needle", "column"),
    [
        ("", "the file is empty", None),
        ("\n\n  \n", "the file is empty", None),
        ("kr_id,grader_id,grade\n", "no data rows", None),
        ("kr_id,grader_id,grade\n\n,,\n", "no data rows", None),
        ("kr_id,grader_id\nk1,g1\n", "the header has no column 'grade'", "grade"),
        ("k1,g1,0.5\nk2,g1,0.5\n", "the first line must name the columns", "kr_id"),
        ("kr_id,grader_id,grde\nk1,g1,0.5\n", "did you mean 'grade'?", "grde"),
        ("kr_id,grader_id,grade,team\nk1,g1,0.5,x\n", "unknown column", "team"),
        ("kr_id,grader_id,grade,grade\nk1,g1,0.5,0.4\n", "appears twice", "grade"),
        ("kr_id,,grade\nk1,g1,0.5\n", "header column 2 has no name", None),
        ("kr_id;grader_id;grade\nk1;g1;0,5\n", "separated by semicolons", None),
        ("kr_id\tgrader_id\tgrade\nk1\tg1\t0.5\n", "separated by tabs", None),
    ],
)
def test_header_problems(tmp_path: Path, text: str, needle: str, column: str | None) -> None:
    err = _error(_write(tmp_path, text))
    assert needle in str(err)
    assert err.source == "grades.csv"
    assert err.column == column
    assert err.row is None


def test_a_row_with_too_many_fields_names_row_and_line(tmp_path: Path) -> None:
    text = "kr_id,grader_id,grade\nk1,g1,0.5\n\nk2,g1,0,5\n"
    err = _error(_write(tmp_path, text))
    assert (err.row, err.line) == (2, 4)
    assert "has 4 field(s) but the header has 3" in str(err)
    assert "row 2 (not counting the header; line 4 of the file)" in str(err)


def test_malformed_quotes_and_bad_encoding(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, 'kr_id,grader_id,grade\nk1,"g1"x,0.5\n'))
    assert "malformed CSV" in str(err)
    err = _error(_write(tmp_path, b"kr_id,grader_id,grade\nk1,g\xff1,0.5\n"))
    assert "is not UTF-8 text (line 2)" in str(err)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    err = _error(tmp_path / "nope.csv")
    assert str(err) == "nope.csv: no such file"
    (tmp_path / "d.csv").mkdir()
    assert "is a directory" in str(_error(tmp_path / "d.csv"))


# --------------------------------------------------------------------------- grades


@pytest.mark.parametrize(
    ("cell", "needle"),
    [
        ("abc", "'abc' is not a number"),
        ("", "is empty; a number is required"),
        ('"0,5"', "use a decimal point"),
    ],
)
def test_non_numeric_grade_names_row_line_and_column(
    tmp_path: Path, cell: str, needle: str
) -> None:
    text = f"kr_id,grader_id,grade\nk1,g1,0.5\n\nk2,g1,0.25\nk3,g1,{cell}\n"
    err = _error(_write(tmp_path, text))
    assert (err.row, err.line, err.column) == (3, 5, "grade")
    assert needle in str(err)
    assert str(err).startswith("grades.csv, row 3 (not counting the header; line 5 of the file)")


def test_line_numbers_count_multiline_quoted_cells(tmp_path: Path) -> None:
    text = 'kr_id,grader_id,grade\n"k\n1",g1,0.5\nk2,g1,x\n'
    err = _error(_write(tmp_path, text))
    assert (err.row, err.line) == (2, 4)


@pytest.mark.parametrize(
    ("cell", "needle"),
    [
        ("1.5", "outside the google scale"),
        ("-0.1", "outside the google scale"),
        ("nan", "not a finite number"),
        ("inf", "not a finite number"),
    ],
)
def test_bad_grade_values(tmp_path: Path, cell: str, needle: str) -> None:
    err = _error(_write(tmp_path, f"kr_id,grader_id,grade\nk1,g1,0.5\nk2,g1,{cell}\n"))
    assert (err.row, err.line, err.column) == (2, 3, "grade")
    assert needle in str(err)


def test_empty_ids_and_duplicates(tmp_path: Path) -> None:
    err = _error(_write(tmp_path, "kr_id,grader_id,grade\nk1,g1,0.5\nk2, ,0.5\n"))
    assert (err.row, err.column) == (2, "grader_id")
    assert "non-empty id" in str(err)
    err = _error(_write(tmp_path, "kr_id,grader_id,grade\n,g1,0.5\nk2,g1,0.5\n"))
    assert (err.row, err.column) == (1, "kr_id")
    err = _error(_write(tmp_path, "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g1,0.5\nk1,g1,0.7\n"))
    assert (err.row, err.line) == (3, 4)
    assert "twice in one cycle (first at row 1)" in str(err)


def test_cycles_keep_the_same_pair_apart(tmp_path: Path) -> None:
    text = "kr_id,grader_id,grade,cycle\nk1,g1,0.5,2025Q1\nk1,g1,0.7,2025Q2\n"
    cols, _ = read_csv_file(_write(tmp_path, text), GRADES_SPEC)
    table = build_grade_table(grades_from_columns(cols), GOOGLE)
    assert table.n_grades == 2
    assert table.cycles == ("2025Q1", "2025Q2")
    text += "k1,g1,0.9,2025Q2\n"
    err = _error(_write(tmp_path, text))
    assert (err.row, err.column) == (3, "grader_id")


def test_one_owner_per_kr(tmp_path: Path) -> None:
    text = "kr_id,grader_id,grade,owner_id\nk1,g1,0.5,ann\nk1,g2,0.5,\nk1,g3,0.5,bob\n"
    err = _error(_write(tmp_path, text))
    assert (err.row, err.column) == (3, "owner_id")
    assert "'bob' here but 'ann' at row 1" in str(err)


def test_owners_from_grades_reach_the_table(tmp_path: Path) -> None:
    text = "kr_id,grader_id,grade,owner_id\nk1,g1,0.5,ann\nk1,g2,0.5,\nk2,g1,0.1,\n"
    cols, _ = read_csv_file(_write(tmp_path, text), GRADES_SPEC)
    table = build_grade_table(grades_from_columns(cols), GOOGLE)
    assert table.kr_owner == ("ann", None)


# --------------------------------------------------------------------------- key results


KRS_HEADER = (
    "kr_id,owner_id,kr_type,baseline,target,actual,milestones_done,milestones_total,done,"
    "threshold,tolerance,direction,description,weight,org_unit\n"
)


def test_key_results_are_typed(tmp_path: Path) -> None:
    text = KRS_HEADER + (
        "k1,ann,metric,10,20,15,,,,,,increase,Raise NPS from 10 to 20,2,sales\n"
        "k2,,MILESTONE,,,,3.0,4,,,,,,,\n"
        "k3,,,,,,,,yes,,,,,,\n"
        "k4,,,,,,,,,,,,just words,,\n"
    )
    rows = key_results_from_columns(read_csv_file(_write(tmp_path, text, "krs.csv"), KRS_SPEC)[0])
    k1, k2, k3 = rows.key_results  # k4 has no evidence, so nothing to grade
    assert (k1.kr_type, k1.baseline, k1.target, k1.actual, k1.direction) == (
        "metric", 10.0, 20.0, 15.0, "increase",
    )  # fmt: skip
    assert (k2.kr_type, k2.milestones_done, k2.milestones_total) == ("milestone", 3, 4)
    assert k3.done is True
    assert rows.owners == {"k1": "ann"}
    assert rows.weights == {"k1": 2.0}
    assert rows.descriptions == {"k1": "Raise NPS from 10 to 20", "k4": "just words"}
    assert rows.row_of == {"k1": 1, "k2": 2, "k3": 3, "k4": 4}
    assert rows.problems == []


def test_zero_and_no_are_evidence(tmp_path: Path) -> None:
    text = "kr_id,done,baseline,target,actual\nk1,no,,,\nk2,,0,10,0\nk3,,,,\n"
    rows = key_results_from_columns(read_csv_file(_write(tmp_path, text, "krs.csv"), KRS_SPEC)[0])
    assert [(k.kr_id, k.done, k.actual) for k in rows.key_results] == [
        ("k1", False, None),
        ("k2", None, 0.0),
    ]


@pytest.mark.parametrize(
    ("row", "column", "needle"),
    [
        ("k1,,,ten,20,15,,,,,,,,,", "baseline", "'ten' is not a number"),
        ("k1,,,,,,2.5,4,,,,,,,", "milestones_done", "'2.5' is not a whole number"),
        ("k1,,okr,,,,,,,,,,,,", "kr_type", "not one of metric, milestone, binary, maintain"),
        ("k1,,,,,,,,maybe,,,,,,", "done", "'maybe' is not 1/0"),
        ("k1,,,,,,,,,,,upward,,,", "direction", "not one of increase"),
        ("k1,,,,,,,,,,,,,-1,", "weight", "finite number >= 0"),
        ("k1,,,,,,,,,,,,,inf,", "weight", "finite number >= 0"),
        (",,,,,,,,,,,,,1,", "kr_id", "every Key Result needs an id"),
        ("k0,,,,,,,,,,,,,,", "kr_id", "appears twice (first at row 1)"),
    ],
)
def test_key_result_errors(tmp_path: Path, row: str, column: str, needle: str) -> None:
    text = KRS_HEADER + "k0,,,,,,,,,,,,,,\n" + row + "\n"
    err = _error(_write(tmp_path, text, "krs.csv"), KRS_SPEC)
    assert (err.source, err.row, err.line, err.column) == ("krs.csv", 2, 3, column)
    assert needle in str(err)


def test_non_finite_evidence_is_a_per_kr_problem(tmp_path: Path) -> None:
    text = "kr_id,baseline,target,actual,owner_id\nk1,0,10,nan,ann\nk2,0,10,5,bob\n"
    rows = key_results_from_columns(read_csv_file(_write(tmp_path, text, "krs.csv"), KRS_SPEC)[0])
    assert [k.kr_id for k in rows.key_results] == ["k2"]
    [problem] = rows.problems
    assert (problem.kr_id, problem.field) == ("k1", "actual")
    assert rows.owners == {"k1": "ann", "k2": "bob"}


def test_owner_conflict_between_files_names_the_krs_row(tmp_path: Path) -> None:
    grades = "kr_id,grader_id,grade,owner_id\nk1,g1,0.5,ann\n"
    krs = "kr_id,owner_id\nk0,zed\nk1,bob\n"
    gcols, _ = read_csv_file(_write(tmp_path, grades), GRADES_SPEC, source="grades.csv")
    kcols, _ = read_csv_file(_write(tmp_path, krs, "krs.csv"), KRS_SPEC, source="krs.csv")
    with pytest.raises(CsvInputError) as info:
        build_grade_table(grades_from_columns(gcols), GOOGLE, krs=key_results_from_columns(kcols))
    err = info.value
    assert (err.source, err.row, err.column) == ("krs.csv", 2, "owner_id")
    assert "'bob' here but 'ann' in grades.csv" in str(err)


def test_evidence_owners_and_weights_reach_the_table(tmp_path: Path) -> None:
    grades = "kr_id,grader_id,grade\nk1,g1,50\nk2,g1,70\n"
    krs = "kr_id,owner_id,weight\nk1,ann,3\nk2,bob,\nk9,cat,1\n"
    gcols, _ = read_csv_file(_write(tmp_path, grades), GRADES_SPEC)
    kcols, _ = read_csv_file(_write(tmp_path, krs, "krs.csv"), KRS_SPEC)
    table = build_grade_table(
        grades_from_columns(gcols),
        parse_scale("percent"),
        evidence={"k2": 0.7, "k9": 1.0},
        krs=key_results_from_columns(kcols),
    )
    assert table.kr_owner == ("ann", "bob")
    assert table.kr_weight.tolist() == [3.0, 1.0]
    assert np.isnan(table.evidence[0])
    assert table.evidence[1] == pytest.approx(70.0)


# ------------------------------------------------------------------ the plain-CSV fast path


def _outcome(read: Callable[[], CsvColumns]) -> object:
    try:
        cols = read()
    except CsvInputError as exc:
        return ("error", exc.row, exc.column, exc.problem)
    return (cols.header, dict(cols.columns), cols.n_rows)


def _both(tmp_path: Path, text: str) -> tuple[object, object]:
    path = _write(tmp_path, text)
    by_file = _outcome(lambda: read_csv_file(path, GRADES_SPEC, source="g")[0])
    with path.open(encoding="utf-8-sig", newline="") as fh:
        by_csv = _outcome(lambda: read_columns(fh, GRADES_SPEC, source="g"))
    return by_file, by_csv


_TRICKY = [
    "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g2,0.25\nk3,g3,1\n",
    "kr_id,grader_id,grade\r\nk1,g1,0.5\r\n\r\nk2,g2,0.25\r\n\r\n",
    "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g2,0.25\n" + 'k3,"g,3",1\nk4,g4,0\n',
    "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g2,0.25\n" + 'k3,"g\n3",1\nk4,g4,0\n',
    "kr_id,grader_id,grade\nk1,g1,0.5\n   \nk2,g2,0.25\nk3,g3\nk4,g4,0\n",
    "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g2,0.25,9\nk3,g3,1\n",
    "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g2,0.25\nk3,g3,1\n,,\n,,\n\n",
    "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g2,0.25\nk3,g3,1",
    "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g2\r0.25\nk3,g3,1\n",
    '\n\nkr_id,grader_id,grade\nk1,g1,0.5\nk2,g2,0.25\nk3,"g3"x,1\n',
]


@pytest.mark.parametrize("block", [1, 7, 16, 23, 64, 1 << 20])
@pytest.mark.parametrize("text", _TRICKY)
def test_fast_path_agrees_with_the_csv_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, block: int
) -> None:
    monkeypatch.setattr(csvio, "_BLOCK", block)
    by_file, by_csv = _both(tmp_path, text)
    assert by_file == by_csv


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("block", [5, 64, 1 << 20])
def test_plain_files_stay_on_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, newline: str, block: int
) -> None:
    monkeypatch.setattr(csvio, "_BLOCK", block)
    rows = [f"k{i},g{i % 3},0.{i % 10}" for i in range(40)]
    path = _write(tmp_path, newline.join(rows) + newline + newline)
    cols: list[list[str]] = [[], [], []]
    with path.open(encoding="utf-8-sig", newline="") as fh:
        n_rows, n_lines, rest = csvio._read_plain_blocks(fh, cols)
    assert rest is None
    assert (n_rows, n_lines) == (40, 41)
    assert cols[0] == [f"k{i}" for i in range(40)]
    assert cols[2][-1] == "0.9"


def test_malformed_quotes_after_plain_blocks_give_the_right_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csvio, "_BLOCK", 16)
    text = "kr_id,grader_id,grade\n" + "k1,g1,0.5\n" * 10 + 'k3,"g3"x,1\n'
    with pytest.raises(CsvInputError) as info:
        read_csv_file(_write(tmp_path, text), GRADES_SPEC)
    assert info.value.line == 12


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.lists(
            st.sampled_from(["k", "g1", "0.5", "", " ", '"', ",", "\n", "\r\n", "x y"]),
            min_size=0,
            max_size=4,
        )
        .map("".join)
        .map(lambda r: r + ",a,0.5"),
        min_size=0,
        max_size=12,
    ),
    ending=st.sampled_from(["", "\n", "\r\n", "\n\n"]),
    block=st.integers(1, 40),
)
def test_fast_path_agrees_with_the_csv_module_on_random_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: list[str], ending: str, block: int
) -> None:
    monkeypatch.setattr(csvio, "_BLOCK", block)
    text = "kr_id,grader_id,grade\n" + "\n".join(rows) + ending
    by_file, by_csv = _both(tmp_path, text)
    assert by_file == by_csv
