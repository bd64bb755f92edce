"""Helpers shared by the benchmark scripts: the machine, simulated tables, small stats."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import scipy

from anchors.scales import parse_scale
from calibrate.simulate import Simulation
from calibrate.table import GradeTable

__all__ = ["DATASETS", "REPO", "kr_means", "machine", "machine_lines", "sim_table"]

REPO = Path(__file__).resolve().parent.parent
#: The shared real rating data; absent on a user's machine, so every use must skip cleanly.
DATASETS = REPO.parent / "shared" / "datasets"

FloatArray = npt.NDArray[np.float64]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _commit() -> str:
    # Figures belong to a version of the engine: name the commit, and say when the
    # engine's files differ from it.
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "calibrate", "service"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes in calibrate/ or service/" if dirty else "")


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "okrcal commit": _commit(),
        "cpu": _cpu_model(),
        "cores": str(len(os.sched_getaffinity(0))),
        "ram": _ram_gib(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        # Other work on the machine slows every timing; the load says how much there was.
        "load average (1, 5, 15 min) at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def machine_lines() -> list[str]:
    """The machine as markdown bullet lines."""
    return [f"- {k}: {v}" for k, v in machine().items()]


def sim_table(sim: Simulation) -> GradeTable:
    """The simulation's grades as a GradeTable on the Google 0–1 scale, with evidence and owners."""
    return GradeTable.from_arrays(
        sim.grade_kr_ids(),
        sim.grade_grader_ids(),
        sim.grade,
        parse_scale("google"),
        evidence=sim.evidence_map(),
        owners=sim.owner_map(),
    )


def kr_means(sim: Simulation) -> FloatArray:
    """Per KR: the raw mean of its grades (the naive estimate)."""
    total = np.bincount(sim.grade_kr, weights=sim.grade, minlength=sim.n_krs)
    count = np.bincount(sim.grade_kr, minlength=sim.n_krs)
    out: FloatArray = total / count
    return out
