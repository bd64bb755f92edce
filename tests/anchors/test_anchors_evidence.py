"""Evidence rules: one test per rule and per kind of bad evidence."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from anchors import (
    Catalogue,
    EvidenceError,
    EvidenceGrade,
    KeyResult,
    MaintainRule,
    default_catalogue,
    grade_evidence,
    grade_many,
    infer_kr_type,
)


def grade(**fields: object) -> EvidenceGrade:
    result = grade_evidence(KeyResult(kr_id="kr-1", **fields))  # type: ignore[arg-type]
    assert result is not None
    return result


def bad(field: str, **fields: object) -> EvidenceError:
    with pytest.raises(EvidenceError) as info:
        grade_evidence(KeyResult(kr_id="kr-bad", **fields))  # type: ignore[arg-type]
    assert info.value.kr_id == "kr-bad"
    assert info.value.field == field, str(info.value)
    assert "kr-bad" in str(info.value)
    assert field in str(info.value)
    return info.value


# --- KeyResult and type inference ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"milestones_done": 1, "milestones_total": 3}, "milestone"),
        ({"milestones_total": 3}, "milestone"),
        ({"threshold": 99.9, "actual": 99.0}, "maintain"),
        ({"baseline": 1.0, "target": 2.0, "actual": 1.5}, "metric"),
        ({"actual": 3.0}, "metric"),
        ({"done": True}, "binary"),
        ({"description": "Launch the app"}, None),
        ({"kr_type": "binary", "actual": 1.0}, "binary"),
    ],
)
def test_kr_type_is_inferred_from_the_fields(fields: dict[str, object], expected: str | None):
    assert infer_kr_type(KeyResult(kr_id="k", **fields)) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "field", ["baseline", "target", "actual", "threshold", "tolerance", "weight"]
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_name_the_kr_and_field(field: str, value: float):
    with pytest.raises(EvidenceError) as info:
        KeyResult(kr_id="kr-nan", **{field: value})  # type: ignore[arg-type]
    assert (info.value.kr_id, info.value.field) == ("kr-nan", field)
    assert "finite" in info.value.problem


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kr_id": ""}, "kr_id"),
        ({"kr_id": "   "}, "kr_id"),
        ({"kr_id": "k" * 201}, "kr_id"),
        ({"kr_id": "k", "owner_id": ""}, "owner_id"),
        ({"kr_id": "k", "owner_id": "o" * 201}, "owner_id"),
        ({"kr_id": "k", "weight": -1.0}, "weight"),
        ({"kr_id": "k", "tolerance": -0.5}, "tolerance"),
        ({"kr_id": "k", "kr_type": "okr"}, "kr_type"),
        ({"kr_id": "k", "direction": "up"}, "direction"),
    ],
)
def test_always_wrong_fields_are_rejected_at_construction(fields: dict[str, object], field: str):
    with pytest.raises(EvidenceError) as info:
        KeyResult(**fields)  # type: ignore[arg-type]
    assert info.value.field == field


def test_id_of_200_characters_is_accepted():
    assert KeyResult(kr_id="k" * 200).kr_id == "k" * 200


def test_decoding_json_rejects_unknown_fields_and_runs_the_same_checks():
    with pytest.raises(msgspec.ValidationError, match="unknown field `colour`"):
        msgspec.json.decode(b'{"kr_id": "k", "colour": "red"}', type=KeyResult)
    with pytest.raises(msgspec.ValidationError, match="weight"):
        msgspec.json.decode(b'{"kr_id": "k", "weight": -2}', type=KeyResult)
    kr = msgspec.json.decode(
        b'{"kr_id": "k", "baseline": 1, "target": 3, "actual": 2}', type=KeyResult
    )
    assert grade_evidence(kr) is not None


def test_no_evidence_gives_none():
    assert grade_evidence(KeyResult(kr_id="k")) is None
    # A declared type with no evidence yet is not an error: the KR simply has no evidence.
    assert grade_evidence(KeyResult(kr_id="k", kr_type="metric", description="x")) is None
    # Tolerance and direction qualify evidence; alone they are not evidence.
    assert grade_evidence(KeyResult(kr_id="k", tolerance=1.0, direction="at_most")) is None


# --- metric ---------------------------------------------------------------------------------


def test_metric_attainment_and_reason_with_the_numbers():
    g = grade(baseline=30, target=50, actual=42)
    assert g.kr_type == "metric"
    assert g.grade == pytest.approx(0.6)
    assert g.level == "0.3"
    assert g.reasons[0] == "actual 42 vs baseline 30 and target 50: 60% of the way"
    assert g.overshoot is None
    assert g.warnings == ()
    assert g.level_description == default_catalogue().describe("metric", 0.6).description


def test_metric_decreasing_target_works_the_same_way():
    g = grade(baseline=5.0, target=3.0, actual=3.6)  # churn from 5% to 3%, reached 3.6%
    assert g.grade == pytest.approx(0.7)
    assert g.level == "0.7"
    assert any("decreasing" in r for r in g.reasons)


def test_metric_decreasing_mirror_equals_increasing():
    up = grade(baseline=10, target=20, actual=17)
    down = grade(baseline=-10, target=-20, actual=-17)
    assert up.grade == pytest.approx(down.grade)


@pytest.mark.parametrize(("baseline", "target", "actual"), [(100, 200, 225), (100, 0, -25)])
def test_metric_overshoot_is_reported_separately_and_clipped(
    baseline: int, target: int, actual: int
):
    g = grade(baseline=baseline, target=target, actual=actual)
    assert g.grade == 1.0
    assert g.level == "1.0"
    assert g.overshoot == pytest.approx(0.25)
    assert any("beat the target by 25%" in r for r in g.reasons)
    assert g.warnings == ()  # 25% is under the catalogue's ambition threshold of 50%


def test_large_overshoot_warns_the_target_was_not_ambitious():
    g = grade(baseline=0, target=10, actual=20)
    assert g.overshoot == pytest.approx(1.0)
    assert any("ambitious" in w for w in g.warnings)


def test_metric_below_baseline_grades_zero_with_a_reason():
    g = grade(baseline=30, target=50, actual=25)
    assert g.grade == 0.0
    assert g.level == "0.0"
    assert g.overshoot is None
    assert any("wrong way" in r and "25%" in r for r in g.reasons)


def test_metric_exact_target_and_exact_baseline():
    assert grade(baseline=0.2, target=0.9, actual=0.9).grade == 1.0
    assert grade(baseline=0.2, target=0.9, actual=0.9).overshoot is None
    assert grade(baseline=0.2, target=0.9, actual=0.2).grade == 0.0


def test_metric_target_equal_to_baseline_is_an_error():
    err = bad("target", baseline=5, target=5, actual=6)
    assert "baseline" in err.problem


@pytest.mark.parametrize(
    ("fields", "missing"),
    [
        ({"target": 50, "actual": 42}, "baseline"),
        ({"baseline": 30, "actual": 42}, "target"),
        ({"baseline": 30, "target": 50}, "actual"),
        ({"actual": 42}, "baseline"),
        ({"kr_type": "metric", "done": True}, "baseline"),
    ],
)
def test_metric_missing_field_is_named(fields: dict[str, object], missing: str):
    err = bad(missing, **fields)
    assert "missing" in err.problem


def test_metric_direction_must_agree_with_the_numbers():
    assert grade(baseline=1, target=2, actual=2, direction="increase").grade == 1.0
    bad("direction", baseline=1, target=2, actual=2, direction="decrease")
    bad("direction", baseline=1, target=2, actual=2, direction="at_least")


def test_metric_overflowing_attainment_is_an_error_not_inf():
    bad("actual", baseline=0.0, target=1e-300, actual=1e300)


# --- milestone ------------------------------------------------------------------------------


def test_milestone_fraction():
    g = grade(milestones_done=3, milestones_total=4)
    assert (g.kr_type, g.grade, g.level) == ("milestone", 0.75, "0.7")
    assert g.reasons == ("3 of 4 milestones done (75%)",)
    assert grade(milestones_done=0, milestones_total=4).grade == 0.0
    assert grade(milestones_done=4, milestones_total=4).grade == 1.0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"milestones_done": 5, "milestones_total": 4}, "milestones_done"),
        ({"milestones_done": -1, "milestones_total": 4}, "milestones_done"),
        ({"milestones_done": 0, "milestones_total": 0}, "milestones_total"),
        ({"milestones_done": 0, "milestones_total": -2}, "milestones_total"),
        ({"milestones_done": 2}, "milestones_total"),
        ({"milestones_total": 2}, "milestones_done"),
    ],
)
def test_milestone_bad_counts_name_the_field(fields: dict[str, object], field: str):
    bad(field, **fields)


def test_milestones_done_over_total_says_so():
    err = bad("milestones_done", milestones_done=5, milestones_total=4)
    assert "5" in err.problem
    assert "4" in err.problem


# --- binary ---------------------------------------------------------------------------------


def test_binary_done_and_not_done():
    assert grade(done=True).grade == 1.0
    assert grade(done=True).level == "1.0"
    assert grade(done=False).grade == 0.0
    assert grade(kr_type="binary", actual=1).grade == 1.0
    assert grade(kr_type="binary", actual=0).grade == 0.0
    assert grade(kr_type="binary", actual=0).reasons[0].startswith("actual 0 (not done)")


def test_binary_bad_evidence():
    bad("actual", kr_type="binary", actual=0.5)
    bad("actual", done=True, actual=0)
    bad("done", kr_type="binary", baseline=1.0)


# --- maintain -------------------------------------------------------------------------------


def test_maintain_at_or_beyond_threshold_is_full_marks():
    assert grade(threshold=99.9, actual=99.95).grade == 1.0
    assert grade(threshold=99.9, actual=99.9).grade == 1.0
    assert grade(threshold=200, actual=150, direction="at_most").grade == 1.0


def test_maintain_band_is_linear_from_one_to_the_floor():
    # at_least 100 with tolerance 10: short by 5 is half the band, so 1 - 0.7 * 0.5.
    assert grade(threshold=100, actual=95, tolerance=10).grade == pytest.approx(0.65)
    assert grade(threshold=100, actual=90, tolerance=10).grade == pytest.approx(0.3)
    assert grade(threshold=100, actual=89.99, tolerance=10).grade == 0.0
    # at_most 200 ms: 210 is 10 over, with a band of 40 -> a quarter of the band.
    g = grade(threshold=200, actual=210, tolerance=40, direction="at_most")
    assert g.grade == pytest.approx(1 - 0.7 * 0.25)
    assert "above the threshold" in g.reasons[0]


def test_maintain_default_tolerance_comes_from_the_catalogue():
    # 5% of |threshold|: threshold 100 -> band 5; 97.5 is half-way.
    g = grade(threshold=100, actual=97.5)
    assert g.grade == pytest.approx(0.65)
    assert "catalogue default" in g.reasons[0]
    # Negative threshold uses |threshold|.
    assert grade(threshold=-100, actual=-102.5).grade == pytest.approx(0.65)
    # Threshold 0 uses the absolute default (1 unit): at_most 0 incidents, 1 incident.
    assert grade(threshold=0, actual=1, direction="at_most").grade == pytest.approx(0.3)
    assert grade(threshold=0, actual=2, direction="at_most").grade == 0.0


def test_maintain_tolerance_zero_means_no_band():
    assert grade(threshold=10, actual=10, tolerance=0).grade == 1.0
    assert grade(threshold=10, actual=9.999, tolerance=0).grade == 0.0


def test_maintain_uses_catalogue_settings():
    cat = default_catalogue()
    types = dict(cat.types)
    anchors = types["maintain"]
    types["maintain"] = msgspec.structs.replace(
        anchors, rule=MaintainRule(tolerance_fraction=0.1, band_floor=0.0)
    )
    custom = Catalogue(version="custom", types=types)
    g = grade_evidence(KeyResult(kr_id="k", threshold=100, actual=95), custom)
    assert g is not None
    assert g.grade == pytest.approx(0.5)
    assert g.catalogue_version == "custom"


def test_maintain_bad_evidence():
    bad("actual", threshold=10)
    bad("threshold", kr_type="maintain", actual=10)
    bad("direction", threshold=10, actual=10, direction="increase")


# --- batch ----------------------------------------------------------------------------------


def test_grade_many_collects_every_problem():
    krs = [
        KeyResult(kr_id="ok-metric", baseline=0, target=10, actual=5),
        KeyResult(kr_id="same", baseline=5, target=5, actual=6),
        KeyResult(kr_id="no-evidence"),
        KeyResult(kr_id="over", milestones_done=6, milestones_total=5),
        KeyResult(kr_id="ok-binary", done=True),
        KeyResult(kr_id="ok-binary", done=False),
        KeyResult(kr_id="no-actual", threshold=3),
    ]
    grades, problems = grade_many(krs)
    assert set(grades) == {"ok-metric", "ok-binary"}
    assert grades["ok-binary"].grade == 1.0  # the first occurrence is kept
    assert [(p.kr_id, p.field) for p in problems] == [
        ("same", "target"),
        ("over", "milestones_done"),
        ("ok-binary", "kr_id"),
        ("no-actual", "actual"),
    ]
    assert str(problems[0]).startswith("KR 'same', field 'target': equals the baseline")


def test_grade_many_of_nothing():
    assert grade_many([]) == ({}, [])


# --- explanations ----------------------------------------------------------------------------


def test_fields_of_another_type_are_warned_about():
    g = grade(milestones_done=1, milestones_total=2, target=10)
    assert g.kr_type == "milestone"
    assert any("target ignored" in w for w in g.warnings)


def test_grades_always_inside_zero_one_and_serialisable():
    cases = [
        {"baseline": 0, "target": 1, "actual": 7},
        {"baseline": 0, "target": 1, "actual": -7},
        {"threshold": 1, "actual": -1e9},
        {"milestones_done": 1, "milestones_total": 3},
    ]
    for fields in cases:
        g = grade(**fields)
        assert 0.0 <= g.grade <= 1.0
        assert msgspec.json.decode(msgspec.json.encode(g), type=EvidenceGrade) == g


# --- properties -----------------------------------------------------------------------------

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(finite, finite, finite)
def test_metric_grade_is_clipped_attainment_and_mirror_symmetric(b: float, t: float, a: float):
    assume(abs(t - b) > 1e-6)
    g = grade(baseline=b, target=t, actual=a)
    attainment = (a - b) / (t - b)
    assert 0.0 <= g.grade <= 1.0
    assert g.grade == pytest.approx(min(max(attainment, 0.0), 1.0))
    assert (g.overshoot is not None) == (attainment > 1)
    # Reflecting every number turns an increasing KR into a decreasing one with the same grade.
    mirrored = grade(baseline=-b, target=-t, actual=-a)
    assert mirrored.grade == pytest.approx(g.grade)


@given(finite, finite, finite, st.sampled_from(["at_least", "at_most"]))
def test_maintain_grade_is_monotone_in_actual(
    threshold: float, a1: float, a2: float, direction: str
):
    lo, hi = min(a1, a2), max(a1, a2)
    g_lo = grade(threshold=threshold, actual=lo, direction=direction).grade
    g_hi = grade(threshold=threshold, actual=hi, direction=direction).grade
    assert 0.0 <= g_lo <= 1.0
    assert 0.0 <= g_hi <= 1.0
    if direction == "at_least":
        assert g_lo <= g_hi
    else:
        assert g_lo >= g_hi
