"""The figures of the web pages, drawn with matplotlib (Agg, no display) from result structs.

Each function takes the core's result structs and returns a :class:`~matplotlib.figure.Figure`;
:func:`render` turns one into PNG or SVG bytes. Figures are built with the object API
(never pyplot), so two requests rendering in two threads share no state.

SVG text stays text (``svg.fonttype = none``): the labels of an inline plot can be read,
searched and selected in the page. Artists that a reader or a test needs to find carry
an SVG id (``set_gid``): ``flagged-<id>`` for each flagged grader on the caterpillar plot.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import matplotlib

# Agg before anything imports a backend: the service has no display.
matplotlib.use("Agg")
# Text in SVG output as <text>, not glyph outlines (searchable, smaller, accessible).
matplotlib.rcParams["svg.fonttype"] = "none"
# No timestamp in the SVG, so one figure always renders to the same bytes.
matplotlib.rcParams["svg.hashsalt"] = "okrcal"

from matplotlib.axes import Axes  # noqa: E402 - after use("Agg")
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from anchors import Scale  # noqa: E402
from calibrate import GraderEffect, KRScore, VarianceComponents  # noqa: E402
from calibrate.drift import CyclePoint  # noqa: E402

__all__ = [
    "FLAG_COLOURS",
    "LABEL_ALL",
    "MAX_CATERPILLAR",
    "PlotFormat",
    "caterpillar_figure",
    "distribution_figure",
    "drift_figure",
    "grader_gid",
    "kr_figure",
    "render",
    "variance_figure",
]

PlotFormat = Literal["png", "svg"]

#: Marker colours by grader flag (colour-blind safe: vermilion, blue, purple, grey).
FLAG_COLOURS: Mapping[str, str] = {
    "lenient": "#d55e00",
    "severe": "#0072b2",
    "compressing": "#cc79a7",
    "expanding": "#cc79a7",
    "ok": "#333333",
    "insufficient_data": "#aaaaaa",
}
_FLAGGED = ("lenient", "severe", "compressing", "expanding")
_RAW = "#999999"
_CAL = "#0072b2"
_EVIDENCE = "#009e73"
#: More graders than this and the caterpillar keeps the most extreme ones (a taller plot
#: stops being readable at any width).
MAX_CATERPILLAR = 2000
#: Up to this many graders every one is named on the plot; beyond, only the flagged ones.
LABEL_ALL = 60
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


def grader_gid(grader_id: str, flagged: bool) -> str:
    """The SVG id of a grader's mark: ``flagged-ann`` (or ``grader-bob`` where drawn alone).

    Ids with characters that are not safe in an SVG id are written as hex, prefixed ``x``.
    """
    slug = grader_id if _SAFE_ID.match(grader_id) else "x" + grader_id.encode().hex()
    return f"{'flagged' if flagged else 'grader'}-{slug}"


def _label(text: str) -> str:
    """User text (ids) as a literal label: a ``$`` would otherwise start mathtext."""
    return text.replace("$", r"\$")


def render(fig: Figure, fmt: PlotFormat) -> bytes:
    """The figure as PNG (100 dpi) or SVG bytes."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    if fmt == "svg":
        fig.savefig(buf, format="svg", metadata={"Date": None})
    else:
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _levels(ax: Axes, scale: Scale, *, vertical: bool) -> None:
    for point in scale.levels[1:-1]:
        if vertical:
            ax.axvline(point, color="#bbbbbb", linestyle=":", linewidth=1, zorder=0)
        else:
            ax.axhline(point, color="#bbbbbb", linestyle=":", linewidth=1, zorder=0)


def distribution_figure(krs: Sequence[KRScore], scale: Scale) -> Figure:
    """Histogram of raw against calibrated KR grades, with the anchor level boundaries."""
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    raw = [k.raw_grade for k in krs]
    cal = [k.calibrated_grade for k in krs if k.calibrated_grade is not None]
    bins = [scale.low + scale.span * i / 20 for i in range(21)]
    ax.hist(raw, bins=bins, color=_RAW, alpha=0.55, label=f"raw (mean of graders), n={len(raw)}")
    ax.hist(
        cal,
        bins=bins,
        histtype="step",
        linewidth=2,
        color=_CAL,
        label=f"calibrated, n={len(cal)}",
    )
    _levels(ax, scale, vertical=True)
    ax.set_xlim(scale.low, scale.high)
    ax.set_xlabel(f"KR grade ({scale.name} scale; dotted: anchor level boundaries)")
    ax.set_ylabel("KRs")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, frameon=False, fontsize=9)
    ax.set_title("Raw against calibrated KR grades", fontsize=11)
    return fig


def variance_figure(variance: VarianceComponents) -> Figure:
    """Share of grade variance due to KRs, graders and residual noise (one stacked bar)."""
    fig = _figure(7.0, 1.8)
    ax = fig.add_subplot()
    parts = [("KRs", variance.kr, "#56b4e9"), ("graders", variance.grader, "#d55e00")]
    parts.append(("residual", variance.residual, "#cccccc"))
    known = [(n, v, c) for n, v, c in parts if v is not None and v >= 0]
    total = sum(v for _, v, _ in known)
    if total <= 0:
        ax.text(0.5, 0.5, variance.reason or "no variance estimate", ha="center", va="center")
        ax.set_axis_off()
        return fig
    left = 0.0
    for name, value, colour in known:
        share = value / total
        ax.barh([0], [share], left=left, color=colour, edgecolor="white", label=name)
        if share >= 0.08:
            ax.text(left + share / 2, 0, f"{name}\n{100 * share:.0f}%", ha="center", va="center")
        left += share
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, frameon=False, fontsize=9)
    ax.set_title(f"Variance shares ({variance.method})", fontsize=11)
    return fig


def caterpillar_figure(graders: Sequence[GraderEffect], scale: Scale, confidence: float) -> Figure:
    """Graders' leniency with intervals, sorted; flagged graders coloured and labelled in bold.

    Graders without an estimate are left out (the table lists them with the reason).
    """
    rows = [g for g in graders if g.leniency is not None]
    note = ""
    if len(rows) > MAX_CATERPILLAR:
        rows = sorted(rows, key=lambda g: -abs(g.leniency or 0.0))[:MAX_CATERPILLAR]
        note = f" ({MAX_CATERPILLAR} most extreme of {len(graders)})"
    rows.sort(key=lambda g: (g.leniency or 0.0, g.grader_id))
    labelled = len(rows) <= LABEL_ALL
    fig = _figure(7.0, max(2.4, 0.26 * len(rows) + 1.3) if labelled else 8.0)
    ax = fig.add_subplot()
    if not rows:
        ax.text(0.5, 0.5, "no grader leniency could be estimated", ha="center", va="center")
        ax.set_axis_off()
        return fig
    # Unflagged graders go in one collection per flag (one SVG group, fast with hundreds of
    # graders); each flagged grader is its own artist with an SVG id a reader can find.
    by_flag: dict[str, list[int]] = {}
    for y, g in enumerate(rows):
        if g.flag in _FLAGGED:
            _flagged_mark(ax, g, y)
        else:
            by_flag.setdefault(g.flag, []).append(y)
    for flag, ys in by_flag.items():
        colour = FLAG_COLOURS.get(flag, "#333333")
        lows = [_low(rows[y]) for y in ys]
        highs = [_high(rows[y]) for y in ys]
        ax.hlines(ys, lows, highs, colors=colour, linewidth=1.4).set_gid(f"graders-{flag}")
        ax.plot([rows[y].leniency or 0.0 for y in ys], ys, "o", markersize=5, color=colour)[
            0
        ].set_gid(f"graders-{flag}-points")
    ax.axvline(0.0, color="#666666", linewidth=1, zorder=0)
    # With many graders only the flagged ones are named (the table names everyone).
    ticks = [y for y, g in enumerate(rows) if labelled or g.flag in _FLAGGED]
    ax.set_yticks(ticks)
    labels = ax.set_yticklabels(
        [_label(rows[y].grader_id) for y in ticks], fontsize=8 if labelled else 6
    )
    for label, y in zip(labels, ticks, strict=True):
        if rows[y].flag in _FLAGGED:
            label.set_color(FLAG_COLOURS[rows[y].flag])
            label.set_fontweight("bold")
    if not labelled:
        ax.set_ylabel(f"{len(rows)} graders, sorted (flagged ones named)")
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(
        f"leniency ({scale.name} scale units; + grades above the evidence), "
        f"{100 * confidence:.0f}% intervals"
    )
    ax.set_title(f"Grader leniency{note}", fontsize=11)
    return fig


def _low(g: GraderEffect) -> float:
    return g.ci_low if g.ci_low is not None else g.leniency or 0.0


def _high(g: GraderEffect) -> float:
    return g.ci_high if g.ci_high is not None else g.leniency or 0.0


def _flagged_mark(ax: Axes, g: GraderEffect, y: int) -> None:
    colour = FLAG_COLOURS[g.flag]
    gid = grader_gid(g.grader_id, True)
    ax.plot([_low(g), _high(g)], [y, y], color=colour, linewidth=2.2)[0].set_gid(f"{gid}-interval")
    ax.plot([g.leniency or 0.0], [y], "D", markersize=7, color=colour)[0].set_gid(gid)


def kr_figure(
    grades: Sequence[tuple[str, float]],
    score: KRScore | None,
    scale: Scale,
    confidence: float,
) -> Figure:
    """One KR: each grade given, the evidence grade, the calibrated grade with its interval."""
    fig = _figure(7.0, 2.4)
    ax = fig.add_subplot()
    _levels(ax, scale, vertical=True)
    for i, (grader, value) in enumerate(sorted(grades, key=lambda g: g[1])):
        ax.plot([value], [1.0], marker="o", color=_RAW, linestyle="none")
        ax.annotate(
            _label(grader),
            (value, 1.0),
            textcoords="offset points",
            xytext=(0, 7 + 9 * (i % 2)),
            ha="center",
            fontsize=7,
        )
    ticks = [1.0]
    names = ["grades"]
    if score is not None and score.evidence_grade is not None:
        ax.plot([score.evidence_grade], [0.5], marker="s", color=_EVIDENCE, linestyle="none")
        ticks.append(0.5)
        names.append("evidence")
    if score is not None and score.calibrated_grade is not None:
        lo = score.ci_low if score.ci_low is not None else score.calibrated_grade
        hi = score.ci_high if score.ci_high is not None else score.calibrated_grade
        ax.plot([lo, hi], [0.0, 0.0], color=_CAL, linewidth=3)
        ax.plot([score.calibrated_grade], [0.0], marker="D", color=_CAL, linestyle="none")
        ticks.append(0.0)
        names.append(f"calibrated\n({100 * confidence:.0f}% interval)")
    ax.set_yticks(ticks)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_ylim(-0.5, 1.6)
    pad = 0.03 * scale.span
    ax.set_xlim(scale.low - pad, scale.high + pad)
    ax.set_xlabel(f"grade ({scale.name} scale; dotted: anchor level boundaries)")
    return fig


def drift_figure(histories: Mapping[str, Sequence[CyclePoint]], highlight: Sequence[str]) -> Figure:
    """Each grader's leniency across cycles (Google 0–1 units) with interval bands.

    Graders in ``highlight`` (the drifting ones) are drawn in colour on top; the others
    are thin grey lines, so the drifting stand out against everyone's usual wobble.
    """
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    cycles = sorted({p.cycle for points in histories.values() for p in points})
    x_of = {c: i for i, c in enumerate(cycles)}
    palette = ["#d55e00", "#0072b2", "#009e73", "#cc79a7", "#e69f00", "#56b4e9"]
    ordered = [g for g in histories if g not in highlight] + [
        g for g in highlight if g in histories
    ]
    for grader in ordered:
        pts = [p for p in histories[grader] if p.leniency is not None]
        if not pts:
            continue
        xs = [x_of[p.cycle] for p in pts]
        ys = [p.leniency or 0.0 for p in pts]
        if grader in highlight:
            colour = palette[list(highlight).index(grader) % len(palette)]
            lows = [p.ci_low if p.ci_low is not None else y for p, y in zip(pts, ys, strict=True)]
            highs = [
                p.ci_high if p.ci_high is not None else y for p, y in zip(pts, ys, strict=True)
            ]
            ax.fill_between(xs, lows, highs, color=colour, alpha=0.18, linewidth=0)
            line = ax.plot(xs, ys, marker="o", color=colour, linewidth=2, label=_label(grader))[0]
            line.set_gid(grader_gid(grader, True))
        else:
            ax.plot(xs, ys, color="#cccccc", linewidth=0.8, zorder=0)
    ax.axhline(0.0, color="#666666", linewidth=1, zorder=0)
    ax.set_xticks(range(len(cycles)))
    ax.set_xticklabels(cycles, fontsize=8, rotation=30 if len(cycles) > 6 else 0)
    ax.set_ylabel("leniency (0–1 scale)")
    ax.set_xlabel("cycle (bands: intervals of the drifting graders)")
    if any(not h.startswith("_") for h in ax.get_legend_handles_labels()[1]):
        ax.legend(loc="upper left", frameon=False, fontsize=8, ncol=3)
    ax.set_title("Grader leniency across cycles", fontsize=11)
    return fig
