"""``okrcal calibrate`` end to end: outputs, determinism, bad input and the output directory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from calibrate import CalibrateError
from service.cli import main
from service.cmd_calibrate import (
    GRADERS_COLUMNS,
    OUTPUT_FILES,
    OWNERS_COLUMNS,
    SCORES_COLUMNS,
)

# --------------------------------------------------------------------------- a small organisation

# 24 metric KRs with evidence (actual on a 0-100 path from baseline 0 to target 100).
# "lenny" grades 12 of them about 0.25 above what the evidence says; "ada", "bo" and
# "cy" grade close to it. Six KRs are graded by two people, linking the graders.
_TRUTH = [0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75] * 2
_NOISE = [0.0, 0.05, -0.05, 0.0, 0.05, -0.05, 0.0, -0.05, 0.05, 0.0, 0.05, -0.05]


def _grades_rows() -> list[tuple[str, str, str, str]]:
    rows = []
    for i, truth in enumerate(_TRUTH):
        kr, owner = f"kr{i:02d}", f"own{i % 5}"
        if i < 12:
            grade = min(1.0, truth + 0.25 + _NOISE[i % 12] / 2)
            rows.append((kr, "lenny", f"{grade:.2f}", owner))
        else:
            grader = ("ada", "bo", "cy")[i % 3]
            rows.append((kr, grader, f"{truth + _NOISE[i % 12] / 2:.2f}", owner))
        if i % 4 == 0:
            second = ("bo", "cy", "ada")[i % 3]
            rows.append((kr, second, f"{truth - _NOISE[i % 12] / 2:.2f}", owner))
    return rows


def _krs_rows() -> list[dict[str, str]]:
    rows = []
    for i, truth in enumerate(_TRUTH):
        rows.append(
            {
                "kr_id": f"kr{i:02d}",
                "kr_type": "metric",
                "baseline": "0",
                "target": "100",
                "actual": f"{truth * 100:g}",
                "description": f"Raise activation from 0% to 100% in market {i}",
                "threshold": "",
            }
        )
    rows[3]["description"] = "Launch the new onboarding flow"
    rows[7]["description"] = "Complete the pricing migration"
    rows[5]["target"] = "0"  # target equal to baseline: bad evidence for kr05
    rows[10]["threshold"] = "50"  # not used by a metric KR: a warning, the grade stands
    return rows


def _write_csv(
    path: Path, header: list[str], rows: list[list[str]] | list[tuple[str, ...]]
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def grades_csv(tmp_path: Path) -> Path:
    return _write_csv(
        tmp_path / "grades.csv", ["kr_id", "grader_id", "grade", "owner_id"], _grades_rows()
    )


@pytest.fixture
def krs_csv(tmp_path: Path) -> Path:
    rows = _krs_rows()
    header = list(rows[0])
    return _write_csv(tmp_path / "krs.csv", header, [[r[h] for h in header] for r in rows])


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --------------------------------------------------------------------------- the happy path


def test_calibrate_writes_the_four_files_and_flags_the_lenient_grader(
    tmp_path: Path, grades_csv: Path, krs_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(["calibrate", str(grades_csv), "--krs", str(krs_csv), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)

    header, scores = _read(out / "scores.csv")
    assert header == list(SCORES_COLUMNS)
    assert [s["kr_id"] for s in scores] == [f"kr{i:02d}" for i in range(len(_TRUTH))]
    by_kr = {s["kr_id"]: s for s in scores}
    assert by_kr["kr05"]["evidence_grade"] == ""  # its evidence could not be graded
    assert float(by_kr["kr06"]["evidence_grade"]) == pytest.approx(0.5)
    assert by_kr["kr00"]["n_grades"] == "2"
    assert by_kr["kr00"]["owner_id"] == "own0"
    for s in scores:
        low, mid, high = float(s["ci_low"]), float(s["calibrated_grade"]), float(s["ci_high"])
        assert 0.0 <= low <= mid <= high <= 1.0

    header, graders = _read(out / "graders.csv")
    assert header == list(GRADERS_COLUMNS)
    flags = {g["grader_id"]: g for g in graders}
    assert set(flags) == {"ada", "bo", "cy", "lenny"}
    lenny = flags["lenny"]
    assert lenny["flag"] == "lenient"
    assert float(lenny["leniency"]) == pytest.approx(0.25, abs=0.08)
    assert float(lenny["q_value"]) < 0.05
    assert all(flags[g]["flag"] != "lenient" for g in ("ada", "bo", "cy"))

    header, owners = _read(out / "owners.csv")
    assert header == list(OWNERS_COLUMNS)
    assert [o["owner_id"] for o in owners] == [f"own{i}" for i in range(5)]
    assert sum(int(o["n_krs"]) for o in owners) == len(_TRUTH)

    report = json.loads((out / "fit.json").read_text())
    for key in (
        "model", "model_spec", "model_version", "okrcal_version", "input_hash", "inputs",
        "variance", "components", "diagnostics", "warnings", "evidence_problems",
        "outcome_flags",
    ):  # fmt: skip
        assert key in report, key
    assert report["model"] == "additive"
    assert report["model_spec"]["confidence"] == 0.9
    assert report["input_hash"].startswith("sha256:")
    assert [i["role"] for i in report["inputs"]] == ["grades", "krs"]
    assert report["inputs"][0]["rows"] == len(_grades_rows())
    assert set(report["diagnostics"]) >= {"unexpected", "misfit", "flag_counts", "converged"}
    assert report["diagnostics"]["flag_counts"]["lenient"] == 1
    [problem] = report["evidence_problems"]
    assert (problem["kr_id"], problem["field"], problem["row"]) == ("kr05", "target", 6)
    [remark] = report["evidence_warnings"]
    assert remark["kr_id"] == "kr10"
    assert "threshold" in remark["message"]
    assert report["cycles"] == []
    flagged = {f["kr_id"]: f for f in report["outcome_flags"]}
    assert set(flagged) == {"kr03", "kr07"}
    assert flagged["kr03"]["triggers"]

    assert "lenient" in captured.out
    assert "lenny" in captured.out
    assert "2 KR(s) read as outputs (activities) rather than outcomes" in captured.out
    assert "kr03" in captured.out
    assert "KR 'kr05', field 'target'" in captured.err
    assert "row 6" in captured.err


def test_same_input_gives_byte_identical_outputs(
    tmp_path: Path, grades_csv: Path, krs_csv: Path
) -> None:
    args = ["calibrate", str(grades_csv), "--krs", str(krs_csv), "--model", "affine"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")


def test_row_order_does_not_change_the_results(tmp_path: Path, grades_csv: Path) -> None:
    rows = _grades_rows()
    shuffled = _write_csv(
        tmp_path / "shuffled.csv",
        ["owner_id", "grade", "grader_id", "kr_id"],
        [(r[3], r[2], r[1], r[0]) for r in rows[::-1]],
    )
    assert main(["calibrate", str(grades_csv), "--out", str(tmp_path / "a")]) == 0
    assert main(["calibrate", str(shuffled), "--out", str(tmp_path / "b")]) == 0
    a, b = _snapshot(tmp_path / "a"), _snapshot(tmp_path / "b")
    for name in ("scores.csv", "graders.csv", "owners.csv"):
        assert a[name] == b[name], name
    ja, jb = json.loads(a["fit.json"]), json.loads(b["fit.json"])
    assert ja["input_hash"] == jb["input_hash"]
    assert ja["inputs"][0]["sha256"] != jb["inputs"][0]["sha256"]


@pytest.mark.parametrize("model", ["additive", "affine", "fixed", "zscore", "mean"])
def test_every_model_runs_on_a_percent_scale(tmp_path: Path, model: str) -> None:
    rows = [(k, g, f"{float(v) * 100:g}", o) for k, g, v, o in _grades_rows()]
    grades = _write_csv(tmp_path / "pct.csv", ["kr_id", "grader_id", "grade", "owner_id"], rows)
    out = tmp_path / model
    assert main(["calibrate", str(grades), "--scale", "percent", "--model", model,
                 "--confidence", "0.95", "--out", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "fit.json").read_text())
    assert report["model"] == model
    assert report["scale"]["name"] == "percent"
    assert report["confidence"] == 0.95
    _, scores = _read(out / "scores.csv")
    assert all(
        0.0 <= float(s["calibrated_grade"]) <= 100.0 for s in scores if s["calibrated_grade"]
    )


def test_cycles_allow_the_same_pair_twice(tmp_path: Path) -> None:
    rows = [(k, g, v, "2025Q1") for k, g, v, _ in _grades_rows()]
    rows += [(k, g, v, "2025Q2") for k, g, v, _ in _grades_rows()]
    grades = _write_csv(tmp_path / "cyc.csv", ["kr_id", "grader_id", "grade", "cycle"], rows)
    assert main(["calibrate", str(grades), "--out", str(tmp_path / "o")]) == 0
    report = json.loads((tmp_path / "o" / "fit.json").read_text())
    assert report["n_grades"] == len(rows)
    assert report["cycles"] == ["2025Q1", "2025Q2"]


def test_the_installed_console_script(tmp_path: Path, grades_csv: Path, krs_csv: Path) -> None:
    script = Path(sys.executable).parent / "okrcal"
    assert script.exists(), "install the package (pip install -e '.[dev]') for the okrcal script"
    out = tmp_path / "out"
    done = subprocess.run(
        [str(script), "calibrate", str(grades_csv), "--krs", str(krs_csv), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "lenny" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    bad = subprocess.run(
        [str(script), "calibrate", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "missing.csv: no such file" in bad.stderr
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- bad input


GOOD = "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g1,0.7\nk2,g2,0.6\n"


@pytest.mark.parametrize(
    ("grades", "extra", "needles"),
    [
        pytest.param(
            "kr_id,grader_id\nk1,g1\n",
            [],
            ["grades.csv", "column 'grade'", "no column"],
            id="missing-column",
        ),
        pytest.param(
            "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g1,high\n",
            [],
            [
                "grades.csv, row 2 (not counting the header; line 3 of the file)",
                "column 'grade'",
                "'high' is not a number",
            ],
            id="non-numeric-grade",
        ),
        pytest.param(
            "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g1,1.2\n",
            [],
            ["grades.csv, row 2", "column 'grade'", "outside the google scale"],
            id="out-of-scale",
        ),
        pytest.param(
            "kr_id,grader_id,grade\nk1,g1,4\nk2,g1,6\n",
            ["--scale", "five_point"],
            ["grades.csv, row 2", "column 'grade'", "outside the five_point scale [1, 5]"],
            id="out-of-five-point",
        ),
        pytest.param(
            "kr_id,grader_id,grade\nk1,g1,NaN\n",
            [],
            ["grades.csv, row 1", "column 'grade'", "not a finite number"],
            id="nan",
        ),
        pytest.param(
            "kr_id,grader_id,grade\nk1,g1,0.5\nk2,g1,-inf\n",
            [],
            ["grades.csv, row 2", "column 'grade'", "not a finite number"],
            id="inf",
        ),
        pytest.param("", [], ["grades.csv", "the file is empty"], id="empty-file"),
        pytest.param(
            "kr_id,grader_id,grade\r\n\r\n",
            [],
            ["grades.csv", "no data rows"],
            id="header-only",
        ),
        pytest.param(
            GOOD + "k1,g1,0.9\n",
            [],
            ["grades.csv, row 4", "column 'grader_id'", "twice in one cycle (first at row 1)"],
            id="duplicate",
        ),
        pytest.param(
            GOOD + "k3,,0.9\n",
            [],
            ["grades.csv, row 4", "column 'grader_id'", "non-empty id"],
            id="empty-id",
        ),
        pytest.param(
            GOOD + '"",g1,0.9\n',
            [],
            ["grades.csv, row 4", "column 'kr_id'", "non-empty id"],
            id="empty-kr-id",
        ),
        pytest.param(
            "kr_id,grader_id,grade,graders_note\nk1,g1,0.5,x\n",
            [],
            ["grades.csv", "column 'graders_note'", "unknown column"],
            id="unknown-column",
        ),
        pytest.param(GOOD, ["--scale", "ten"], ["--scale", "unknown scale 'ten'"], id="scale"),
        pytest.param(GOOD, ["--scale", "5:1"], ["--scale", "LOW must be below HIGH"], id="range"),
        pytest.param(GOOD, ["--model", "lme4"], ["--model", "unknown model 'lme4'"], id="model"),
        pytest.param(GOOD, ["--confidence", "1.5"], ["--confidence", "(0, 1)"], id="confidence"),
        pytest.param(GOOD, ["--fdr", "0"], ["--fdr"], id="fdr"),
        pytest.param(GOOD, ["--min-effect", "-1"], ["--min-effect"], id="min-effect"),
        pytest.param(GOOD, ["--min-linked", "0"], ["--min-linked"], id="min-linked"),
    ],
)
def test_bad_input_exits_2_names_the_place_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    grades: str,
    extra: list[str],
    needles: list[str],
) -> None:
    path = tmp_path / "grades.csv"
    path.write_text(grades, encoding="utf-8", newline="")
    out = tmp_path / "out"
    code = main(["calibrate", str(path), *extra, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grades.csv"]


@pytest.mark.parametrize(
    ("krs", "needles"),
    [
        pytest.param(
            "kr_id,baseline,target,actual\nk1,0,10,5\nk2,0,ten,5\n",
            [
                "krs.csv, row 2 (not counting the header; line 3 of the file)",
                "column 'target'",
                "'ten' is not a number",
            ],
            id="non-numeric",
        ),
        pytest.param(
            "kr_id,kr_type\nk1,metrc\n",
            ["krs.csv, row 1", "column 'kr_type'"],
            id="kr-type",
        ),
        pytest.param(
            "kr_id,tagret\nk1,10\n",
            ["krs.csv", "column 'tagret'", "did you mean 'target'?"],
            id="typo",
        ),
        pytest.param("", ["krs.csv", "the file is empty"], id="empty"),
        pytest.param(
            "kr_id,owner_id\nk1,zed\n",
            ["krs.csv, row 1", "column 'owner_id'", "'zed' here but 'ann' in"],
            id="owner-conflict",
        ),
    ],
)
def test_bad_krs_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], krs: str, needles: list[str]
) -> None:
    grades = tmp_path / "grades.csv"
    grades.write_text("kr_id,grader_id,grade,owner_id\nk1,g1,0.5,ann\nk2,g1,0.7,\n")
    path = tmp_path / "krs.csv"
    path.write_text(krs, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["calibrate", str(grades), "--krs", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()


def test_missing_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["calibrate", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2
    assert "nope.csv: no such file" in capsys.readouterr().err
    grades = tmp_path / "grades.csv"
    grades.write_text(GOOD)
    krs = tmp_path / "krs.csv"
    assert main(["calibrate", str(grades), "--krs", str(krs), "--out", str(out)]) == 2
    assert "krs.csv: no such file" in capsys.readouterr().err
    assert not out.exists()


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["calibrate", "grades.csv"])  # no --out
    assert info.value.code == 2


# --------------------------------------------------------------------------- the output directory


def test_a_previous_run_is_replaced_as_a_set_and_kept_on_bad_input(
    tmp_path: Path, grades_csv: Path, krs_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["calibrate", str(grades_csv), "--out", str(out)]) == 0
    first = _snapshot(out)
    bad = tmp_path / "bad.csv"
    bad.write_text("kr_id,grader_id,grade\nk1,g1,x\n")
    assert main(["calibrate", str(bad), "--out", str(out)]) == 2
    assert _snapshot(out) == first
    assert main(["calibrate", str(grades_csv), "--krs", str(krs_csv), "--out", str(out)]) == 0
    second = _snapshot(out)
    assert sorted(second) == sorted(OUTPUT_FILES)
    assert second["scores.csv"] != first["scores.csv"]  # now with evidence grades
    # nothing is left beside DIR
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["bad.csv", "grades.csv", "krs.csv", "out"]
    )


def test_an_empty_directory_is_used(tmp_path: Path, grades_csv: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert main(["calibrate", str(grades_csv), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)


def test_a_new_nested_directory_is_created(tmp_path: Path, grades_csv: Path) -> None:
    out = tmp_path / "a" / "b"
    assert main(["calibrate", str(grades_csv), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)


def test_a_directory_with_other_files_is_refused(
    tmp_path: Path, grades_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "scores.csv").write_text("mine")
    assert main(["calibrate", str(grades_csv), "--out", str(out)]) == 2
    assert "holds files okrcal did not write (notes.txt)" in capsys.readouterr().err
    assert _snapshot(out) == {"notes.txt": b"keep me", "scores.csv": b"mine"}


def test_out_must_not_be_a_file(
    tmp_path: Path, grades_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.write_text("x")
    assert main(["calibrate", str(grades_csv), "--out", str(out)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert out.read_text() == "x"


def test_numbers_round_trip_and_missing_values_are_empty_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two graders on disjoint KRs with no evidence: the second part of the graph is not
    # linked to the first, so some estimates cannot be made and must be empty, not 0/NaN.
    grades = tmp_path / "g.csv"
    grades.write_text("kr_id,grader_id,grade\nk1,g1,0.3\nk2,g1,0.7\nk3,g2,0.1\nk4,g2,0.9\n")
    out = tmp_path / "out"
    assert main(["calibrate", str(grades), "--out", str(out)]) == 0
    for name in ("scores.csv", "graders.csv", "owners.csv"):
        text = (out / name).read_text()
        assert "nan" not in text.lower()
        assert "np.float" not in text
    _, graders = _read(out / "graders.csv")
    _, scores = _read(out / "scores.csv")
    assert [s["raw_grade"] for s in scores] == ["0.3", "0.7", "0.1", "0.9"]
    assert all(s["evidence_grade"] == "" for s in scores)
    assert {g["grader_id"]: g["n_grades"] for g in graders} == {"g1": "2", "g2": "2"}


def test_ids_with_commas_quotes_and_newlines_survive_the_round_trip(tmp_path: Path) -> None:
    odd = ["k,1", 'k "2"', "k\n3", "ünï cødé"]
    rows = [(k, g, "0.5") for k in odd for g in ("g,1", "g2")]
    grades = _write_csv(tmp_path / "g.csv", ["kr_id", "grader_id", "grade"], rows)
    out = tmp_path / "out"
    assert main(["calibrate", str(grades), "--model", "mean", "--out", str(out)]) == 0
    _, scores = _read(out / "scores.csv")
    _, graders = _read(out / "graders.csv")
    assert [s["kr_id"] for s in scores] == sorted(odd)
    assert [g["grader_id"] for g in graders] == ["g,1", "g2"]


def test_a_symlinked_directory_is_replaced_behind_the_link(
    tmp_path: Path, grades_csv: Path
) -> None:
    real = tmp_path / "real"
    assert main(["calibrate", str(grades_csv), "--out", str(real)]) == 0
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    assert main(["calibrate", str(grades_csv), "--model", "mean", "--out", str(link)]) == 0
    assert link.is_symlink()
    assert json.loads((real / "fit.json").read_text())["model"] == "mean"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grades.csv", "link", "real"]


def test_a_model_that_refuses_the_grades_exits_2_and_writes_nothing(
    tmp_path: Path,
    grades_csv: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import calibrate.engine

    def refuse(*args: object, **kwargs: object) -> None:
        raise CalibrateError("3001 graders form one connected group")

    # behind both fit_model and fit_columns (which okrcal calibrate calls)
    monkeypatch.setattr(calibrate.engine, "_fit_guarded", refuse)
    out = tmp_path / "out"
    assert main(["calibrate", str(grades_csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "grades.csv: the additive model cannot fit these grades: 3001 graders" in err
    assert not out.exists()
