"""The report's plots, drawn with matplotlib's Agg backend (no display needed) and
returned as base64 PNG for inline ``<img>`` tags.

Only runs with steps on the dataset are drawn (a run that only carried steps in has
no ε series); colours follow the run's position in ``report.runs``, as in the tables.
"""

from __future__ import annotations

import base64
import bisect
import io
import math
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: never needs a display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tensafe.audit.report import AuditReport, RunReport

#: Most runs drawn as separate small plots; further runs are listed only.
MAX_RUN_PANELS = 12
#: Most points drawn per line (long series are thinned evenly, last point kept).
MAX_PLOT_POINTS = 2000

PALETTE = ("#1f5fa8", "#d9822b", "#2e8b57", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d")
_CAP_COLOR = "#c0392b"


def overview_png(report: AuditReport) -> str:
    """Figure 1 (the dataset's ε over all steps, cap, run lanes) as base64 PNG.

    Raises:
        ValueError: no run has a step.
    """
    return _figure_png(report, _overview_plot)


def run_panels_png(report: AuditReport) -> str:
    """Figure 2 (one panel per run with steps, at most :data:`MAX_RUN_PANELS`) as base64 PNG.

    Raises:
        ValueError: no run has a step.
    """
    return _figure_png(report, _run_panels)


def plotted_runs(report: AuditReport) -> int:
    """How many runs have steps (and so a line in the plots)."""
    return len(_plotted(report.runs))


def _plotted(runs: Sequence[RunReport]) -> list[tuple[int, RunReport]]:
    return [(number, run) for number, run in enumerate(runs) if run.series.seq]


def _overview_plot(report: AuditReport) -> Figure:
    """Top: the dataset's ε after every step, the cap, the remaining budget. Bottom: when
    each run was training (bars) and where it was refused (crosses)."""
    plotted = _plotted(report.runs)
    runs = [run for _, run in plotted]
    strip = 0.32 * len(runs) + 0.5
    fig, (ax, lanes) = plt.subplots(
        2, 1, figsize=(9.6, 4.0 + strip), dpi=110, sharex=True, layout="constrained",
        gridspec_kw={"height_ratios": [4.0, strip]},
    )  # fmt: skip
    # One point per dp_step row, in ledger order (seq); x = steps on the dataset so far.
    points: list[tuple[int, int, float, float]] = []
    for index, run in enumerate(runs):
        series = run.series
        for seq, eps, cap in zip(series.seq, series.epsilon_dataset, series.cap, strict=True):
            points.append((seq, index, eps, cap))
    points.sort()
    xs = list(range(1, len(points) + 1))
    ys = [p[2] for p in points]
    caps = [p[3] for p in points]
    tx, ty = _thin(xs, ys)
    cx, cy = _thin(xs, caps)
    ax.fill_between(cx, ty, cy, step="post", color="#2e8b57", alpha=0.12, linewidth=0,
                    label="remaining budget")  # fmt: skip
    ax.plot(tx, ty, color="#1f3b5c", linewidth=2.0, label="total ε spent (all runs)", zorder=3)
    ax.step(cx, cy, where="post", color=_CAP_COLOR, linestyle="--", linewidth=1.6,
            label="cap", zorder=4)  # fmt: skip
    for i in range(1, len(caps)):  # mark every cap change between two steps
        if caps[i] != caps[i - 1]:
            verb = "raised" if caps[i] > caps[i - 1] else "lowered"
            for axis in (ax, lanes):
                axis.axvline(xs[i], color="#888888", linestyle=":", linewidth=1.0, zorder=1)
            ax.annotate(f"cap {verb} to {format_number(caps[i])}", (xs[i], caps[i]),
                        xytext=(4, 4), textcoords="offset points", fontsize=8,
                        color="#555555")  # fmt: skip
    ax.annotate(f"spent: ε = {format_number(ys[-1])}", (xs[-1], ys[-1]), xytext=(-6, -16),
                textcoords="offset points", ha="right", fontsize=8.5, color="#1f3b5c",
                fontweight="bold",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8},
                )  # fmt: skip
    ax.set_ylabel("total ε spent")
    _style(ax, top=max(max(caps), max(ys)))
    handles, _ = ax.get_legend_handles_labels()
    if report.refusals:
        handles.append(Line2D([], [], marker="x", color=_CAP_COLOR, linestyle="none",
                              label="refused step (below)"))  # fmt: skip
    ax.legend(handles=handles, loc="lower right", fontsize=8, frameon=False)
    ax.tick_params(labelbottom=False)

    # Refusals sit between the steps around them: x = steps taken before them.
    taken = [p[0] for p in points]
    for index, (number, run) in enumerate(plotted):
        colour = PALETTE[number % len(PALETTE)]
        mine = [x for x, p in zip(xs, points, strict=True) if p[1] == index]
        lanes.broken_barh([(mine[0] - 0.5, mine[-1] - mine[0] + 1)], (index - 0.3, 0.6),
                          color=colour, alpha=0.85)  # fmt: skip
        refused = [
            bisect.bisect_left(taken, r.seq) + 0.5
            for r in report.refusals
            if r.run_id == run.run_id
        ]
        if refused:
            lanes.scatter(refused, [index] * len(refused), marker="x", color=_CAP_COLOR, s=28,
                          zorder=3)  # fmt: skip
    lanes.set_yticks(range(len(runs)), [f"run {r.run_id}" for r in runs], fontsize=8)
    lanes.set_ylim(len(runs) - 0.5, -0.5)
    lanes.set_xlabel("training steps on the dataset (all runs, in the order they happened)")
    for side in ("top", "right", "left"):
        lanes.spines[side].set_visible(False)
    lanes.tick_params(axis="x", labelsize=8, colors="#444444")
    lanes.tick_params(axis="y", length=0)
    return fig


def _run_panels(report: AuditReport) -> Figure:
    plotted = _plotted(report.runs)[:MAX_RUN_PANELS]
    runs = [run for _, run in plotted]
    cols = 1 if len(runs) == 1 else 2 if len(runs) <= 4 else 3
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(9.6, 2.9 * rows + 0.3), dpi=110,
                             squeeze=False, sharey=True)  # fmt: skip
    top = max(report.cap, *(max(r.series.epsilon_dataset) for r in runs))
    for index, (number, run) in enumerate(plotted):
        ax = axes[index // cols][index % cols]
        colour = PALETTE[number % len(PALETTE)]
        _run_panel(ax, run, colour)
        _style(ax, top=top)
        ax.set_title(f"run {run.run_id}", fontsize=9, loc="left", color="#222222")
        if index % cols == 0:
            ax.set_ylabel("ε")
        ax.set_xlabel("step of this run", fontsize=8)
    for index in range(len(runs), rows * cols):
        axes[index // cols][index % cols].set_visible(False)
    handles = [
        Line2D([], [], color="#444444", linewidth=1.8, label="this run's own ε"),
        Line2D([], [], color="#444444", linewidth=1.2, linestyle=":", label="dataset total ε"),
        Line2D([], [], color=_CAP_COLOR, linewidth=1.4, linestyle="--", label="cap"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def _run_panel(ax: plt.Axes, run: RunReport, colour: str) -> None:
    steps = list(run.series.steps)
    x, y_run = _thin(steps, list(run.series.epsilon_run))
    _, y_all = _thin(steps, list(run.series.epsilon_dataset))
    xc, y_cap = _thin(steps, list(run.series.cap))
    ax.plot(x, y_run, color=colour, linewidth=1.8, label="this run's own ε")
    ax.plot(x, y_all, color=colour, linewidth=1.2, linestyle=":", label="dataset total ε")
    ax.step(xc, y_cap, where="post", color=_CAP_COLOR, linestyle="--", linewidth=1.4,
            label="cap")  # fmt: skip
    if len(steps) == 1:
        ax.scatter(x, y_run, color=colour, s=12)


def _style(ax: plt.Axes, *, top: float) -> None:
    ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)
    ax.set_xlim(left=0)
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8, colors="#444444")


def _thin(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """At most :data:`MAX_PLOT_POINTS` evenly spaced points, the last one kept."""
    if len(xs) <= MAX_PLOT_POINTS:
        return list(xs), list(ys)
    stride = math.ceil(len(xs) / MAX_PLOT_POINTS)
    keep = list(range(0, len(xs), stride))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def _figure_png(report: AuditReport, draw: Callable[[AuditReport], Figure]) -> str:
    """The figure ``draw(report)`` as base64 PNG (the figure is closed after saving).

    Raises:
        ValueError: no run has a step (``draw`` is not called).
    """
    if not _plotted(report.runs):
        raise ValueError("no run has a step to plot")
    fig = draw(report)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def format_number(value: float) -> str:
    """``value`` for a reader: ``∞``, ``0``, thousands separated from 100, else 4 digits."""
    if math.isinf(value):
        return "∞"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.4g}"


__all__ = [
    "MAX_PLOT_POINTS",
    "MAX_RUN_PANELS",
    "PALETTE",
    "format_number",
    "overview_png",
    "plotted_runs",
    "run_panels_png",
]
