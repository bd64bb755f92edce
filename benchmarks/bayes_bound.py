"""The lowest calibrated RMSE any method could reach on the simulations: the Bayes bound.

Run from the repository root::

    .venv/bin/python benchmarks/bayes_bound.py                  # 10 seeds, the issue's scenarios
    .venv/bin/python benchmarks/bayes_bound.py --seeds 3 --noise 0 0.01 0.02 0.03 0.04 0.05 0.06

Issue 2 asks for a calibrated RMSE of at most 0.40 x the raw mean's RMSE. Whether that
can be reached depends on the simulation, not only on the model: calibration removes
grader effects, and what is left is each grade's own noise. This script measures the
floor exactly. For every KR it computes the posterior mean of the true achievement
given *more* than any method is given:

* every grader's true leniency, scale and noise SD, and the evidence noise SD;
* the true prior of achievement (the simulation's Beta, shifted and clipped by the
  true team shift where the scenario has one);
* the grades **before** rounding to 0.05 and clipping to [0, 1], and the evidence
  before clipping.

Each latent grade is then a normal measurement of the achievement,
``(x - m(1 - s) - l) / s ~ N(t, sigma^2 / s^2)``, as is the latent evidence, so the
likelihood is normal and the posterior mean is an integral over the prior, done on a
grid of 4,001 points (plus the prior's atoms at 0 and 1 when a team shift clips it).
The posterior mean minimises the expected squared error given that information, and
any method's inputs (rounded, clipped grades, no known effects) are a function of it,
so no method's expected RMSE is lower. The figures below are that expectation
estimated over ``--seeds`` organisations (mean ± SD across seeds of the per-seed ratio
to raw, as in ``accuracy.py``), beside the default model and the existing oracle of
``accuracy.py`` (known effects, normal prior, rounded grades).

With ``--noise``, the ``realistic`` organisation is also swept over per-grade noise SD
(everything else unchanged), showing from which noise level a ratio of 0.40 becomes
possible at all.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from collections.abc import Sequence

import msgspec
import numpy as np
import numpy.typing as npt
import scipy.special
from _common import kr_means, machine_lines, sim_table

from calibrate import model_from_name
from calibrate.simulate import SimConfig, Simulation, scenario, simulate_org

FloatArray = npt.NDArray[np.float64]

#: The scenarios of issue 2's accuracy setup, and the one without evidence.
SCENARIOS = (
    "realistic",
    "compression_heavy",
    "small_team",
    "team_differences",
    "no_effects",
    "no_evidence_30pct_double",
)
TARGET = 0.40
GRID = 4001
_CHUNK = 2048


def _seed(name: str, i: int) -> np.random.Generator:
    # the same organisations as benchmarks/accuracy.py
    return np.random.default_rng([i, zlib.crc32(name.encode())])


def _measurements(sim: Simulation) -> tuple[FloatArray, FloatArray]:
    """Per KR: precision and mean of the normal likelihood of its achievement."""
    g, k = sim.grade_grader, sim.grade_kr
    s = sim.true_scale[g]
    m = sim.org_mean
    x = (sim.latent_grade - m * (1.0 - s) - sim.true_leniency[g]) / s
    # a noiseless grade is an exact measurement: a finite, very large precision
    var = np.maximum(sim.noise_sd[g] ** 2 / s**2, 1e-12)
    prec = np.bincount(k, 1.0 / var, sim.n_krs)
    num = np.bincount(k, x / var, sim.n_krs)
    ev = np.isfinite(sim.latent_evidence)
    ev_var = max(sim.config.evidence_sd**2, 1e-12)
    prec = prec + ev / ev_var
    num = num + np.where(ev, sim.latent_evidence, 0.0) / ev_var
    return prec, num / prec


def posterior_means(sim: Simulation) -> FloatArray:
    """Per KR: the exact posterior mean of the true achievement (see the module docstring)."""
    cfg = sim.config
    mean, sd = cfg.achievement_mean, cfg.achievement_sd
    conc = mean * (1.0 - mean) / sd**2 - 1.0
    a, b = mean * conc, (1.0 - mean) * conc
    prec, centre = _measurements(sim)
    shift = sim.team_shift[sim.owner_manager[sim.kr_owner]]
    # grid midpoints on (0, 1) and the two atoms a clipping team shift puts at 0 and 1
    step = 1.0 / GRID
    t = (np.arange(GRID) + 0.5) * step
    points = np.concatenate([[0.0], t, [1.0]])
    out = np.empty(sim.n_krs)
    for lo in range(0, sim.n_krs, _CHUNK):
        sl = slice(lo, lo + _CHUNK)
        u = shift[sl, None]
        inside = (t - u > 0.0) & (t - u < 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_prior = np.where(
                inside,
                scipy.special.xlogy(a - 1.0, t - u)
                + scipy.special.xlog1py(b - 1.0, -(t - u))
                - scipy.special.betaln(a, b)
                + math.log(step),
                -np.inf,
            )
        atom0 = scipy.special.betainc(a, b, np.clip(-shift[sl], 0.0, 1.0))  # P(B + u <= 0)
        atom1 = 1.0 - scipy.special.betainc(a, b, np.clip(1.0 - shift[sl], 0.0, 1.0))
        with np.errstate(divide="ignore"):
            log_w = np.concatenate(
                [np.log(atom0)[:, None], log_prior, np.log(atom1)[:, None]], axis=1
            )
        log_w = log_w - 0.5 * prec[sl, None] * (points - centre[sl, None]) ** 2
        log_w -= log_w.max(axis=1, keepdims=True)
        w = np.exp(log_w)
        out[sl] = (w * points).sum(axis=1) / w.sum(axis=1)
    # a likelihood narrower than the grid (noiseless grades) pins the achievement itself
    narrow = 1.0 / np.sqrt(prec) < 3.0 * step
    out[narrow] = np.clip(centre[narrow], 0.0, 1.0)
    return out


def _rmse(est: FloatArray, truth: FloatArray) -> float:
    return float(np.sqrt(np.mean((est - truth) ** 2)))


def _normal_oracle(sim: Simulation) -> FloatArray:
    """``accuracy.py``'s oracle: known effects, rounded grades, a normal prior."""
    from accuracy import Z90, oracle

    return oracle(sim, Z90)[0]


def _run(config: SimConfig, seeds: int, model: str) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {"raw": [], "bayes": [], "oracle": [], model: []}
    spec = model_from_name(model)
    for i in range(seeds):
        sim = simulate_org(_seed(config.name, i), config)
        truth = sim.true_achievement
        raw = _rmse(kr_means(sim), truth)
        rows["raw"].append(raw)
        rows["bayes"].append(_rmse(posterior_means(sim), truth) / raw)
        rows["oracle"].append(_rmse(_normal_oracle(sim), truth) / raw)
        fit = spec.fit(sim_table(sim))
        cal = np.array(
            [np.nan if k.calibrated_grade is None else k.calibrated_grade for k in fit.krs]
        )
        idx = np.array([int(k.kr_id[1:]) for k in fit.krs])
        ok = np.isfinite(cal)
        rows[model].append(_rmse(cal[ok], truth[idx[ok]]) / raw)
    return rows


def _fmt(xs: Sequence[float]) -> str:
    a = np.asarray(xs)
    return f"{a.mean():.3f}" if a.size < 2 else f"{a.mean():.3f} ± {a.std(ddof=1):.3f}"


def _print_row(label: str, config: SimConfig, seeds: int, model: str) -> None:
    rows = _run(config, seeds, model)
    bound = float(np.mean(rows["bayes"]))
    print(
        f"| {label} | {seeds} | {_fmt(rows['raw'])} | {_fmt(rows['bayes'])} | "
        f"{_fmt(rows['oracle'])} | {_fmt(rows[model])} | "
        f"{'yes' if bound <= TARGET else 'no: the bound is above 0.40'} |",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS))
    p.add_argument("--noise", type=float, nargs="*", default=[])
    p.add_argument("--model", default="additive")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    print("## Bayes bound of the calibrated RMSE (benchmarks/bayes_bound.py)\n")
    print("command: `.venv/bin/python benchmarks/bayes_bound.py " + " ".join(sys.argv[1:]) + "`\n")
    print("\n".join(machine_lines()) + "\n")
    head = (
        f"| {{}} | seeds | raw RMSE | Bayes bound / raw | oracle of accuracy.py / raw "
        f"| {args.model} / raw | 0.40 reachable? |\n|---|---|---|---|---|---|---|"
    )
    print(head.format("scenario"))
    for name in args.scenarios:
        _print_row(name, scenario(name), args.seeds, args.model)
    if args.noise:
        print("\n`realistic` with every grader's noise SD set to the value in the first column:\n")
        print(head.format("grade noise SD"))
        base = scenario("realistic")
        for noise in args.noise:
            cfg = msgspec.structs.replace(base, noise_range=(noise, noise))
            _print_row(f"{noise:g}", cfg, args.seeds, args.model)
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
