"""The anchor catalogue: the default loads, and each kind of malformed catalogue names its entry."""

from __future__ import annotations

import json

import msgspec
import pytest

from anchors import (
    GOOGLE_LEVELS,
    KR_TYPES,
    AnchorError,
    AnchorLevel,
    Catalogue,
    CatalogueError,
    MaintainRule,
    MetricRule,
    catalogue_to_builtins,
    catalogue_to_toml,
    default_catalogue,
    default_catalogue_text,
    load_catalogue,
)


def minimal_toml(skip_type: str | None = None, extra: str = "") -> str:
    """A small valid catalogue, optionally missing one type, with extra text appended."""
    parts = ['version = "test-1"']
    for kr_type in KR_TYPES:
        if kr_type == skip_type:
            continue
        parts.append(f'[types.{kr_type}]\ntitle = "T {kr_type}"\nsummary = "S {kr_type}"')
        for grade in GOOGLE_LEVELS:
            parts.append(
                f'[[types.{kr_type}.levels]]\ngrade = {grade}\ntitle = "L{grade}"\n'
                f'description = "what {grade} looks like"'
            )
    return "\n".join(parts) + "\n" + extra


def catalogue_error(text: str | bytes) -> CatalogueError:
    with pytest.raises(CatalogueError) as info:
        load_catalogue(text)
    assert info.value.entry in str(info.value)
    return info.value


# --- the default ----------------------------------------------------------------------------


def test_default_catalogue_loads_with_every_type_and_level():
    cat = default_catalogue()
    assert cat.version
    assert set(cat.types) == set(KR_TYPES)
    for kr_type in KR_TYPES:
        levels = cat.levels_for(kr_type)
        assert tuple(level.grade for level in levels) == GOOGLE_LEVELS
        assert all(level.title.strip() and level.description.strip() for level in levels)
    assert cat.levels_for("metric")[3].description.startswith("Target met in full")
    assert isinstance(cat.rule_for("metric"), MetricRule)
    assert isinstance(cat.rule_for("maintain"), MaintainRule)


def test_default_catalogue_is_cached_and_is_the_shipped_file():
    assert default_catalogue() is default_catalogue()
    text = default_catalogue_text()
    assert text.lstrip().startswith("#")  # the file explains itself before any data
    assert load_catalogue(text) == default_catalogue()
    assert load_catalogue(text.encode()) == default_catalogue()


def test_describe_picks_the_level_at_or_below():
    cat = default_catalogue()
    labels = [cat.describe("metric", g).label for g in (0.0, 0.29, 0.3, 0.6999999999999999, 0.7)]
    assert labels == ["0.0", "0.0", "0.3", "0.7", "0.7"]
    assert cat.describe("metric", 1.0).label == "1.0"
    assert cat.describe("metric", -0.2).label == "0.0"
    assert cat.describe("metric", 1.4).label == "1.0"
    with pytest.raises(AnchorError):
        cat.describe("metric", float("nan"))
    with pytest.raises(CatalogueError) as info:
        cat.describe("okr", 0.5)
    assert info.value.entry == "types.okr"


def test_round_trip_through_toml_and_builtins():
    cat = default_catalogue()
    assert load_catalogue(catalogue_to_toml(cat)) == cat
    data = catalogue_to_builtins(cat)
    json.dumps(data)  # plain JSON types only
    assert data["types"]["maintain"]["rule"]["kind"] == "maintain"
    assert msgspec.convert(data, type=Catalogue) == cat


def test_toml_writer_escapes_awkward_text():
    cat = load_catalogue(minimal_toml())
    types = dict(cat.types)
    tricky = 'quotes " and \\ backslash, tab\t, newline\n, DEL \x7f, ünïcode – dash'
    levels = list(types["binary"].levels)
    levels[1] = AnchorLevel(grade=0.3, title="t", description=tricky)
    types["binary"] = msgspec.structs.replace(types["binary"], levels=tuple(levels))
    odd = Catalogue(version="v", description=tricky, types=types)
    back = load_catalogue(catalogue_to_toml(odd))
    assert back == odd
    assert back.levels_for("binary")[1].description == tricky


def test_rule_may_be_left_out_and_takes_the_defaults():
    cat = load_catalogue(minimal_toml())
    assert cat.rule_for("maintain") == MaintainRule()
    assert cat.rule_for("metric") == MetricRule()


def test_organisation_catalogue_settings_are_read():
    extra = ""
    text = minimal_toml().replace(
        '[types.maintain]\ntitle = "T maintain"',
        '[types.maintain]\ntitle = "T maintain"\n'
        'rule = { kind = "maintain", tolerance_fraction = 0.1, default_direction = "at_most" }',
    )
    cat = load_catalogue(text + extra)
    rule = cat.rule_for("maintain")
    assert isinstance(rule, MaintainRule)
    assert (rule.tolerance_fraction, rule.default_direction, rule.band_floor) == (
        0.1,
        "at_most",
        0.3,
    )


# --- malformed catalogues -------------------------------------------------------------------


def replace_once(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


def nth_level_replace(text: str, kr_type: str, index: int, old: str, new: str) -> str:
    """Replace ``old`` within the ``index``-th level block of ``kr_type``."""
    marker = f"[[types.{kr_type}.levels]]"
    head, *blocks = text.split(marker)
    blocks[index] = replace_once(blocks[index], old, new)
    return marker.join([head, *blocks])


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("version = [", "<document>"),
        (minimal_toml(skip_type="maintain"), "types.maintain"),
        (minimal_toml(extra='[types.okr]\ntitle = "x"\n'), "types.okr"),
        ('owner = "me"\n' + minimal_toml(), "owner"),
        (
            minimal_toml().replace('title = "T metric"', 'title = "T metric"\ncolour = 1'),
            "types.metric",
        ),
        (minimal_toml().replace('version = "test-1"', ""), "version"),
        (minimal_toml().replace('version = "test-1"', 'version = "  "'), "version"),
        (minimal_toml().replace('version = "test-1"', "version = 3"), "version"),
        ('version = "v"\n', "types"),
        ('version = "v"\ntypes = 3\n', "types"),
        # a level moved off its point
        (
            nth_level_replace(minimal_toml(), "metric", 2, "grade = 0.7", "grade = 0.75"),
            "types.metric.levels[2]",
        ),
        # levels out of order
        (
            nth_level_replace(
                nth_level_replace(minimal_toml(), "milestone", 1, "grade = 0.3", "grade = 0.7"),
                "milestone",
                2,
                "grade = 0.7",
                "grade = 0.3",
            ),
            "types.milestone.levels[1]",
        ),
        # an empty description
        (
            nth_level_replace(
                minimal_toml(),
                "binary",
                3,
                'description = "what 1.0 looks like"',
                'description = " "',
            ),
            "types.binary.levels[3].description",
        ),
        # a missing description
        (
            nth_level_replace(
                minimal_toml(), "binary", 0, 'description = "what 0.0 looks like"', ""
            ),
            "types.binary.levels[0]",
        ),
        # a wrongly typed grade
        (
            nth_level_replace(minimal_toml(), "maintain", 1, "grade = 0.3", 'grade = "0.3"'),
            "types.maintain.levels[1].grade",
        ),
        # an unknown key inside a level
        (
            nth_level_replace(
                minimal_toml(), "metric", 0, 'title = "L0.0"', 'title = "L0.0"\ncolour = 1'
            ),
            "types.metric.levels[0]",
        ),
        # a fifth level
        (
            minimal_toml(
                extra='[[types.metric.levels]]\ngrade = 1.0\ntitle = "x"\ndescription = "y"\n'
            ),
            "types.metric.levels",
        ),
        # an empty summary
        (
            minimal_toml().replace('summary = "S metric"', 'summary = ""'),
            "types.metric.summary",
        ),
        # a rule of the wrong kind
        (
            minimal_toml().replace(
                'summary = "S metric"', 'summary = "S metric"\nrule = { kind = "binary" }'
            ),
            "types.metric.rule.kind",
        ),
        # an unknown rule kind
        (
            minimal_toml().replace(
                'summary = "S metric"', 'summary = "S metric"\nrule = { kind = "okr" }'
            ),
            "types.metric.rule.kind",
        ),
        # an unknown rule setting
        (
            minimal_toml().replace(
                'summary = "S binary"', 'summary = "S binary"\nrule = { kind = "binary", x = 1 }'
            ),
            "types.binary.rule",
        ),
        # bad rule settings
        (
            minimal_toml().replace(
                'summary = "S maintain"',
                'summary = "S maintain"\nrule = { kind = "maintain", band_floor = 1.0 }',
            ),
            "types.maintain.rule.band_floor",
        ),
        (
            minimal_toml().replace(
                'summary = "S maintain"',
                'summary = "S maintain"\nrule = { kind = "maintain", tolerance_fraction = -0.1 }',
            ),
            "types.maintain.rule.tolerance_fraction",
        ),
        (
            minimal_toml().replace(
                'summary = "S metric"',
                'summary = "S metric"\nrule = { kind = "metric", ambition_overshoot = nan }',
            ),
            "types.metric.rule.ambition_overshoot",
        ),
        (
            minimal_toml().replace(
                'summary = "S maintain"',
                'summary = "S maintain"\nrule = { kind = "maintain", default_direction = "up" }',
            ),
            "types.maintain.rule.default_direction",
        ),
    ],
)
def test_malformed_catalogue_names_the_entry(text: str, entry: str):
    err = catalogue_error(text)
    assert err.entry == entry, str(err)
    assert err.problem


def test_default_catalogue_with_one_description_blanked_names_it():
    text = default_catalogue_text()
    blanked = replace_once(
        text,
        'description = "Most of the planned change happened',
        'description = "" #',
    )
    err = catalogue_error(blanked)
    assert err.entry == "types.metric.levels[2].description"


def test_catalogue_struct_validates_when_built_in_python():
    cat = default_catalogue()
    types = dict(cat.types)
    del types["binary"]
    with pytest.raises(CatalogueError) as info:
        Catalogue(version="v", types=types)
    assert info.value.entry == "types.binary"
