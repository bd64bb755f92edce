"""Sessions in the core: agenda order and reasons, what-if previews, final owner achievement."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import numpy as np
import pytest

from anchors.scales import parse_scale
from calibrate import GradeRecord, GradeTable, InputError, KRScore, model_from_name
from calibrate.session import (
    AddGrade,
    ExcludeGrader,
    OverrideGrade,
    apply_changes,
    build_agenda,
    final_owners,
    what_if,
)
from calibrate.simulate import scenario, simulate_org

GOOGLE = parse_scale("google")


def _sim_table(n_graders: int = 12, seed: int = 7, lenient: float = 0.0) -> GradeTable:
    cfg = msgspec.structs.replace(
        scenario("realistic"), n_graders=n_graders, affected_share=0.0, second_grader_share=0.6
    )
    sim = simulate_org(np.random.default_rng(seed), cfg)
    grades = sim.grade.copy()
    grades[sim.grade_grader == 0] = np.clip(grades[sim.grade_grader == 0] + lenient, 0, 1)
    return GradeTable.from_arrays(
        sim.grade_kr_ids(),
        sim.grade_grader_ids(),
        grades,
        GOOGLE,
        evidence=sim.evidence_map(),
        owners=sim.owner_map(),
    )


def _score(kr_id: str, raw: float, cal: float, lo: float, hi: float) -> KRScore:
    return KRScore(
        kr_id=kr_id,
        owner_id="o1",
        n_grades=2,
        raw_grade=raw,
        evidence_grade=None,
        calibrated_grade=cal,
        std_error=(hi - lo) / 3.3,
        ci_low=lo,
        ci_high=hi,
    )


def test_agenda_orders_kinds_and_gives_every_reason() -> None:
    table = _sim_table(lenient=0.25)
    fit = model_from_name("additive").fit(table)
    descriptions = {fit.krs[0].kr_id: "Launch the partner portal"}
    agenda = build_agenda(fit.krs, fit.graders, GOOGLE, descriptions=descriptions, max_gaps=5)
    kinds = [i.kind for i in agenda.items]
    assert kinds == sorted(
        kinds,
        key=["flagged_grader", "straddles_boundary", "large_gap", "output_not_outcome"].index,
    )
    assert agenda.items[0].subject == "grader"
    assert agenda.items[0].subject_id == "g00"  # the one made lenient by 0.25
    assert "lenient" in agenda.items[0].reasons[0]
    assert [i.position for i in agenda.items] == list(range(1, len(agenda.items) + 1))
    assert sum(1 for i in agenda.items if "large_gap" in i.kinds) <= 5
    out = [i for i in agenda.items if "output_not_outcome" in i.kinds]
    assert [i.subject_id for i in out] == [fit.krs[0].kr_id]
    assert "Launch" in " ".join(out[0].reasons)
    # each subject appears once
    assert len({(i.subject, i.subject_id) for i in agenda.items}) == len(agenda.items)
    assert not agenda.grader_stats_withheld


def test_agenda_merges_kinds_of_one_kr_and_orders_by_closeness_to_the_boundary() -> None:
    krs = [
        _score("far", 0.62, 0.62, 0.45, 0.75),  # straddles 0.7, 0.08 from it
        _score("near", 0.69, 0.69, 0.60, 0.80),  # straddles 0.7, 0.01 from it
        _score("gap", 0.95, 0.70, 0.66, 0.74),  # straddles and has a 0.25 gap
        _score("quiet", 0.5, 0.5, 0.45, 0.55),
    ]
    agenda = build_agenda(krs, [], GOOGLE, min_graders=0)
    ids = [i.subject_id for i in agenda.items]
    assert ids == ["gap", "near", "far"]
    gap = agenda.items[0]
    assert gap.kinds == ("straddles_boundary", "large_gap")
    assert len(gap.reasons) == 2
    assert "0.25" in gap.reasons[1]


def test_small_groups_withhold_grader_statistics_and_say_why() -> None:
    table = _sim_table(lenient=0.25)
    fit = model_from_name("additive").fit(table)
    three = fit.graders[:3]
    agenda = build_agenda(fit.krs, three, GOOGLE)
    assert agenda.grader_stats_withheld
    assert agenda.withheld_reason is not None
    assert "fewer than 4" in agenda.withheld_reason
    assert all(i.subject == "kr" for i in agenda.items)


def test_what_if_excluding_a_lenient_grader_clears_the_flag() -> None:
    table = _sim_table(lenient=0.3)
    model = model_from_name("additive")
    base = model.fit(table)
    assert next(g for g in base.graders if g.grader_id == "g00").flag == "lenient"
    result = what_if(table, model, [ExcludeGrader(grader_id="g00")], baseline=base)
    assert "g00" in {f.grader_id for f in result.flags_cleared}
    assert result.n_grades_after < result.n_grades_before
    assert result.krs  # something moved
    # KRs graded only by g00000 lose every grade and say so
    lost = [k for k in result.krs if k.after is None]
    assert all(k.reason == "no grades left in the scope" for k in lost)
    assert set(result.crossings) == {k.kr_id for k in result.krs if k.crosses_level}


def test_what_if_override_and_add_report_crossings_and_owner_moves() -> None:
    recs = [
        GradeRecord(kr_id=f"k{i}", grader_id=g, grade=0.5, owner_id=f"o{i % 2}")
        for i in range(6)
        for g in ("ann", "bob")
    ]
    table = GradeTable.from_records(recs, GOOGLE)
    model = model_from_name("mean")
    result = what_if(
        table,
        model,
        [
            OverrideGrade(kr_id="k0", grade=0.9),  # every grade of k0
            AddGrade(kr_id="k1", grader_id="cat", grade=1.0),
        ],
        known_graders={"cat"},
    )
    by_id = {k.kr_id: k for k in result.krs}
    assert set(by_id) == {"k0", "k1"}
    assert by_id["k0"].after == pytest.approx(0.9)
    assert by_id["k0"].crosses_level
    assert by_id["k1"].after == pytest.approx(2.0 / 3.0)
    assert not by_id["k1"].crosses_level
    assert result.crossings == ("k0",)
    assert {o.owner_id for o in result.owners} == {"o0", "o1"}
    assert result.grader_stats_withheld  # two graders only


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (OverrideGrade(kr_id="nope", grade=0.5), "changes[0].kr_id", "unknown KR"),
        (ExcludeGrader(grader_id="nobody"), "changes[0].grader_id", "unknown grader"),
        (AddGrade(kr_id="k0", grader_id="nobody", grade=0.5), "changes[0].grader_id", "unknown"),
        (AddGrade(kr_id="k0", grader_id="ann", grade=0.5), "changes[0].grader_id", "already"),
        (OverrideGrade(kr_id="k0", grade=1.5), "changes[0].grade", "outside"),
        (OverrideGrade(kr_id="k0", grade=float("nan")), "changes[0].grade", "finite"),
    ],
)
def test_what_if_names_the_bad_change(change: object, field: str, message: str) -> None:
    recs = [GradeRecord(kr_id="k0", grader_id=g, grade=0.5) for g in ("ann", "bob")]
    table = GradeTable.from_records(recs, GOOGLE)
    with pytest.raises(InputError, match=message) as info:
        apply_changes(table, [change])  # type: ignore[list-item]
    assert info.value.field == field
    with pytest.raises(InputError, match="at least one change"):
        what_if(table, model_from_name("mean"), [])


def test_final_owners_fold_in_adjustments_with_weights() -> None:
    table = _sim_table()
    fit = model_from_name("additive").fit(table)
    owner = fit.owners[0]
    mine = [k for k in fit.krs if k.owner_id == owner.owner_id]
    target = mine[0]
    final = final_owners(fit.krs, fit.owners, {target.kr_id: 1.0}, weights={target.kr_id: 3.0})
    changed = {o.owner_id: o for o in final}[owner.owner_id]
    weights = [3.0 if k is target else 1.0 for k in mine]
    values = [1.0 if k is target else float(k.calibrated_grade or 0.0) for k in mine]
    expected = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
    assert changed.achievement == pytest.approx(expected)
    assert changed.reason is not None
    assert target.kr_id in changed.reason
    assert changed.ci_high is not None
    assert owner.ci_high is not None
    assert owner.ci_low is not None
    assert changed.ci_low is not None
    assert changed.ci_high - changed.ci_low == pytest.approx(owner.ci_high - owner.ci_low)
    untouched = [o for o in final if o.owner_id != owner.owner_id]
    assert untouched == [o for o in fit.owners if o.owner_id != owner.owner_id]


def test_session_and_drift_modules_do_no_io() -> None:
    code = (
        "import calibrate.session, calibrate.drift, sys; "
        "print(sorted({'litestar','redis','service','httpx'} & set(sys.modules)))"
    )
    assert subprocess.check_output([sys.executable, "-c", code]).strip() == b"[]"
