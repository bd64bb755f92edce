"""How ``okrcal calibrate`` writes numbers: the column-at-a-time formatter equals repr()."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import cmd_calibrate
from service.cmd_calibrate import _column, _float_cells, _json_rows_body, _write_columns


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.floats(),
            st.floats(min_value=-1e-3, max_value=1e-3),
            st.sampled_from([1e-4, 1e-5, 9.99e-5, 1e16, 9.999999999999998e15, -0.0, 1e300]),
            st.integers(-5, 5),
            st.booleans(),
        ),
        max_size=30,
    )
)
def test_float_cells_are_repr_of_float(values: list[float | None]) -> None:
    expected = ["" if v is None else repr(float(v)) for v in values]
    assert _float_cells(values) == expected


def test_numpy_floats_print_as_plain_numbers() -> None:
    assert _float_cells([np.float64(0.25), None, np.float32(0.5)]) == ["0.25", "", "0.5"]


_FLOATS = st.one_of(
    st.none(),
    st.floats(),
    st.floats(min_value=-1e-3, max_value=1e-3),
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from([1e-4, 9.99e-5, 1e16, 9.999999999999998e15, -0.0, 0.0]),
)
_TEXT = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.text(alphabet="abcé目🚀-_. 0123456789", max_size=8),
    st.sampled_from(["null", "nullify", "a,b", 'q"t', "[x]", "back\\slash", "tab\t", "line\nend"]),
)


def _slow_body(header: tuple[str, ...], values: list[list[object]]) -> bytes:
    cells = [_column(name, column) for name, column in zip(header, values, strict=True)]
    return "".join(",".join(row) + "\n" for row in zip(*cells, strict=True)).encode("utf-8")


_HEADER = ("kr_id", "n_grades", "raw_grade", "reason", "std_error")
_PLAIN_TEXT = st.one_of(
    st.none(),
    st.text(alphabet="abcé目🚀-_. 0123456789null", max_size=8),
    # text cells that spell JSON's null must not lose it
    st.sampled_from(["null", "nullify", "an null", "", "0.5"]),
)


def _rows(text: st.SearchStrategy[str | None], floats: st.SearchStrategy[float | None]) -> Any:
    ids = st.text(alphabet="k0123456789é目", min_size=1, max_size=6)
    return st.lists(st.tuples(ids, st.integers(0, 50), floats, text, floats), max_size=12)


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in _HEADER]


@settings(max_examples=200, deadline=None)
@given(_rows(_PLAIN_TEXT, _FLOATS))
def test_plain_text_rows_written_in_one_go_equal_the_cell_by_cell_rows(
    rows: list[tuple[Any, ...]],
) -> None:
    values = _columns(rows)
    fast = _json_rows_body(_HEADER, values)
    assert fast is not None
    assert b"".join(fast) == _slow_body(_HEADER, values)


@settings(max_examples=300, deadline=None)
@given(_rows(_TEXT, _FLOATS))
def test_any_rows_written_in_one_go_equal_the_cell_by_cell_rows(
    rows: list[tuple[Any, ...]],
) -> None:
    values = _columns(rows)
    fast = _json_rows_body(_HEADER, values)
    if fast is not None:  # anything the one-go path cannot write exactly, it declines
        assert b"".join(fast) == _slow_body(_HEADER, values)


def test_odd_floats_are_written_as_repr_and_odd_text_takes_the_cell_path() -> None:
    header = ("kr_id", "n_grades", "raw_grade", "reason")
    plain = [["k1", "k2"], [3, 1], [0.25, None], [None, "no evidence"]]
    assert _json_rows_body(header, plain) == [b"k1,3,0.25,\nk2,1,,no evidence\n"]
    odd = [float("nan"), 1e-05, float("-inf"), 2.5e16]
    rows = [["a", "b", "c", "d"], [0, 0, 0, 0], odd, [None] * 4]
    assert _json_rows_body(header, rows) == [b"a,0,nan,\nb,0,1e-05,\nc,0,-inf,\nd,0,2.5e+16,\n"]
    assert _json_rows_body(header, [plain[0], plain[1], plain[2], ["a, b", None]]) is None
    assert _json_rows_body(header, [["k1", None], *plain[1:]]) is None
    assert _json_rows_body(header, [plain[0], [3, True], *plain[2:]]) is None


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.text(alphabet="k0123456789é", min_size=1, max_size=5),
            st.integers(0, 9),
            _FLOATS,
            _FLOATS,
            st.one_of(st.none(), st.sampled_from(["not estimable", "no KR has two grades, so"])),
        ),
        max_size=10,
    )
)
def test_columns_as_arrays_write_what_the_rows_write(
    rows: list[tuple[str, int, float | None, float | None, str | None]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    header = ("kr_id", "n_grades", "raw_grade", "std_error", "reason")
    lists = _columns(rows) if rows else [[] for _ in header]
    # in a column NaN means no value (KRColumns.rows gives None): a float NaN is one too
    for j in (2, 3):
        lists[j] = [None if v is None or v != v else v for v in lists[j]]
    arrays: list[Any] = [
        lists[0],
        np.array(lists[1], dtype=np.int64),
        np.array([np.nan if v is None else v for v in lists[2]], dtype=np.float64),
        np.array([np.nan if v is None else v for v in lists[3]], dtype=np.float64),
        lists[4],
    ]
    folder = tmp_path_factory.mktemp("cols")
    _write_columns(folder / "lists.csv", header, lists)
    _write_columns(folder / "arrays.csv", header, arrays)
    assert (folder / "arrays.csv").read_bytes() == (folder / "lists.csv").read_bytes()
    assert (folder / "lists.csv").read_bytes() == (",".join(header) + "\n").encode() + _slow_body(
        header, lists
    )


@pytest.mark.parametrize("rows_at_a_time", [1, 2, 3, 7, 8])
def test_rows_written_in_chunks_join_up(
    rows_at_a_time: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cmd_calibrate, "_ROWS_AT_A_TIME", rows_at_a_time)
    values: list[list[Any]] = [
        [f"k{i}" for i in range(7)],
        list(range(7)),
        [0.5, None, 1e-05, 0.25, None, 3.0, 0.1],
        ["null", None, "x", None, None, "", "nullify"],
        [None] * 7,
    ]
    chunks = _json_rows_body(_HEADER, values)
    assert chunks is not None
    assert len(chunks) == -(-7 // rows_at_a_time)
    assert b"".join(chunks) == _slow_body(_HEADER, values)
