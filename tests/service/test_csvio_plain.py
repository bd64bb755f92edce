"""The numpy fast path of GRADES.csv (service.csvio.read_grades_file) against the general path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchors import parse_scale
from service import csvio
from service.csvio import (
    GRADES_SPEC,
    CsvInputError,
    GradeColumns,
    build_grade_table,
    grades_from_columns,
    read_csv_file,
    read_grades_file,
)

GOOGLE = parse_scale("google")


def _outcome(read: object) -> object:
    """Everything a GradeColumns (and the table built from it) says, or the error."""
    try:
        data: GradeColumns = read()  # type: ignore[operator]
        table = build_grade_table(data, GOOGLE)
    except CsvInputError as exc:
        return ("error", str(exc))
    return (
        data.source.n_rows,
        data.kr_ids,
        data.grader_ids,
        data.grades.tobytes(),
        sorted(data.owners.items()),
        data.cycles,
        table.input_hash,
        table.kr_owner,
        table.owner_coding[0],
        table.owner_coding[1].tolist(),
    )


def _both(path: Path) -> tuple[object, object]:
    fast = _outcome(lambda: read_grades_file(path, source="g.csv")[0])
    general = _outcome(
        lambda: grades_from_columns(read_csv_file(path, GRADES_SPEC, source="g.csv")[0])
    )
    return fast, general


_CELLS = ["k1", "k2", "g1", "g2", "0.5", "1", "0.25", "", " ", "1e-1", "-0", "1_0", "nan",
          "0.30000000000000004", "x", ".5", "5.", '"q"', "ü", "1.5"]  # fmt: skip


_PLAIN = ["0.5", "1", "0.25", "0", ".5", "5.", "1e-1", "0.30000000000000004", "-0", "0.7"]


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.sampled_from(
        [
            "kr_id,grader_id,grade",
            "kr_id,grader_id,grade,owner_id",
            "grade,kr_id,grader_id,cycle",
            "KR_ID, Grader_id ,grade",
            "kr_id,grader_id,grde",
        ]
    ),
    rows=st.lists(
        st.tuples(
            # mostly plain cells, so that many files take the fast path
            st.sampled_from(["k1", "k2", "k3", "k10"] * 10 + ["", "k 4", "ü"]),
            st.sampled_from(["g1", "g2", "g3"] * 10 + ["", "g1 "]),
            st.sampled_from(_PLAIN * 10 + _CELLS),
            st.sampled_from(["o1", "o2", "", "c1"]),
        ),
        min_size=0,
        max_size=8,
    ),
    newline=st.sampled_from(["\n", "\r\n"]),
    ending=st.sampled_from(["", "\n", "\n", "\n", "\n\n", ",,,\n", "\r"]),
)
def test_the_fast_path_agrees_with_the_general_one(
    tmp_path: Path, header: str, rows: list[tuple[str, str, str, str]], newline: str, ending: str
) -> None:
    width = header.count(",") + 1
    lines = [header]
    for kr, grader, grade, extra in rows:
        cells = {"kr_id": kr, "grader_id": grader, "grade": grade}
        names = [h.strip().lower() for h in header.split(",")]
        lines.append(",".join(cells.get(n, extra) for n in names[:width]))
    path = tmp_path / "g.csv"
    path.write_bytes((newline.join(lines) + ending).encode("utf-8"))
    fast, general = _both(path)
    assert fast == general


@given(
    number=st.one_of(
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.decimals(allow_nan=False, allow_infinity=False, places=6).map(str),
        st.integers(0, 10**17).map(str),
        st.from_regex(r"\A[0-9]{0,18}\.?[0-9]{0,18}\Z"),
    )
)
@settings(max_examples=500, deadline=None)
def test_plain_numbers_read_as_float_reads_them(number: str) -> None:
    body = f"{number}\n".encode("ascii")
    buf = np.frombuffer(body, dtype=np.uint8)
    got = csvio._plain_floats(buf, np.array([0]), np.array([len(number)]))
    try:
        expected = float(number)
    except ValueError:
        assert got is None
        return
    if len(number) > csvio._PLAIN_WIDTH:
        assert got is None
        return
    assert got is not None
    assert got.tobytes() == np.array([expected]).tobytes()


def test_a_plain_file_takes_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "g.csv"
    rows = [f"k{i % 7},g{i % 5},0.{i % 10},o{i % 7}" for i in range(35)]
    path.write_text("kr_id,grader_id,grade,owner_id\r\n" + "\r\n".join(rows) + "\r\n")

    def general(*args: object, **kwargs: object) -> object:
        raise AssertionError("the general path was taken")

    monkeypatch.setattr(csvio, "read_csv_file", general)
    data, digest = read_grades_file(path)
    assert digest.startswith("sha256:")
    assert data.kr_names == [f"k{i}" for i in range(7)]
    assert data.kr_ids[:3] == ["k0", "k1", "k2"]
    assert data.grades[:3].tolist() == [0.0, 0.1, 0.2]
    assert data.owners == {f"k{i}": f"o{i}" for i in range(7)}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("kr_id,grader_id,grade\nk1,g1,high\n", "row 1 (not counting the header; line 2"),
        ("kr_id,grader_id,grade\nk1,g1,0.5\nk1,g1,0.7\n", "graded KR 'k1' twice"),
        ("kr_id,grader_id,grade,owner_id\nk1,g1,0.5,a\nk1,g2,0.7,b\n", "has owner 'b' here"),
        ("kr_id,grader_id,grade\nk1,,0.5\n", "column 'grader_id': must be a non-empty id"),
        ("kr_id,grader_id,grade\nk1,g1,1.5\n", "outside the google scale"),
        ("kr_id,grader_id,grade\n" + "k,g" + "x" * 300 + ",0.5\n", "longer than 200"),
    ],
)
def test_bad_plain_files_give_the_general_error(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "g.csv"
    path.write_text(text)
    with pytest.raises(CsvInputError) as info:
        build_grade_table(read_grades_file(path)[0], GOOGLE)
    assert needle in str(info.value)


def test_counts_per_row_with_and_without_bitwise_count(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = np.random.default_rng(5).random((50, 16)) < 0.4
    expected = flags.sum(axis=1).tolist()
    assert csvio._count_per_row(flags).tolist() == expected
    monkeypatch.delattr(np, "bitwise_count")  # as on numpy < 2.0
    assert csvio._count_per_row(flags).tolist() == expected
