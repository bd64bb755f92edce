"""Scales: level points round-trip exactly, conversion is piecewise-linear, parsing is strict."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from anchors import (
    GOOGLE_LEVELS,
    NAMED_SCALES,
    Scale,
    ScaleError,
    convert,
    crosses_level,
    level_boundaries,
    level_index,
    parse_scale,
)

GOOGLE = NAMED_SCALES["google"]


@pytest.mark.parametrize("name", sorted(NAMED_SCALES))
def test_named_scale_level_points_round_trip_exactly(name: str):
    scale = parse_scale(name)
    for point, google in zip(scale.levels, GOOGLE_LEVELS, strict=True):
        assert scale.to_google(point) == google
        assert scale.from_google(google) == point
        assert scale.from_google(scale.to_google(point)) == point


def test_named_scale_level_points():
    assert parse_scale("google").levels == (0.0, 0.3, 0.7, 1.0)
    assert parse_scale("percent").levels == (0.0, 30.0, 70.0, 100.0)
    assert parse_scale("five_point").levels == (1.0, 2.0, 4.0, 5.0)


@pytest.mark.parametrize(
    ("text", "levels"),
    [
        ("0:14", (0.0, 4.2, 9.8, 14.0)),
        ("1:25", (1.0, 8.2, 17.8, 25.0)),
        (" -1 : 1 ", (-1.0, -0.4, 0.4, 1.0)),
        ("0.5:1.5", (0.5, 0.8, 1.2, 1.5)),
    ],
)
def test_range_scales_parse_with_linear_level_points(text: str, levels: tuple[float, ...]):
    scale = parse_scale(text)
    assert scale.levels == pytest.approx(levels, abs=1e-12)
    for point, google in zip(scale.levels, GOOGLE_LEVELS, strict=True):
        assert scale.to_google(point) == google
        assert scale.from_google(google) == point


@pytest.mark.parametrize(
    "text", ["5:1", "3:3", "a:b", "", "   ", "1:", ":5", "1-5", "0:14:2", "Google"]
)
def test_bad_scale_strings_raise_scale_error(text: str):
    with pytest.raises(ScaleError, match="scale"):
        parse_scale(text)


def test_conversion_is_piecewise_linear_between_level_points():
    five = parse_scale("five_point")
    # 3 on the five-point scale is midway between 2 (0.3) and 4 (0.7).
    assert five.to_google(3.0) == pytest.approx(0.5)
    assert five.to_google(1.5) == pytest.approx(0.15)
    assert five.to_google(4.5) == pytest.approx(0.85)
    # Not a plain linear rescale: linear would put 3 at 0.5 too, but 2 at 0.25.
    assert five.to_google(2.0) == 0.3
    assert convert(4.0, five, NAMED_SCALES["percent"]) == 70.0
    assert convert(50.0, NAMED_SCALES["percent"], five) == pytest.approx(3.0)


def test_array_conversion_matches_scalar_conversion():
    five = parse_scale("five_point")
    values = np.array([1.0, 1.7, 2.0, 3.3, 4.0, 5.0])
    out = five.to_google(values)
    assert isinstance(out, np.ndarray)
    assert out.tolist() == [five.to_google(float(v)) for v in values]


def test_scale_struct_rejects_bad_level_points():
    with pytest.raises(ScaleError):
        Scale(name="x", low=0.0, high=1.0, levels=(0.0, 0.7, 0.3, 1.0))
    with pytest.raises(ScaleError):
        Scale(name="x", low=0.0, high=1.0, levels=(0.0, 1.0))
    with pytest.raises(ScaleError):
        Scale(name="x", low=1.0, high=0.0, levels=(1.0, 0.7, 0.3, 0.0))


# --- properties -----------------------------------------------------------------------------

bounds = st.tuples(
    st.integers(min_value=-1000, max_value=1000), st.integers(min_value=1, max_value=2000)
).map(lambda lw: f"{lw[0]}:{lw[0] + lw[1]}")
scales = st.one_of(st.sampled_from(sorted(NAMED_SCALES)), bounds).map(parse_scale)


@st.composite
def scale_and_values(draw: st.DrawFn) -> tuple[Scale, float, float]:
    scale = draw(scales)
    unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
    a, b = draw(unit), draw(unit)
    return scale, scale.low + a * scale.span, scale.low + b * scale.span


@given(scale_and_values())
def test_round_trip_through_google_within_1e_12(case: tuple[Scale, float, float]):
    scale, value, _ = case
    back = scale.from_google(scale.to_google(value))
    # 1e-12 in the scale's own magnitude: a value of 3000 carries rounding of ~1e-13 already.
    assert abs(back - value) <= 1e-12 * max(1.0, abs(scale.low), abs(scale.high))


@given(scale_and_values())
def test_conversion_is_monotone(case: tuple[Scale, float, float]):
    scale, a, b = case
    lo, hi = min(a, b), max(a, b)
    assert scale.to_google(lo) <= scale.to_google(hi)
    g_lo, g_hi = scale.to_google(lo), scale.to_google(hi)
    assert scale.from_google(g_lo) <= scale.from_google(g_hi)
    assert 0.0 <= g_lo <= g_hi <= 1.0


@given(scale_and_values())
def test_crossing_agrees_between_scales(case: tuple[Scale, float, float]):
    scale, a, b = case
    # Level points map onto each other, so whether a move crosses a level cannot
    # depend on the scale it is measured on (up to rounding right at a point).
    ga, gb = scale.to_google(a), scale.to_google(b)
    near_point = any(min(abs(ga - p), abs(gb - p)) < 1e-9 for p in GOOGLE_LEVELS)
    if not near_point:
        assert crosses_level(a, b, scale) == crosses_level(ga, gb)


# --- level helpers --------------------------------------------------------------------------


def test_level_boundaries_are_the_level_points():
    assert level_boundaries(GOOGLE) == GOOGLE_LEVELS
    assert level_boundaries(parse_scale("1:25")) == (1.0, 8.2, 17.8, 25.0)


def test_level_index():
    assert [level_index(g) for g in (0.0, 0.29, 0.3, 0.69, 0.7, 0.99, 1.0)] == [0, 0, 1, 1, 2, 2, 3]
    assert level_index(-0.5) == 0
    assert level_index(1.5) == 3
    five = parse_scale("five_point")
    assert [level_index(v, five) for v in (1, 2, 3, 4, 5)] == [0, 1, 1, 2, 3]
    with pytest.raises(ScaleError):
        level_index(float("nan"))


def test_crosses_level():
    assert crosses_level(0.6, 0.7)
    assert crosses_level(0.7, 0.6)
    assert not crosses_level(0.7, 0.9)
    assert not crosses_level(0.3, 0.5)
    assert crosses_level(0.25, 0.35)  # an interval straddling the 0.3 level
    assert crosses_level(0.1, 0.9)
    assert not crosses_level(0.5, 0.5)
    pct = NAMED_SCALES["percent"]
    assert crosses_level(65.0, 75.0, pct)
    assert not crosses_level(35.0, 65.0, pct)


# --- package hygiene ------------------------------------------------------------------------


def test_anchors_imports_no_io_libraries():
    code = "import anchors, sys; print(sorted({'litestar','redis'} & set(sys.modules)))"
    assert subprocess.check_output([sys.executable, "-c", code]).strip() == b"[]"


@pytest.mark.parametrize(
    "module",
    ["anchors.scales", "anchors.kr", "anchors.catalogue", "anchors.evidence", "anchors.outcome"],
)
def test_docstring_examples_run(module: str):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0
    assert result.failed == 0
