"""Speed and memory of the calibration engine, side by side with pyfixest, statsmodels and lme4.

Run from the repository root (peers: ``pip install -e '.[bench]'`` and Debian's
``r-cran-lme4``; a missing peer is reported, not fatal)::

    .venv/bin/python benchmarks/speed.py                 # parts a b c d
    .venv/bin/python benchmarks/speed.py --parts a c --reps 3

Parts
-----
a. The default (additive) model, with standard errors, q-values and flags, on the
   ``large`` simulation (about 1M grades, 330k KRs, 16.5k graders, half the KRs with
   evidence): fit time only (the table is built first), median of ``--reps`` fits in
   one process, and the process's peak RSS while fitting (``VmHWM`` after resetting
   it through ``/proc/self/clear_refs``, so it includes the table held in memory).
   Each repetition fits twice, in turn: ``Model.fit`` (a ``KRScore`` object per KR)
   and ``calibrate.engine.fit_columns`` (the same fit, per-KR results as columns,
   as ``okrcal calibrate`` uses it).
b. The whole ``okrcal calibrate GRADES.csv --out DIR`` job (a fresh process: start-up,
   CSV parsing, fit, writing the outputs) against a pyfixest job on the same CSV
   (read with pandas, ``feols("grade ~ 1 | kr_id + grader_id")``, ``fixef()``, grader
   effects written to CSV). Wall time and max RSS from ``/usr/bin/time -v``; runs
   interleaved, ``--reps`` each, medians, with CPU time (user+sys) and the load average
   beside them. The grades CSV carries no evidence (the peers could not use it); a run
   with ``--krs`` shows the cost of evidence. The okrcal jobs run with ``--timings``,
   and a second table gives their per-phase CPU (and wall) seconds.
c. statsmodels ``MixedLM`` (crossed random effects as variance components of one
   group) and lme4 ``lmer(grade ~ 1 + (1|kr_id) + (1|grader_id))`` by Rscript,
   next to okrcal's additive model, on 1k, 10k and 100k grades of the same design
   (no evidence): fit-only seconds as timed inside each tool, whole-process wall and
   max RSS, and the grader variance each found. One run per size and tool, with a
   ``--timeout``; a tool that times out is not run at larger sizes.
d. The ``huge`` simulation (about 10M grades, 3.3M KRs, 165k graders): simulate,
   build the table and fit once in one process; wall time and peak RSS.

Scratch files go to a temporary directory outside the repository (``--workdir``).
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from _common import REPO, machine_lines, sim_table

from anchors.scales import parse_scale
from calibrate.simulate import Simulation, grade_rows, kr_rows, scenario, simulate_org
from calibrate.table import GradeTable

HERE = Path(__file__).resolve()
PY = sys.executable
OKRCAL = str(Path(PY).with_name("okrcal"))
SEED = 20240601
#: Address-space cap of the ~1M-grade jobs: far above what they need (about 1.5 GB), far
#: below what would push the shared machine into the OOM killer.
MAX_BYTES = 10 * 2**30


# --- measuring ------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0), so the next
    # VmHWM read is the peak of what runs in between.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Run:
    """One timed process."""

    ok: bool
    wall: float | None
    max_rss_kib: int | None
    stdout: str
    note: str = ""
    cpu: float | None = None
    stderr: str = ""


def _parse_time_v(text: str) -> tuple[float | None, int | None, float | None]:
    wall = rss = None
    cpu: float | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("User time (seconds)", "System time (seconds)")):
            cpu = (cpu or 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("Elapsed (wall clock) time"):
            parts = [float(x) for x in line.rsplit(" ", 1)[1].split(":")]
            wall = 0.0
            for p in parts:
                wall = wall * 60 + p
        elif line.startswith("Maximum resident set size"):
            rss = int(line.rsplit(" ", 1)[1])
    return wall, rss, cpu


def timed(
    cmd: Sequence[str], timeout: float, cwd: Path | None = None, max_bytes: int | None = None
) -> Run:
    """Run ``cmd`` under ``/usr/bin/time -v``; kill its whole process group on timeout.

    ``max_bytes`` caps the address space (RLIMIT_AS), so a job that would exhaust the
    machine's memory fails with MemoryError instead of waking the OOM killer, which
    might pick someone else's process.
    """

    def limit() -> None:
        if max_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))

    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = ["/usr/bin/time", "-v", "-o", tf.name, *cmd]
        proc = subprocess.Popen(
            full,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=limit,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Run(False, None, None, "", f"timed out after {timeout:.0f} s")
        wall, rss, cpu = _parse_time_v(Path(tf.name).read_text())
    if proc.returncode != 0:
        tail = (err.strip().splitlines() or ["no message"])[-1]
        return Run(False, wall, rss, out, f"exit {proc.returncode}: {tail[:200]}", cpu, err)
    return Run(True, wall, rss, out, cpu=cpu, stderr=err)


def _json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            out: dict[str, Any] = json.loads(line)
            return out
    return {}


# --- data -------------------------------------------------------------------------


def sized_config(n_grades: int) -> Any:
    """The ``large`` design scaled to about ``n_grades`` grades."""
    large = scenario("large")
    n_graders = max(large.department_size[1], round(large.n_graders * n_grades / 1e6))
    return msgspec.structs.replace(large, name=f"large_{n_grades}", n_graders=n_graders)


def write_csvs(sim: Simulation, folder: Path) -> tuple[Path, Path]:
    """GRADES.csv and KRS.csv of a simulation."""
    folder.mkdir(parents=True, exist_ok=True)
    grades, krs = folder / "grades.csv", folder / "krs.csv"
    with grades.open("w", newline="") as f:
        csv.writer(f).writerows(grade_rows(sim))
    with krs.open("w", newline="") as f:
        csv.writer(f).writerows(kr_rows(sim))
    return grades, krs


def read_grades(path: Path) -> GradeTable:
    """A GRADES.csv (kr_id, grader_id, grade, ...) as a table on the Google scale."""
    with path.open(newline="") as f:
        r = csv.reader(f)
        header = next(r)
        ki, gi, vi = header.index("kr_id"), header.index("grader_id"), header.index("grade")
        kr, gr, val = [], [], []
        for row in r:
            kr.append(row[ki])
            gr.append(row[gi])
            val.append(float(row[vi]))
    return GradeTable.from_arrays(kr, gr, np.asarray(val), parse_scale("google"))


# --- child processes (run by this script in fresh interpreters) -------------------


def child_fit(args: argparse.Namespace) -> int:
    """Build a table (simulation or CSV), then time ``reps`` fits; print one JSON line."""
    from calibrate import model_from_name

    t0 = time.perf_counter()
    if args.csv:
        table = read_grades(Path(args.csv))
        sim_s = 0.0
        build_s = time.perf_counter() - t0
    else:
        cfg = scenario(args.scenario)
        sim = simulate_org(np.random.default_rng(SEED), cfg)
        sim_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        table = sim_table(sim)
        build_s = time.perf_counter() - t1
        del sim
    # The engine module is imported on the first fit; import it now so no fit pays for it.
    importlib.import_module("calibrate.engine")
    gc.collect()
    rss_before = _status_kib("VmRSS")
    reset = _reset_peak()
    from calibrate.engine import fit_columns

    spec = model_from_name(args.model)
    times, cpu, col_times, col_cpu = [], [], [], []
    fit = None
    for _ in range(args.reps):
        # the fit as Model.fit returns it (a KRScore row per KR), then the same fit with
        # the per-KR results as columns (what okrcal calibrate uses), in turn
        fit = None
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        fit = spec.fit(table)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        if args.columns:
            gc.collect()
            t, c = time.perf_counter(), time.process_time()
            fit_columns(spec, table)
            col_times.append(time.perf_counter() - t)
            col_cpu.append(time.process_time() - c)
    assert fit is not None
    flags: dict[str, int] = {}
    for g in fit.graders:
        flags[g.flag] = flags.get(g.flag, 0) + 1
    print(
        json.dumps(
            {
                "n_grades": table.n_grades,
                "n_krs": table.n_krs,
                "n_graders": table.n_graders,
                "n_evidence": int(table.has_evidence.sum()),
                "simulate_s": sim_s,
                "table_s": build_s,
                "fit_s": times,
                "fit_cpu_s": cpu,
                "columns_s": col_times,
                "columns_cpu_s": col_cpu,
                "rss_before_fit_kib": rss_before,
                "peak_rss_fit_kib": _status_kib("VmHWM") if reset else None,
                "peak_rss_process_kib": _status_kib("VmHWM"),
                "graders_with_se": sum(g.std_error is not None for g in fit.graders),
                "graders_with_q": sum(g.q_value is not None for g in fit.graders),
                "flags": flags,
                "var_grader": fit.variance.grader,
                "var_kr": fit.variance.kr,
                "var_residual": fit.variance.residual,
                "converged": fit.converged,
            }
        )
    )
    return 0


def child_pyfixest(args: argparse.Namespace) -> int:
    """Two-way fixed effects with grader-effect recovery: the peer job for part b."""
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]
    import pyfixest as pf

    df = pd.read_csv(args.csv, dtype={"kr_id": str, "grader_id": str, "owner_id": str})
    t = time.perf_counter()
    fit = pf.feols("grade ~ 1 | kr_id + grader_id", data=df)
    effects = fit.fixef()
    fit_s = time.perf_counter() - t
    graders = effects["C(grader_id)"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "graders.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["grader_id", "effect"])
        w.writerows((k, f"{float(v):.6g}") for k, v in graders.items())
    print(json.dumps({"fit_s": fit_s, "n_graders": len(graders)}))
    return 0


def child_mixedlm(args: argparse.Namespace) -> int:
    """statsmodels MixedLM with crossed random effects (variance components of one group)."""
    import warnings

    import pandas as pd  # type: ignore[import-untyped,unused-ignore]
    import statsmodels.formula.api as smf  # type: ignore[import-untyped]

    df = pd.read_csv(args.csv, dtype={"kr_id": str, "grader_id": str})
    df["one"] = 1
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = smf.mixedlm(
            "grade ~ 1",
            df,
            groups="one",
            re_formula="0",
            vc_formula={"kr": "0 + C(kr_id)", "grader": "0 + C(grader_id)"},
        )
        res = model.fit(reml=True)
    fit_s = time.perf_counter() - t
    vc = dict(zip(model.exog_vc.names, np.asarray(res.vcomp).tolist(), strict=True))
    print(
        json.dumps(
            {
                "fit_s": fit_s,
                "var_grader": vc.get("grader"),
                "var_kr": vc.get("kr"),
                "var_residual": float(res.scale),
            }
        )
    )
    return 0


_LMER = """
suppressMessages(library(lme4))
d <- read.csv(commandArgs(TRUE)[1], colClasses = c("character", "character", "numeric", "character"))
t <- system.time(m <- lmer(grade ~ 1 + (1 | kr_id) + (1 | grader_id), data = d, REML = TRUE))
vc <- as.data.frame(VarCorr(m))
cat(sprintf('{"fit_s": %.6f, "var_kr": %.8g, "var_grader": %.8g, "var_residual": %.8g}\\n',
            t[["elapsed"]], vc$vcov[vc$grp == "kr_id"], vc$vcov[vc$grp == "grader_id"],
            vc$vcov[vc$grp == "Residual"]))
"""


# --- parts ----------------------------------------------------------------------------


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.0f} MiB"


def _med(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


def _fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} s"


def part_a(reps: int, timeout: float) -> list[str]:
    """The default model on 1M grades: fit-only time and peak memory."""
    cmd = [PY, str(HERE), "_fit", "--scenario", "large", "--reps", str(reps), "--columns"]
    run = timed(cmd, timeout, max_bytes=MAX_BYTES)
    out = ["### a. Default model on ~1M grades (fit only)", ""]
    if not run.ok:
        return [*out, f"FAILED: {run.note}", *_cross(timeout)]
    r = _json_line(run.stdout)
    fit_s = r["fit_s"]
    med = statistics.median(fit_s)
    col_med = statistics.median(r["columns_s"])
    peak = r["peak_rss_fit_kib"]
    out += [
        f"- data: {r['n_grades']:,} grades, {r['n_krs']:,} KRs, {r['n_graders']:,} graders, "
        f"{r['n_evidence']:,} KRs with evidence (`large` scenario, seed {SEED})",
        f"- fit (additive, SEs, q-values, flags): median {med:.2f} s wall over {len(fit_s)} fits "
        f"({', '.join(f'{x:.2f}' for x in fit_s)} s); CPU time of the process (all threads) "
        f"median {statistics.median(r['fit_cpu_s']):.2f} s",
        f"- the same fit with the per-KR results as columns (`calibrate.engine.fit_columns`, "
        f"what `okrcal calibrate` uses; run in turn with the fits above): median "
        f"{statistics.median(r['columns_s']):.2f} s wall "
        f"({', '.join(f'{x:.2f}' for x in r['columns_s'])} s), CPU median "
        f"{statistics.median(r['columns_cpu_s']):.2f} s",
        f"- graders with a standard error: {r['graders_with_se']:,}; with a q-value: "
        f"{r['graders_with_q']:,}; flags: {r['flags']}",
        f"- table build (GradeTable.from_arrays, not part of the fit): {r['table_s']:.2f} s",
        f"- RSS before the fit: {_mib(r['rss_before_fit_kib'])}; peak RSS while fitting "
        f"(whole process, table included): {_mib(peak)}; process max RSS (time -v): "
        f"{_mib(run.max_rss_kib)}",
        f"- target (<= 2 s compute, <= 2 GB): "
        f"{'PASS' if med <= 2.0 and peak is not None and peak <= 2 * 1024**2 else 'FAIL'} "
        f"with KRScore rows; "
        f"{'PASS' if col_med <= 2.0 and peak is not None and peak <= 2 * 1024**2 else 'FAIL'} "
        "with columns",
        *_cross(timeout),
    ]
    return out


def _cross(timeout: float) -> list[str]:
    # The same organisation with 5% of peers from other departments: every department
    # joins one grader block, the hard case for an engine that factorises per block.
    cmd = [PY, str(HERE), "_fit", "--scenario", "large_cross", "--reps", "1"]
    run = timed(cmd, timeout, max_bytes=MAX_BYTES)
    if not run.ok:
        return [f"- `large_cross` (5% of peers from other departments): {run.note}"]
    r = _json_line(run.stdout)
    return [
        f"- `large_cross` (5% of peers from other departments): {r['n_grades']:,} grades, "
        f"fit {r['fit_s'][0]:.2f} s, peak RSS while fitting {_mib(r['peak_rss_fit_kib'])}"
    ]


def part_b(work: Path, reps: int, timeout: float) -> list[str]:
    """The whole okrcal job against pyfixest on the same CSV."""
    out = ["### b. Whole `okrcal calibrate` job vs pyfixest, same CSV", ""]
    sim = simulate_org(np.random.default_rng(SEED), scenario("large"))
    grades, krs = write_csvs(sim, work / "b")
    size = grades.stat().st_size
    out.append(
        f"- GRADES.csv: {sim.n_grades:,} rows, {size / 2**20:.0f} MiB; KRS.csv with "
        f"{len(sim.evidence_map()):,} metric KRs"
    )
    del sim
    jobs: dict[str, list[str]] = {
        "okrcal calibrate (additive)": [
            OKRCAL,
            "calibrate",
            str(grades),
            "--out",
            str(work / "o1"),
            "--timings",
        ],
        "okrcal calibrate --model fixed": [
            OKRCAL,
            "calibrate",
            str(grades),
            "--model",
            "fixed",
            "--out",
            str(work / "o2"),
            "--timings",
        ],
        "okrcal calibrate --krs (additive, with evidence)": [
            OKRCAL,
            "calibrate",
            str(grades),
            "--krs",
            str(krs),
            "--out",
            str(work / "o3"),
            "--timings",
        ],
        "pyfixest feols + fixef": [PY, str(HERE), "_pyfixest", str(grades), str(work / "pf")],
    }
    runs: dict[str, list[Run]] = {k: [] for k in jobs}
    load_before = os.getloadavg()
    for i in range(reps):
        for name, cmd in jobs.items():
            for d in ("o1", "o2", "o3", "pf"):
                shutil.rmtree(work / d, ignore_errors=True)
            r = timed(cmd, timeout, max_bytes=MAX_BYTES)
            runs[name].append(r)
            print(
                f"  b rep {i + 1}: {name}: {_fmt_s(r.wall)} {r.note}", file=sys.stderr, flush=True
            )
    load = "/".join(f"{x:.2f}" for x in load_before)
    load_after = "/".join(f"{x:.2f}" for x in os.getloadavg())
    out += [
        f"- load average (1/5/15 min) before the runs {load}, after {load_after}: on a "
        "loaded machine compare CPU time, not wall time",
        "",
        "| job | runs ok | median wall | walls | median CPU (user+sys) | median max RSS |",
        "|---|---|---|---|---|---|",
    ]
    med: dict[str, float | None] = {}
    for name, rs in runs.items():
        ok = [r for r in rs if r.ok]
        med[name] = _med([r.wall for r in ok])
        walls = ", ".join(_fmt_s(r.wall) if r.ok else r.note for r in rs)
        rss = _med([float(r.max_rss_kib) for r in ok if r.max_rss_kib is not None])
        cpu = _med([r.cpu for r in ok])
        out.append(
            f"| {name} | {len(ok)}/{len(rs)} | {_fmt_s(med[name])} | {walls} | {_fmt_s(cpu)} | "
            f"{_mib(None if rss is None else int(rss))} |"
        )
    out += _phase_table({k: v for k, v in runs.items() if k.startswith("okrcal")})
    a, p = med["okrcal calibrate (additive)"], med["pyfixest feols + fixef"]
    out.append("")
    if a is not None and p is not None:
        ca = _med([r.cpu for r in runs["okrcal calibrate (additive)"] if r.ok])
        cp = _med([r.cpu for r in runs["pyfixest feols + fixef"] if r.ok])
        by_cpu = f"; by CPU time {cp / ca:.1f}x" if ca and cp else ""
        out.append(
            f"- speed-up of the whole okrcal job over pyfixest: {p / a:.1f}x by median wall "
            f"(target >= 10x: {'PASS' if p / a >= 10 else 'FAIL'}){by_cpu}"
        )
    else:
        out.append("- speed-up: n/a (a job failed; see the table)")
    return out


_TIMINGS = "okrcal calibrate: timings: seconds wall/CPU: "


def _phases(run: Run) -> dict[str, tuple[float | None, float]]:
    """The per-phase (wall, CPU) seconds that ``okrcal calibrate --timings`` printed."""
    for line in run.stderr.splitlines():
        if line.startswith(_TIMINGS):
            out: dict[str, tuple[float | None, float]] = {}
            for part in line[len(_TIMINGS) :].split("; "):
                name, _, figures = part.rpartition(" ")
                wall, cpu = figures.split("/")
                out[name] = (None if wall == "-" else float(wall), float(cpu))
            return out
    return {}


def _phase_table(runs: dict[str, list[Run]]) -> list[str]:
    """Median CPU seconds (and wall) of each phase of the okrcal jobs, as they report them."""
    per_job = {name: [_phases(r) for r in rs if r.ok] for name, rs in runs.items()}
    names: list[str] = []
    for found in per_job.values():
        for phases in found:
            names += [n for n in phases if n not in names]
    if not names:
        return []
    out = [
        "",
        "Phases of the okrcal jobs (`--timings`; median CPU s, wall s in brackets; start-up "
        "is the CPU of interpreter start and imports):",
        "",
        "| job | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for job, found in per_job.items():
        cells = []
        for n in names:
            cpu = _med([p[n][1] for p in found if n in p])
            wall = _med([p[n][0] for p in found if n in p])
            cells.append(
                "" if cpu is None else f"{cpu:.2f}" + ("" if wall is None else f" ({wall:.2f})")
            )
        out.append(f"| {job} | " + " | ".join(cells) + " |")
    return out


def part_c(work: Path, sizes: Sequence[int], timeout: float) -> list[str]:
    """okrcal, lme4 and statsmodels MixedLM at growing sizes."""
    out = ["### c. okrcal vs lme4 vs statsmodels MixedLM (no evidence, fit only)", ""]
    have_r = (
        shutil.which("Rscript") is not None
        and subprocess.run(
            ["Rscript", "-e", "library(lme4)"], capture_output=True, check=False
        ).returncode
        == 0
    )
    rfile = work / "lmer.R"
    rfile.write_text(_LMER)
    tools: dict[str, Any] = {
        "okrcal additive": lambda csv_: [PY, str(HERE), "_fit", "--csv", str(csv_), "--reps", "1"],
        "lme4 lmer (REML)": (lambda csv_: ["Rscript", str(rfile), str(csv_)]) if have_r else None,
        "statsmodels MixedLM (REML)": lambda csv_: [PY, str(HERE), "_mixedlm", str(csv_)],
    }
    dead: dict[str, str] = {
        k: "Rscript with lme4 not installed" for k, v in tools.items() if v is None
    }
    out += [
        "| grades | KRs | graders | tool | fit s (inside tool) | process wall | max RSS | var grader | var KR | var residual |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        sim = simulate_org(np.random.default_rng(SEED), sized_config(n))
        grades, _ = write_csvs(sim, work / f"c{n}")
        dims = f"{sim.n_grades:,} | {sim.n_krs:,} | {sim.n_graders:,}"
        for name, make in tools.items():
            if name in dead:
                out.append(f"| {dims} | {name} | not run: {dead[name]} | | | | | |")
                continue
            r = timed(make(grades), timeout)
            print(f"  c {n}: {name}: {_fmt_s(r.wall)} {r.note}", file=sys.stderr, flush=True)
            if not r.ok:
                dead[name] = f"{r.note} at {n:,} grades"
                out.append(f"| {dims} | {name} | {r.note} | | | | | |")
                continue
            j = _json_line(r.stdout)
            fit_s = j["fit_s"][0] if isinstance(j["fit_s"], list) else j["fit_s"]
            out.append(
                f"| {dims} | {name} | {fit_s:.3f} | {_fmt_s(r.wall)} | {_mib(r.max_rss_kib)} | "
                + " | ".join(
                    f"{j[k]:.5g}" if j.get(k) is not None else "n/a"
                    for k in ("var_grader", "var_kr", "var_residual")
                )
                + " |"
            )
    return out


def part_d(timeout: float, max_gib: float) -> list[str]:
    """10M grades: simulate, build, fit once; peak RSS."""
    out = ["### d. ~10M grades (`huge` scenario)", ""]
    cmd = [PY, str(HERE), "_fit", "--scenario", "huge", "--reps", "1"]
    run = timed(cmd, timeout, max_bytes=int(max_gib * 2**30))
    out.append(f"- address space capped at {max_gib:g} GiB (RLIMIT_AS)")
    if not run.ok:
        return [*out, f"FAILED: {run.note} (process max RSS {_mib(run.max_rss_kib)})"]
    r = _json_line(run.stdout)
    return [
        *out,
        f"- data: {r['n_grades']:,} grades, {r['n_krs']:,} KRs, {r['n_graders']:,} graders, "
        f"{r['n_evidence']:,} with evidence",
        f"- simulate {r['simulate_s']:.1f} s, build table {r['table_s']:.1f} s, fit "
        f"{r['fit_s'][0]:.1f} s (CPU {r['fit_cpu_s'][0]:.1f} s); whole process {_fmt_s(run.wall)}",
        f"- peak RSS while fitting {_mib(r['peak_rss_fit_kib'])}; process max RSS (time -v) "
        f"{_mib(run.max_rss_kib)}; machine RAM in the header above",
        f"- flags: {r['flags']}; converged: {r['converged']}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected parts and print a markdown report to stdout."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = p.add_subparsers(dest="child")
    f = sub.add_parser("_fit")
    f.add_argument("--scenario", default="large")
    f.add_argument("--csv", default="")
    f.add_argument("--model", default="additive")
    f.add_argument("--reps", type=int, default=3)
    f.add_argument("--columns", action="store_true", help="also time fit_columns, in turn")
    for name in ("_pyfixest", "_mixedlm"):
        c = sub.add_parser(name)
        c.add_argument("csv")
        if name == "_pyfixest":
            c.add_argument("out")
    p.add_argument("--parts", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    p.add_argument("--reps", type=int, default=3, help="repetitions in parts a and b (default 3)")
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per process (default 600)")
    p.add_argument(
        "--max-gib", type=float, default=16.0, help="address-space cap of part d (default 16)"
    )
    p.add_argument("--workdir", default="", help="scratch directory (default: a new temporary one)")
    args = p.parse_args(argv)
    if args.child == "_fit":
        return child_fit(args)
    if args.child == "_pyfixest":
        return child_pyfixest(args)
    if args.child == "_mixedlm":
        return child_mixedlm(args)

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="okrcal-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    if REPO in work.resolve().parents:
        p.error("--workdir must be outside the repository")
    print("## Speed\n")
    print(f"command: `{' '.join(['benchmarks/speed.py', *sys.argv[1:]])}`\n")
    print(*machine_lines(), sep="\n")
    print(f"- BLAS/OpenMP threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    try:
        for part in args.parts:
            t = time.perf_counter()
            if part == "a":
                lines = part_a(args.reps, args.timeout)
            elif part == "b":
                lines = part_b(work, args.reps, args.timeout)
            elif part == "c":
                lines = part_c(work, args.sizes, args.timeout)
            else:
                lines = part_d(args.timeout, args.max_gib)
            print(*lines, sep="\n")
            print(f"\n(part {part}: {time.perf_counter() - t:.0f} s)\n", flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
