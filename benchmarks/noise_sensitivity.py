"""How the calibrated RMSE ratio depends on how noisily graders grade.

The accuracy target "calibrated RMSE <= 0.40 x raw RMSE" compares the error left
after calibration with the raw error. What calibration can remove is the grader
effects (leniency, severity, compression); what it cannot remove is each grader's
own noise on each grade. The ratio therefore depends on the noise: this script
sweeps the per-grade noise SD of the `realistic` organisation (everything else
unchanged) and prints, per noise level, the raw RMSE, the RMSE of the additive and
affine models and their ratio to raw, and the 90% interval coverage.

Usage::

    python benchmarks/noise_sensitivity.py [--seeds 3] [--noise 0.0 0.02 0.04 0.06]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import msgspec
import numpy as np
from _common import machine_lines

from anchors.scales import parse_scale
from calibrate import GradeTable, model_from_name
from calibrate.simulate import scenario, simulate_org

MODELS = ("additive", "affine")


def _table(seed: int, noise: float) -> tuple[GradeTable, np.ndarray, list[str]]:
    config = msgspec.structs.replace(scenario("realistic"), noise_range=(noise, noise))
    sim = simulate_org(np.random.default_rng(seed), config)
    ev = {sim.kr_ids[i]: float(sim.evidence[i]) for i in np.flatnonzero(np.isfinite(sim.evidence))}
    table = GradeTable.from_arrays(
        [sim.kr_ids[i] for i in sim.grade_kr],
        [sim.grader_ids[j] for j in sim.grade_grader],
        sim.grade,
        parse_scale("google"),
        evidence=ev,
    )
    return table, sim.true_achievement, list(sim.kr_ids)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.02, 0.04, 0.06])
    args = p.parse_args(argv)
    print("## Noise sensitivity of the RMSE ratio\n")
    print("command: `benchmarks/noise_sensitivity.py " + " ".join(sys.argv[1:]) + "`\n")
    print("\n".join(machine_lines()) + "\n")
    print(
        "| grade noise SD | raw RMSE | model | RMSE | ratio to raw | 90% coverage | fit s |\n"
        "|---|---|---|---|---|---|---|"
    )
    for noise in args.noise:
        acc: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in MODELS}
        raw_all: list[float] = []
        for seed in range(args.seeds):
            table, truth, kr_ids = _table(seed, noise)
            pos = {k: i for i, k in enumerate(kr_ids)}
            for name in MODELS:
                t0 = time.perf_counter()
                fit = model_from_name(name).fit(table)
                dt = time.perf_counter() - t0
                idx = np.array([pos[k.kr_id] for k in fit.krs])
                tr = truth[idx]
                cal = np.array([k.calibrated_grade for k in fit.krs], dtype=float)
                raw = np.array([k.raw_grade for k in fit.krs])
                lo = np.array([k.ci_low for k in fit.krs], dtype=float)
                hi = np.array([k.ci_high for k in fit.krs], dtype=float)
                rmse = float(np.sqrt(np.mean((cal - tr) ** 2)))
                raw_rmse = float(np.sqrt(np.mean((raw - tr) ** 2)))
                cover = float(np.mean((lo <= tr) & (tr <= hi)))
                acc[name].append((rmse, raw_rmse, cover, dt))
                if name == MODELS[0]:
                    raw_all.append(raw_rmse)
        for name in MODELS:
            rows = np.array(acc[name])
            print(
                f"| {noise:.2f} | {np.mean(raw_all):.4f} | {name} | {rows[:, 0].mean():.4f} | "
                f"{(rows[:, 0] / rows[:, 1]).mean():.3f} | {100 * rows[:, 2].mean():.1f}% | "
                f"{np.median(rows[:, 3]):.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
