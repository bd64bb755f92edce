"""How ``okrcal calibrate`` writes numbers: the column-at-a-time formatter equals repr()."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.cmd_calibrate import _float_cells


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
