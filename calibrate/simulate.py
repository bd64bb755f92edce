"""Seeded simulation of an organisation's OKR grading, with the truth kept.

Used by the recovery tests and the accuracy and speed benchmarks: the
simulation knows every KR's true achievement and every grader's true
leniency and scale, so a calibration can be scored against them.

The organisation
----------------
* Graders are managers, split into departments of ``department_size`` managers.
* Each manager has ``reports`` direct reports; each report owns ``krs_per_owner``
  KRs. The owner's manager grades every one of those KRs.
* A share ``second_grader_share`` of KRs also gets ``extra_graders`` more grades
  from other managers of the same department (calibration pre-reads), or, with
  probability ``cross_department_share`` per extra grader, from anywhere.
* True achievement on the 0–1 scale is Beta distributed (default mean 0.62,
  SD 0.20), plus an optional shared shift per team (``team_effect_sd``) so that
  some teams really do better than others; clipped to [0, 1].
* A share ``evidence_share`` of KRs has evidence (a metric with baseline, target
  and actual): true achievement + N(0, ``evidence_sd``), clipped to [0, 1].
* A share ``affected_share`` of graders is affected: lenient (+U(0.08, 0.25)),
  severe (−U(0.08, 0.25)) or compressing (grade = m + s·(truth − m), s ~ U(0.4,
  0.6), m the organisation's mean achievement). The rest are ``ok`` with a tiny
  leniency N(0, ``ok_leniency_sd``). Every grader adds noise N(0, σ) per grade,
  σ ~ U(0.05, 0.07).
* Grades are rounded to ``grid`` (0.05) and clipped to [0, 1].

>>> import numpy as np
>>> sim = simulate_org(np.random.default_rng(1), scenario("small_team"))
>>> sim.n_graders, bool(np.all((sim.grade >= 0) & (sim.grade <= 1)))
(12, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = [
    "GRADER_TYPES",
    "SCENARIOS",
    "GraderType",
    "SimConfig",
    "Simulation",
    "grade_rows",
    "kr_rows",
    "scenario",
    "simulate_org",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

GraderType = Literal["ok", "lenient", "severe", "compressing"]
#: Grader types, in the order of :attr:`Simulation.grader_type_code`.
GRADER_TYPES: tuple[GraderType, ...] = ("ok", "lenient", "severe", "compressing")


def _check_range(name: str, pair: tuple[float, float], low: float, high: float) -> None:
    a, b = pair
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {pair}")


def _check_share(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


class SimConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Parameters of a simulated organisation (see the module docstring).

    Ranges are inclusive ``(min, max)``; integer ranges are drawn uniformly.
    """

    name: str = "realistic"
    #: Number of graders (managers).
    n_graders: int = 150
    #: Managers per department.
    department_size: tuple[int, int] = (8, 20)
    #: Direct reports per manager.
    reports: tuple[int, int] = (6, 10)
    #: KRs per report.
    krs_per_owner: tuple[int, int] = (3, 5)
    #: Share of KRs that also get graded by other managers.
    second_grader_share: float = 0.20
    #: How many more graders such a KR gets.
    extra_graders: int = 1
    #: Chance that an extra grader comes from any department rather than the owner's.
    cross_department_share: float = 0.0
    #: Share of KRs with an evidence grade.
    evidence_share: float = 0.5
    #: Noise of the evidence grade around the true achievement.
    evidence_sd: float = 0.08
    #: Mean and SD of the Beta distribution of true achievement.
    achievement_mean: float = 0.62
    achievement_sd: float = 0.20
    #: SD of a true achievement shift shared by all KRs of one manager's team.
    team_effect_sd: float = 0.0
    #: Share of graders who are lenient, severe or compressing.
    affected_share: float = 0.38
    #: Relative weights of lenient, severe and compressing among affected graders.
    type_weights: tuple[float, float, float] = (0.45, 0.25, 0.30)
    #: |leniency| of lenient and severe graders.
    leniency_range: tuple[float, float] = (0.08, 0.25)
    #: Scale of compressing graders (1 = no compression).
    compression_range: tuple[float, float] = (0.4, 0.6)
    #: SD of the leniency of ``ok`` graders (tiny, or zero).
    ok_leniency_sd: float = 0.01
    #: Per-grader noise SD of a grade.
    noise_range: tuple[float, float] = (0.05, 0.07)
    #: Grades are rounded to multiples of this; 0 keeps them unrounded.
    grid: float = 0.05

    def __post_init__(self) -> None:
        if self.n_graders < 2:
            raise ValueError(f"n_graders must be at least 2, got {self.n_graders}")
        _check_range("department_size", self.department_size, 2, 10**6)
        _check_range("reports", self.reports, 1, 10**4)
        _check_range("krs_per_owner", self.krs_per_owner, 1, 10**4)
        for name in (
            "second_grader_share",
            "cross_department_share",
            "evidence_share",
            "affected_share",
        ):
            _check_share(name, getattr(self, name))
        if self.extra_graders < 1 or self.extra_graders >= self.department_size[0]:
            raise ValueError(
                "extra_graders must be at least 1 and below the smallest department, "
                f"got {self.extra_graders}"
            )
        if not 0.0 < self.achievement_mean < 1.0:
            raise ValueError(f"achievement_mean must be in (0, 1), got {self.achievement_mean}")
        var_max = self.achievement_mean * (1.0 - self.achievement_mean)
        if not 0.0 < self.achievement_sd**2 < var_max:
            raise ValueError(
                f"achievement_sd must be in (0, {var_max**0.5:.3f}) for a Beta with this mean, "
                f"got {self.achievement_sd}"
            )
        for name in ("evidence_sd", "team_effect_sd", "ok_leniency_sd", "grid"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if len(self.type_weights) != 3 or min(self.type_weights) < 0 or sum(self.type_weights) <= 0:
            raise ValueError(
                f"type_weights must be three non-negative weights, got {self.type_weights}"
            )
        _check_range("leniency_range", self.leniency_range, 0.0, 1.0)
        _check_range("compression_range", self.compression_range, 0.0, 10.0)
        _check_range("noise_range", self.noise_range, 0.0, 1.0)


def _large(name: str, n_graders: int, cross: float = 0.0) -> SimConfig:
    # About 20 KRs per manager, each graded three times (the manager plus two
    # peers from the same department by default): 16,500 graders give about
    # 330k KRs and 1M grades. Departments then share no grader and are linked
    # to each other only through the evidence; ``cross`` > 0 links them directly.
    return SimConfig(
        name=name,
        n_graders=n_graders,
        reports=(4, 6),
        krs_per_owner=(3, 5),
        second_grader_share=1.0,
        extra_graders=2,
        cross_department_share=cross,
    )


#: Named scenarios: the benchmark's settings, each a documented deviation from the defaults.
SCENARIOS: dict[str, SimConfig] = {
    "realistic": SimConfig(),
    "no_effects": SimConfig(name="no_effects", affected_share=0.0, ok_leniency_sd=0.0),
    "no_evidence_30pct_double": SimConfig(
        name="no_evidence_30pct_double", evidence_share=0.0, second_grader_share=0.30
    ),
    "compression_heavy": SimConfig(
        name="compression_heavy", affected_share=0.45, type_weights=(0.15, 0.15, 0.70)
    ),
    "small_team": SimConfig(name="small_team", n_graders=12, department_size=(12, 12)),
    # Teams that really differ in achievement: the confound a leniency model must not
    # mistake for leniency (evidence and second graders see the same shift).
    "team_differences": SimConfig(name="team_differences", team_effect_sd=0.06),
    "large": _large("large", 16_500),
    "huge": _large("huge", 165_000),
    # Peers from other departments join every department into one grader block.
    "large_cross": _large("large_cross", 16_500, cross=0.05),
}


def scenario(name: str) -> SimConfig:
    """The named scenario's configuration.

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.
    """
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(
            f"unknown scenario {name!r}: use one of {', '.join(sorted(SCENARIOS))}"
        ) from None


@dataclass(frozen=True, eq=False)
class Simulation:
    """A simulated organisation's grades and the truth behind them.

    Ids are zero-padded (``k0000042``, ``g00017``, ``o00311``) so that sorting them
    keeps index order. All grades and truths are on Google's 0–1 scale.
    """

    config: SimConfig
    kr_ids: tuple[str, ...]
    grader_ids: tuple[str, ...]
    owner_ids: tuple[str, ...]
    #: Per grader: department index.
    grader_department: IntArray
    #: Per owner: index of their manager (a grader).
    owner_manager: IntArray
    #: Per KR: index of its owner.
    kr_owner: IntArray
    #: Per grade: KR index, grader index and the grade.
    grade_kr: IntArray
    grade_grader: IntArray
    grade: FloatArray
    #: Per KR: evidence grade, NaN where the KR has none.
    evidence: FloatArray
    #: Per KR: true achievement.
    true_achievement: FloatArray
    #: Per grader: true leniency, true scale, noise SD and type (index into GRADER_TYPES).
    true_leniency: FloatArray
    true_scale: FloatArray
    noise_sd: FloatArray
    grader_type_code: IntArray
    #: The organisation's mean true achievement: the centre compressing graders pull to.
    org_mean: float
    #: Per grade: the grade before rounding and clipping. Per KR: the evidence grade before
    #: clipping (NaN without evidence). Only an oracle sees these (the Bayes bound).
    latent_grade: FloatArray
    latent_evidence: FloatArray
    #: Per grader: the true-achievement shift of the team they manage (0 without team effects).
    team_shift: FloatArray

    @property
    def n_grades(self) -> int:
        return int(self.grade.shape[0])

    @property
    def n_krs(self) -> int:
        return len(self.kr_ids)

    @property
    def n_graders(self) -> int:
        return len(self.grader_ids)

    @property
    def grader_types(self) -> tuple[GraderType, ...]:
        """Per grader: ``ok``, ``lenient``, ``severe`` or ``compressing``."""
        return tuple(GRADER_TYPES[int(c)] for c in self.grader_type_code)

    def grade_kr_ids(self) -> list[str]:
        """Per grade: the KR id (the ``kr_ids`` argument of ``GradeTable.from_arrays``)."""
        ids = self.kr_ids
        return [ids[i] for i in self.grade_kr.tolist()]

    def grade_grader_ids(self) -> list[str]:
        """Per grade: the grader id."""
        ids = self.grader_ids
        return [ids[i] for i in self.grade_grader.tolist()]

    def evidence_map(self) -> dict[str, float]:
        """Evidence grade by KR id, for the KRs that have evidence."""
        idx = np.flatnonzero(np.isfinite(self.evidence))
        return {self.kr_ids[i]: float(self.evidence[i]) for i in idx.tolist()}

    def owner_map(self) -> dict[str, str]:
        """Owner id by KR id."""
        owners = self.owner_ids
        return {k: owners[o] for k, o in zip(self.kr_ids, self.kr_owner.tolist(), strict=True)}

    def realised_leniency(self) -> FloatArray:
        """Per grader: mean of (grade − true achievement) over their grades.

        Differs from :attr:`true_leniency` through noise, rounding, clipping at 0 and
        1, and, for compressing graders, the mix of KRs they happened to grade.
        """
        diff = self.grade - self.true_achievement[self.grade_kr]
        total = np.bincount(self.grade_grader, weights=diff, minlength=self.n_graders)
        count = np.bincount(self.grade_grader, minlength=self.n_graders)
        out: FloatArray = total / np.maximum(count, 1)
        return out


def _departments(rng: np.random.Generator, n: int, size: tuple[int, int]) -> IntArray:
    lo, hi = size
    sizes = rng.integers(lo, hi + 1, size=n // lo + 1)
    ends = np.cumsum(sizes)
    k = int(np.searchsorted(ends, n))  # department k holds grader n-1
    sizes = sizes[: k + 1].copy()
    sizes[k] -= int(ends[k]) - n
    # A remainder too small to be a department joins the one before it.
    if k > 0 and sizes[k] < lo:
        sizes[k - 1] += sizes[k]
        sizes = sizes[:k]
    return np.repeat(np.arange(sizes.shape[0], dtype=np.int64), sizes)


def _extra_graders(
    rng: np.random.Generator,
    config: SimConfig,
    manager: IntArray,
    department: IntArray,
) -> IntArray:
    """For each KR in ``manager``: ``extra_graders`` distinct other graders, shape (n, k)."""
    n_graders = department.shape[0]
    dept_start = np.searchsorted(department, np.arange(department.max() + 1))
    dept_size = np.bincount(department)
    d = department[manager]
    start, size = dept_start[d], dept_size[d]
    pos = manager - start
    k = config.extra_graders
    # Distinct offsets in 1..size-1 from the manager's position: draw each from a
    # shrinking range and step over the ones already taken (sorted insertion).
    offsets = np.empty((manager.shape[0], k), dtype=np.int64)
    for j in range(k):
        o = rng.integers(1, size - j)
        taken = np.sort(offsets[:, :j], axis=1)
        for t in range(j):
            o = o + (o >= taken[:, t])
        offsets[:, j] = o
    out = start[:, None] + (pos[:, None] + offsets) % size[:, None]
    if config.cross_department_share > 0.0:
        draws = rng.random(size=(out.shape[0], out.shape[1]))
        cross = draws < config.cross_department_share
        out[cross] = rng.integers(0, n_graders, size=int(cross.sum()))
        # Redraw the cross-department picks that hit the manager or another pick.
        while True:
            both = np.concatenate([manager[:, None], out], axis=1)
            srt = np.sort(both, axis=1)
            dup_row = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
            redo = cross & dup_row[:, None]
            if not redo.any():
                break
            out[redo] = rng.integers(0, n_graders, size=int(redo.sum()))
    return out


def _round_to_grid(x: FloatArray, grid: float) -> FloatArray:
    if grid > 0.0:
        # The second rounding removes binary noise such as 0.15000000000000002.
        x = np.round(np.round(x / grid) * grid, 10)
    out: FloatArray = np.clip(x, 0.0, 1.0)
    return out


def simulate_org(rng: np.random.Generator, config: SimConfig | None = None) -> Simulation:
    """Simulate one organisation's grading cycle.

    Parameters
    ----------
    rng
        The only source of randomness; the same seed and config give identical output.
    config
        The organisation; the ``realistic`` scenario when omitted.

    Returns
    -------
    Simulation
        The grades, evidence and owners (what ``GradeTable.from_arrays`` takes) and
        the truth: achievement per KR, leniency, scale and type per grader.

    Examples
    --------
    >>> import numpy as np
    >>> a = simulate_org(np.random.default_rng(7), scenario("small_team"))
    >>> b = simulate_org(np.random.default_rng(7), scenario("small_team"))
    >>> bool(np.array_equal(a.grade, b.grade))
    True
    """
    cfg = config if config is not None else SimConfig()
    n_g = cfg.n_graders
    department = _departments(rng, n_g, cfg.department_size)

    # Organisation chart: graders -> reports (owners) -> KRs.
    n_reports = rng.integers(cfg.reports[0], cfg.reports[1] + 1, size=n_g)
    owner_manager = np.repeat(np.arange(n_g, dtype=np.int64), n_reports)
    n_owners = owner_manager.shape[0]
    n_krs_each = rng.integers(cfg.krs_per_owner[0], cfg.krs_per_owner[1] + 1, size=n_owners)
    kr_owner = np.repeat(np.arange(n_owners, dtype=np.int64), n_krs_each)
    n_krs = kr_owner.shape[0]
    kr_manager = owner_manager[kr_owner]

    # True achievement: Beta with the configured mean and SD, plus a team shift.
    m, sd = cfg.achievement_mean, cfg.achievement_sd
    concentration = m * (1.0 - m) / sd**2 - 1.0
    truth = rng.beta(m * concentration, (1.0 - m) * concentration, size=n_krs)
    team = rng.normal(0.0, cfg.team_effect_sd, size=n_g) if cfg.team_effect_sd > 0 else None
    if team is not None:
        truth = np.clip(truth + team[kr_manager], 0.0, 1.0)
    org_mean = float(truth.mean())

    # Grader types and effects.
    w = np.asarray(cfg.type_weights, dtype=np.float64)
    probs = np.concatenate([[1.0 - cfg.affected_share], cfg.affected_share * w / w.sum()])
    type_code = rng.choice(4, size=n_g, p=probs).astype(np.int64)
    magnitude = rng.uniform(cfg.leniency_range[0], cfg.leniency_range[1], size=n_g)
    ok_len = rng.normal(0.0, cfg.ok_leniency_sd, size=n_g) if cfg.ok_leniency_sd > 0 else 0.0
    leniency = np.where(type_code == 1, magnitude, np.where(type_code == 2, -magnitude, 0.0))
    leniency = np.where(type_code == 0, ok_len, leniency)
    comp = rng.uniform(cfg.compression_range[0], cfg.compression_range[1], size=n_g)
    scale = np.where(type_code == 3, comp, 1.0)
    noise_sd = rng.uniform(cfg.noise_range[0], cfg.noise_range[1], size=n_g)

    # Who grades what: the owner's manager always, some KRs also by peers.
    twice = np.flatnonzero(rng.random(n_krs) < cfg.second_grader_share)
    extra = _extra_graders(rng, cfg, kr_manager[twice], department)
    g_kr = np.concatenate([np.arange(n_krs, dtype=np.int64), np.repeat(twice, cfg.extra_graders)])
    g_gr = np.concatenate([kr_manager, extra.reshape(-1)])
    order = np.lexsort((g_gr, g_kr))
    g_kr, g_gr = g_kr[order], g_gr[order]

    t = truth[g_kr]
    latent = (
        org_mean
        + scale[g_gr] * (t - org_mean)
        + leniency[g_gr]
        + rng.normal(0.0, 1.0, size=g_kr.shape[0]) * noise_sd[g_gr]
    )
    grade = _round_to_grid(latent, cfg.grid)

    has_ev = rng.random(n_krs) < cfg.evidence_share
    ev_noise = rng.normal(0.0, cfg.evidence_sd, size=n_krs)
    latent_ev = np.where(has_ev, truth + ev_noise, np.nan)
    evidence = np.clip(latent_ev, 0.0, 1.0)  # NaN stays NaN

    kw, gw, ow = len(str(n_krs)), len(str(n_g)), len(str(n_owners))
    return Simulation(
        config=cfg,
        kr_ids=tuple(f"k{i:0{kw}d}" for i in range(n_krs)),
        grader_ids=tuple(f"g{i:0{gw}d}" for i in range(n_g)),
        owner_ids=tuple(f"o{i:0{ow}d}" for i in range(n_owners)),
        grader_department=department,
        owner_manager=owner_manager,
        kr_owner=kr_owner,
        grade_kr=g_kr,
        grade_grader=g_gr,
        grade=grade,
        evidence=evidence,
        true_achievement=truth,
        true_leniency=np.asarray(leniency, dtype=np.float64),
        true_scale=np.asarray(scale, dtype=np.float64),
        noise_sd=noise_sd,
        grader_type_code=type_code,
        org_mean=org_mean,
        latent_grade=latent,
        latent_evidence=latent_ev,
        team_shift=np.zeros(n_g) if team is None else team,
    )


def grade_rows(sim: Simulation) -> Iterator[tuple[str, str, str, str]]:
    """GRADES.csv rows for ``okrcal calibrate``: a header, then one row per grade.

    Columns ``kr_id, grader_id, grade, owner_id``; grades printed exactly (``0.65``).
    """
    yield ("kr_id", "grader_id", "grade", "owner_id")
    kr_ids, gr_ids, owners = sim.kr_ids, sim.grader_ids, sim.owner_ids
    kr_owner = sim.kr_owner.tolist()
    for k, g, v in zip(
        sim.grade_kr.tolist(), sim.grade_grader.tolist(), sim.grade.tolist(), strict=True
    ):
        yield (kr_ids[k], gr_ids[g], f"{v:.10g}", owners[kr_owner[k]])


def kr_rows(sim: Simulation) -> Iterator[tuple[str, str, str, str, str, str]]:
    """KRS.csv rows: a header, then one row per KR.

    A KR with evidence is written as a ``metric`` KR with baseline 0, target 1 and
    the evidence grade as its actual, so the anchors give back exactly that grade;
    a KR without evidence has an empty ``kr_type`` and no numbers.
    """
    yield ("kr_id", "owner_id", "kr_type", "baseline", "target", "actual")
    owners, kr_owner = sim.owner_ids, sim.kr_owner.tolist()
    for i, (k, e) in enumerate(zip(sim.kr_ids, sim.evidence.tolist(), strict=True)):
        if np.isfinite(e):
            yield (k, owners[kr_owner[i]], "metric", "0", "1", f"{e:.10g}")
        else:
            yield (k, owners[kr_owner[i]], "", "", "", "")
