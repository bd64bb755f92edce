"""Grading scales and conversion between them through the anchor levels.

Every scale names four level points that mean the same thing as Google's
0.0, 0.3, 0.7 and 1.0 (see the catalogue for what each level means). A grade
converts between scales piecewise-linearly between those points, so level
points round-trip exactly and a 4 on the five-point scale is a 0.7 on Google's.

>>> five = parse_scale("five_point")
>>> float(five.to_google(4.0))
0.7
>>> float(parse_scale("percent").from_google(0.7))
70.0
"""

from __future__ import annotations

import math
import re
from typing import overload

import msgspec
import numpy as np
import numpy.typing as npt

from anchors.errors import ScaleError

__all__ = [
    "GOOGLE_LEVELS",
    "NAMED_SCALES",
    "Scale",
    "convert",
    "crosses_level",
    "level_boundaries",
    "level_index",
    "parse_scale",
]

#: The anchor level points on Google's 0–1 scale, lowest first.
GOOGLE_LEVELS: tuple[float, ...] = (0.0, 0.3, 0.7, 1.0)

FloatArray = npt.NDArray[np.float64]


class Scale(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A grading scale: its name, its range and its four anchor level points."""

    name: str
    low: float
    high: float
    levels: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ScaleError(f"scale {self.name!r}: bounds must be finite")
        if not self.low < self.high:
            raise ScaleError(
                f"scale {self.name!r}: low ({self.low}) must be below high ({self.high})"
            )
        if len(self.levels) != len(GOOGLE_LEVELS):
            raise ScaleError(f"scale {self.name!r}: needs {len(GOOGLE_LEVELS)} level points")
        if self.levels[0] != self.low or self.levels[-1] != self.high:
            raise ScaleError(f"scale {self.name!r}: first and last level must be low and high")
        if any(b <= a for a, b in zip(self.levels, self.levels[1:], strict=False)):
            raise ScaleError(f"scale {self.name!r}: level points must increase")

    @property
    def span(self) -> float:
        """Width of the scale, ``high - low``."""
        return self.high - self.low

    def contains(self, value: float) -> bool:
        """True when ``value`` is finite and inside ``[low, high]``."""
        return math.isfinite(value) and self.low <= value <= self.high

    @overload
    def to_google(self, value: float) -> float: ...
    @overload
    def to_google(self, value: FloatArray) -> FloatArray: ...
    def to_google(self, value: float | FloatArray) -> float | FloatArray:
        """Convert grades on this scale to Google's 0–1 scale through the level points."""
        out = np.interp(value, self.levels, GOOGLE_LEVELS)
        return float(out) if np.ndim(out) == 0 else np.asarray(out, dtype=np.float64)

    @overload
    def from_google(self, value: float) -> float: ...
    @overload
    def from_google(self, value: FloatArray) -> FloatArray: ...
    def from_google(self, value: float | FloatArray) -> float | FloatArray:
        """Convert Google-scale grades (0–1) to this scale through the level points."""
        out = np.interp(value, GOOGLE_LEVELS, self.levels)
        return float(out) if np.ndim(out) == 0 else np.asarray(out, dtype=np.float64)

    def local_unit(self, google_delta: float) -> float:
        """A difference on the 0–1 scale expressed in this scale's units (mean slope)."""
        return google_delta * self.span


def _linear(name: str, low: float, high: float) -> Scale:
    return Scale(
        name=name, low=low, high=high, levels=tuple(low + (high - low) * g for g in GOOGLE_LEVELS)
    )


NAMED_SCALES: dict[str, Scale] = {
    "google": Scale(name="google", low=0.0, high=1.0, levels=GOOGLE_LEVELS),
    "percent": _linear("percent", 0.0, 100.0),
    # 1 = no progress, 2 = some progress (0.3), 4 = delivered (0.7), 5 = met in full;
    # 3 lands at 0.5, midway between the 0.3 and 0.7 levels.
    "five_point": Scale(name="five_point", low=1.0, high=5.0, levels=(1.0, 2.0, 4.0, 5.0)),
}

_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*:\s*(-?\d+(?:\.\d+)?)\s*$")


def parse_scale(text: str) -> Scale:
    """A named scale (``google``, ``percent``, ``five_point``) or a range ``LOW:HIGH``.

    A range is linear: its level points sit at 0, 30, 70 and 100 % of the span.

    >>> parse_scale("1:25").levels
    (1.0, 8.2, 17.8, 25.0)
    """
    named = NAMED_SCALES.get(text.strip())
    if named is not None:
        return named
    match = _RANGE.match(text)
    if match is None:
        raise ScaleError(
            f"unknown scale {text!r}: use google, percent, five_point or a range LOW:HIGH"
        )
    low, high = float(match.group(1)), float(match.group(2))
    if not low < high:
        raise ScaleError(f"scale {text!r}: LOW must be below HIGH")
    scale = _linear(text.strip(), low, high)
    # Round level points so decimal ranges print cleanly and round-trip exactly.
    return Scale(
        name=scale.name, low=low, high=high, levels=tuple(round(v, 12) for v in scale.levels)
    )


def convert(value: float, source: Scale, target: Scale) -> float:
    """Convert one grade from ``source`` to ``target`` through the anchor levels."""
    return target.from_google(source.to_google(value))


def level_boundaries(scale: Scale) -> tuple[float, ...]:
    """The anchor level points on ``scale``, lowest first (Google's 0.0/0.3/0.7/1.0 there).

    >>> level_boundaries(parse_scale("five_point"))
    (1.0, 2.0, 4.0, 5.0)
    """
    return scale.levels


def level_index(value: float, scale: Scale = NAMED_SCALES["google"]) -> int:
    """Index of the level a grade on ``scale`` falls in: the highest level point at or below it.

    A grade below the lowest point still counts as level 0, so the index runs
    from 0 to 3 whatever the value.

    >>> level_index(0.69), level_index(0.7), level_index(3.0, parse_scale("five_point"))
    (1, 2, 1)
    """
    if not math.isfinite(value):
        raise ScaleError(f"scale {scale.name!r}: cannot place a non-finite grade ({value!r})")
    index = 0
    for i, point in enumerate(scale.levels):
        if point <= value:
            index = i
    return index


def crosses_level(a: float, b: float, scale: Scale = NAMED_SCALES["google"]) -> bool:
    """True when grades ``a`` and ``b`` on ``scale`` fall in different anchor levels.

    Moving from ``a`` to ``b`` crosses a level exactly when some level point ``p``
    has ``min(a, b) < p <= max(a, b)``; reaching a level point counts, leaving
    one upwards does not. Read with an interval's ends, it says whether the
    interval straddles a level boundary.

    >>> crosses_level(0.6, 0.7), crosses_level(0.7, 0.9), crosses_level(0.25, 0.35)
    (True, False, True)
    """
    return level_index(a, scale) != level_index(b, scale)
