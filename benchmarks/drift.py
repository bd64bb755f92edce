"""Grader drift detection across cycles: recall and false-alarm rate on seeded simulations.

Run from the repository root::

    .venv/bin/python benchmarks/drift.py                   # ~1-2 min on 2 cores
    .venv/bin/python benchmarks/drift.py --seeds 3 --cycles 4

Each seed simulates ``--cycles`` cycles of one organisation (the ``realistic`` scenario
with ``--graders`` graders; a fresh grading pattern every cycle, from
:func:`calibrate.simulate.simulate_org`). Every grader keeps a leniency of their own
across cycles (N(0, 0.06) on the 0–1 scale) and, if ``--wobble`` is set, moves around it
by N(0, wobble) from cycle to cycle. In the latest cycle ``--drifters`` graders shift by
± the drift size. Each cycle is fitted with the additive model; the grader leniencies
and standard errors go to :func:`calibrate.drift.drift_tests` (the organisation's pooled
between-cycle SD as a floor; ``--own-only`` for each grader's own) and
:func:`calibrate.drift.rank_drifting` (defaults: FDR 0.05, minimum change 0.05).

Recall: share of the shifted graders flagged drifting. False-alarm rate: share of the
other graders flagged. The ``0.00`` row has no shift at all (every flag is false).
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
from calibrate.drift import CyclePoint, drift_tests, rank_drifting
from calibrate.simulate import scenario, simulate_org

GOOGLE = parse_scale("google")


def _one(
    seed: int,
    size: float,
    n_graders: int,
    n_cycles: int,
    n_drifters: int,
    wobble: float,
    pooled: bool,
) -> tuple[int, int, int, int]:
    rng = np.random.default_rng(seed)
    cfg = msgspec.structs.replace(
        scenario("realistic"), n_graders=n_graders, affected_share=0.0, ok_leniency_sd=0.0
    )
    base = rng.normal(0.0, 0.06, n_graders)
    drifters = rng.choice(n_graders, n_drifters, replace=False)
    shift = np.zeros(n_graders)
    shift[drifters] = rng.choice([-1.0, 1.0], n_drifters) * size
    model = model_from_name("additive")
    hist: dict[str, list[CyclePoint]] = {}
    ids: tuple[str, ...] = ()
    for c in range(n_cycles):
        sim = simulate_org(np.random.default_rng(seed * 1000 + c), cfg)
        ids = sim.grader_ids
        lenient = base + rng.normal(0.0, wobble, n_graders) if wobble else base.copy()
        if c == n_cycles - 1:
            lenient = lenient + shift
        grades = np.clip(sim.grade + lenient[sim.grade_grader], 0.0, 1.0)
        table = GradeTable.from_arrays(
            sim.grade_kr_ids(),
            sim.grade_grader_ids(),
            grades,
            GOOGLE,
            evidence=sim.evidence_map(),
            owners=sim.owner_map(),
        )
        for g in model.fit(table).graders:
            hist.setdefault(g.grader_id, []).append(
                CyclePoint(cycle=f"c{c}", leniency=g.leniency, std_error=g.std_error)
            )
    ranked = rank_drifting(drift_tests(hist, pooled=pooled))
    flagged = {t.grader_id for t in ranked if t.drifting}
    truth = {ids[i] for i in drifters.tolist()} if size > 0 else set()
    return len(flagged & truth), len(truth), len(flagged - truth), n_graders - len(truth)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--graders", type=int, default=60)
    p.add_argument("--drifters", type=int, default=8)
    p.add_argument("--wobble", type=float, default=0.02, help="SD of leniency between cycles")
    p.add_argument("--sizes", type=float, nargs="+", default=[0.0, 0.05, 0.10, 0.15, 0.20])
    p.add_argument(
        "--own-only",
        action="store_true",
        help="each grader's own between-cycle SD only (no pooled floor)",
    )
    args = p.parse_args(argv)
    started = time.perf_counter()
    lines = [
        "## Grader drift detection (benchmarks/drift.py)",
        "",
        *machine_lines(),
        "",
        f"{args.seeds} seeds × {args.cycles} cycles × {args.graders} graders "
        f"(realistic scenario), {args.drifters} drifters in the latest cycle, "
        f"between-cycle wobble SD {args.wobble}; additive model; FDR 0.05, minimum change 0.05; "
        + (
            "each grader's own between-cycle SD"
            if args.own_only
            else "pooled between-cycle SD floor"
        )
        + ".",
        "",
        "| drift size (0–1 scale) | recall | false-alarm rate | flagged / drifters | false / others |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size in args.sizes:
        hit = tot = fa = neg = 0
        for seed in range(1, args.seeds + 1):
            h, t, f, n = _one(
                seed,
                size,
                args.graders,
                args.cycles,
                args.drifters if size > 0 else 0,
                args.wobble,
                not args.own_only,
            )
            hit, tot, fa, neg = hit + h, tot + t, fa + f, neg + n
        recall = f"{hit / tot:.2f}" if tot else "–"
        lines.append(f"| {size:.2f} | {recall} | {fa / neg:.3f} | {hit} / {tot} | {fa} / {neg} |")
    lines += [
        "",
        f"{time.perf_counter() - started:.0f} s; command: .venv/bin/python benchmarks/drift.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
