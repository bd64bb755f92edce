"""The anchor catalogue: what each level of the Google scale looks like, per KR type.

A catalogue is data an organisation can read and rewrite. For each KR type it
gives the four levels of the Google scale (0.0, 0.3, 0.7, 1.0), each with a
short title and a behavioural description, and the settings of that type's
evidence rule. The package ships a default (``default_catalogue.toml``, meant
to be read top to bottom); :func:`load_catalogue` reads an organisation's own
and names the entry at fault when it is malformed.

>>> cat = default_catalogue()
>>> cat.describe("metric", 0.75).title
'Strong progress'
>>> [level.grade for level in cat.levels_for("binary")]
[0.0, 0.3, 0.7, 1.0]
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec

from anchors.errors import AnchorError, CatalogueError
from anchors.kr import KR_TYPES, KRType
from anchors.scales import GOOGLE_LEVELS

__all__ = [
    "DEFAULT_CATALOGUE_FILE",
    "AnchorLevel",
    "BinaryRule",
    "Catalogue",
    "MaintainRule",
    "MetricRule",
    "MilestoneRule",
    "Rule",
    "TypeAnchors",
    "catalogue_to_builtins",
    "catalogue_to_toml",
    "default_catalogue",
    "default_catalogue_text",
    "load_catalogue",
]

#: Name of the default catalogue inside the package.
DEFAULT_CATALOGUE_FILE: Final = "default_catalogue.toml"

# Levels are compared with a little slack so a computed 0.7 that came out as
# 0.6999999999999999 lands on the 0.7 level and not below it.
_LEVEL_SLACK: Final = 1e-9

_TOP_LEVEL_KEYS: Final = ("version", "description", "types")


# --- evidence rules: one variant per KR type, chosen by the ``kind`` tag ------------------


class MetricRule(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="kind",
    tag="metric",
):
    """Attainment = (actual − baseline) / (target − baseline), clipped to [0, 1].

    ``ambition_overshoot``: an overshoot above this share of the planned change
    adds a warning that the target may not have been ambitious.
    """

    ambition_overshoot: float = 0.5


class MilestoneRule(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="kind",
    tag="milestone",
):
    """Grade = milestones_done / milestones_total."""


class BinaryRule(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="kind",
    tag="binary",
):
    """Grade 1.0 when done, 0.0 when not."""


class MaintainRule(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="kind",
    tag="maintain",
):
    """Keep a metric at or beyond a threshold, with a tolerance band short of it.

    At or beyond the threshold the grade is 1.0. A shortfall ``s`` inside the band
    (``0 < s <= tolerance``) grades ``1 − (1 − band_floor) × s / tolerance``, a
    straight line from 1.0 at the threshold to ``band_floor`` at the band's edge.
    Beyond the band the grade is 0.0. Without a tolerance on the KR, the band is
    ``tolerance_fraction × |threshold|``, or ``zero_threshold_tolerance`` (in the
    metric's own units) when the threshold is 0.
    """

    tolerance_fraction: float = 0.05
    zero_threshold_tolerance: float = 1.0
    band_floor: float = 0.3
    default_direction: Literal["at_least", "at_most"] = "at_least"

    def default_tolerance(self, threshold: float) -> float:
        """The band width for ``threshold`` when the KR gives none."""
        if threshold == 0:
            return self.zero_threshold_tolerance
        return self.tolerance_fraction * abs(threshold)


Rule = MetricRule | MilestoneRule | BinaryRule | MaintainRule

_DEFAULT_RULES: Final[dict[str, Rule]] = {
    "metric": MetricRule(),
    "milestone": MilestoneRule(),
    "binary": BinaryRule(),
    "maintain": MaintainRule(),
}


# --- the catalogue ------------------------------------------------------------------------


class AnchorLevel(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One level of one KR type: its point on the Google scale and what it looks like."""

    grade: float
    title: str
    description: str

    @property
    def label(self) -> str:
        """The level as it is usually written: ``"0.0"``, ``"0.3"``, ``"0.7"``, ``"1.0"``."""
        return f"{self.grade:.1f}"


class TypeAnchors(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The anchors of one KR type: a title, a summary, its evidence rule and four levels."""

    title: str
    summary: str
    rule: Rule
    levels: tuple[AnchorLevel, ...]


class Catalogue(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A complete anchor catalogue: every KR type, each with the four Google levels.

    Construction validates the whole catalogue and raises :class:`CatalogueError`
    naming the first bad entry, so a ``Catalogue`` in hand is always usable.
    ``types`` is a plain dict for msgspec's sake; treat it as read-only (the
    default catalogue is shared), and build a new catalogue to change one.
    """

    version: str
    types: dict[str, TypeAnchors]
    description: str = ""

    def __post_init__(self) -> None:
        _check_catalogue(self)

    def anchors_for(self, kr_type: str) -> TypeAnchors:
        """The anchors of ``kr_type``; :class:`CatalogueError` for an unknown type."""
        try:
            return self.types[kr_type]
        except KeyError:
            raise CatalogueError(
                f"types.{kr_type}", f"no such KR type; known: {', '.join(KR_TYPES)}"
            ) from None

    def levels_for(self, kr_type: str) -> tuple[AnchorLevel, ...]:
        """The four levels of ``kr_type``, lowest first."""
        return self.anchors_for(kr_type).levels

    def rule_for(self, kr_type: str) -> Rule:
        """The evidence rule of ``kr_type`` with this catalogue's settings."""
        return self.anchors_for(kr_type).rule

    def describe(self, kr_type: str, grade: float) -> AnchorLevel:
        """The level a Google-scale ``grade`` falls in: the highest level at or below it.

        Grades below 0 get the lowest level and grades above 1 the highest.

        >>> default_catalogue().describe("milestone", 0.5).label
        '0.3'
        """
        if not math.isfinite(grade):
            raise AnchorError(f"cannot describe a non-finite grade ({grade!r})")
        levels = self.levels_for(kr_type)
        chosen = levels[0]
        for level in levels:
            if level.grade <= grade + _LEVEL_SLACK:
                chosen = level
        return chosen


def _check_catalogue(cat: Catalogue) -> None:
    if not isinstance(cat.version, str) or not cat.version.strip():
        raise CatalogueError("version", "must be a non-empty string")
    for name in cat.types:
        if name not in KR_TYPES:
            raise CatalogueError(
                f"types.{name}", f"unknown KR type; expected one of {', '.join(KR_TYPES)}"
            )
    for kr_type in KR_TYPES:
        entry = f"types.{kr_type}"
        anchors = cat.types.get(kr_type)
        if anchors is None:
            raise CatalogueError(entry, "missing: every KR type needs its anchors")
        for field in ("title", "summary"):
            if not getattr(anchors, field).strip():
                raise CatalogueError(f"{entry}.{field}", "must not be empty")
        _check_rule(f"{entry}.rule", kr_type, anchors.rule)
        _check_levels(f"{entry}.levels", anchors.levels)


def _check_levels(entry: str, levels: tuple[AnchorLevel, ...]) -> None:
    expected = ", ".join(f"{g:.1f}" for g in GOOGLE_LEVELS)
    if len(levels) != len(GOOGLE_LEVELS):
        raise CatalogueError(
            entry, f"has {len(levels)} levels; exactly {len(GOOGLE_LEVELS)} are needed ({expected})"
        )
    for i, (level, want) in enumerate(zip(levels, GOOGLE_LEVELS, strict=True)):
        if level.grade != want:
            raise CatalogueError(
                f"{entry}[{i}]",
                f"grade {level.grade!r} where {want:.1f} was expected; "
                f"the levels are exactly {expected}, in that order",
            )
        for field in ("title", "description"):
            if not getattr(level, field).strip():
                raise CatalogueError(f"{entry}[{i}].{field}", "must not be empty")


def _check_rule(entry: str, kr_type: KRType, rule: Rule) -> None:
    if type(rule) is not type(_DEFAULT_RULES[kr_type]):
        raise CatalogueError(
            f"{entry}.kind",
            f"is {rule.__struct_config__.tag!r}, but a {kr_type} KR needs kind = {kr_type!r}",
        )
    match rule:
        case MetricRule(ambition_overshoot=value):
            _check_positive(f"{entry}.ambition_overshoot", value)
        case MaintainRule():
            _check_positive(f"{entry}.tolerance_fraction", rule.tolerance_fraction)
            _check_positive(f"{entry}.zero_threshold_tolerance", rule.zero_threshold_tolerance)
            if not (math.isfinite(rule.band_floor) and 0 <= rule.band_floor < 1):
                raise CatalogueError(
                    f"{entry}.band_floor", f"must be in [0, 1), got {rule.band_floor!r}"
                )
        case MilestoneRule() | BinaryRule():
            pass


def _check_positive(entry: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise CatalogueError(entry, f"must be a positive finite number, got {value!r}")


# --- reading and writing ------------------------------------------------------------------

_AT_PATH = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


def load_catalogue(text: str | bytes) -> Catalogue:
    """Read a catalogue from TOML text and validate it.

    Raises :class:`CatalogueError` naming the entry at fault, for example
    ``types.metric.levels[2]``, for invalid TOML, unknown keys, a missing KR
    type, levels other than exactly 0.0/0.3/0.7/1.0, or an empty description.
    A type's ``rule`` table may be left out to take the default settings.

    >>> load_catalogue(default_catalogue_text()).version == default_catalogue().version
    True
    """
    try:
        raw = msgspec.toml.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise CatalogueError("<document>", f"not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(_TOP_LEVEL_KEYS))
    if unknown:
        raise CatalogueError(
            unknown[0], f"unknown key; a catalogue has only {', '.join(_TOP_LEVEL_KEYS)}"
        )
    version = raw.get("version")
    if not isinstance(version, str):
        raise CatalogueError("version", "missing or not a string")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise CatalogueError("description", "must be a string")
    raw_types = raw.get("types")
    if not isinstance(raw_types, Mapping):
        raise CatalogueError("types", "missing or not a table of KR types")
    types: dict[str, TypeAnchors] = {}
    for name, body in raw_types.items():
        entry = f"types.{name}"
        if name not in KR_TYPES:
            raise CatalogueError(entry, f"unknown KR type; expected one of {', '.join(KR_TYPES)}")
        if not isinstance(body, Mapping):
            raise CatalogueError(entry, "must be a table")
        body = dict(body)
        body.setdefault("rule", {"kind": name})
        types[name] = _convert_entry(entry, body)
    return Catalogue(version=version, description=description, types=types)


def _convert_entry(entry: str, body: dict[str, Any]) -> TypeAnchors:
    try:
        return msgspec.convert(body, type=TypeAnchors)
    except msgspec.ValidationError as exc:
        # msgspec says where inside the entry (``$.levels[2].title``); prefix the type.
        match = _AT_PATH.match(str(exc))
        problem, path = (match["problem"], match["path"] or "") if match else (str(exc), "")
        raise CatalogueError(entry + path, problem) from None


@functools.cache
def default_catalogue_text() -> str:
    """The text of the default catalogue shipped with the package, comments included."""
    return (
        importlib.resources.files("anchors")
        .joinpath(DEFAULT_CATALOGUE_FILE)
        .read_text(encoding="utf-8")
    )


@functools.cache
def default_catalogue() -> Catalogue:
    """The default catalogue shipped with the package (read once, then cached)."""
    return load_catalogue(default_catalogue_text())


def catalogue_to_builtins(cat: Catalogue) -> dict[str, Any]:
    """The catalogue as plain dicts and lists, ready to serve as JSON.

    Each rule keeps its ``kind`` tag, so the result loads back with
    ``msgspec.convert(data, type=Catalogue)``.
    """
    data: dict[str, Any] = msgspec.to_builtins(cat)
    return data


def catalogue_to_toml(cat: Catalogue) -> str:
    """The catalogue as TOML that :func:`load_catalogue` reads back to an equal catalogue.

    Comments of the original file are not kept; serve :func:`default_catalogue_text`
    when the commented default is wanted.
    """
    lines = [f"version = {_toml_str(cat.version)}"]
    if cat.description:
        lines.append(f"description = {_toml_str(cat.description)}")
    for name in KR_TYPES:
        anchors = cat.types[name]
        rule = msgspec.to_builtins(anchors.rule)
        inline = ", ".join(f"{key} = {_toml_value(value)}" for key, value in rule.items())
        lines += [
            "",
            f"[types.{name}]",
            f"title = {_toml_str(anchors.title)}",
            f"summary = {_toml_str(anchors.summary)}",
            f"rule = {{ {inline} }}",
        ]
        for level in anchors.levels:
            lines += [
                "",
                f"[[types.{name}.levels]]",
                f"grade = {_toml_value(level.grade)}",
                f"title = {_toml_str(level.title)}",
                f"description = {_toml_str(level.description)}",
            ]
    return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string once DEL, which JSON leaves bare, is escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_str(value)
    raise TypeError(f"no TOML form for {value!r}")
