"""The audit report as one self-contained HTML page, for readers who are not ML engineers.

No external resources: inline CSS, plots as base64 PNG images drawn with
matplotlib's Agg backend (no display needed). Every number is explained in plain
language next to it.
"""

from __future__ import annotations

import base64
import bisect
import html
import io
import math
from collections.abc import Sequence

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

_PALETTE = ("#1f5fa8", "#d9822b", "#2e8b57", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d")
_CAP_COLOR = "#c0392b"


def render_html(report: AuditReport) -> str:
    """The report as a complete HTML document (UTF-8 text, no external resources)."""
    status, status_class = _status(report)
    used = (
        report.epsilon_spent / report.cap
        if report.cap > 0
        else (1.0 if report.epsilon_spent else 0.0)
    )
    parts = [
        _HEAD.replace("{title}", _e(f"Privacy audit — dataset {report.dataset_id}")),
        '<header><div class="kicker">Differential privacy audit report</div>',
        f"<h1>Dataset <code>{_e(report.dataset_id)}</code></h1>",
        f'<div class="meta">Tenant <code>{_e(report.tenant_id)}</code> · generated '
        f"{_e(_time(report.generated_at))} · ledger entries {_e(_time(report.first_event_at))} "
        f"to {_e(_time(report.last_event_at))}</div>",
        f'<div class="status {status_class}">{_e(status)}</div></header>',
    ]
    if report.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in report.warnings)
        parts.append(f'<section class="alert"><h2>Attention</h2><ul>{items}</ul></section>')
    parts.append(_summary(report, used))
    parts.append(_explainer(report))
    parts.append(_overview_figure(report))
    parts.append(_runs_section(report))
    parts.append(_recompute_section(report))
    parts.append(_chain_section(report))
    parts.append(_changes_section(report))
    parts.append(_refusals_section(report))
    parts.append(_technical_section(report))
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


# ------------------------------------------------------------------- sections


def _status(report: AuditReport) -> tuple[str, str]:
    if report.chain is not None and not report.chain.ok:
        return "LEDGER INTEGRITY CHECK FAILED", "bad"
    if report.warnings:
        return "Needs attention — see below", "warn"
    if report.chain is None:
        return "Ledger integrity not checked (no key given)", "warn"
    confirmed = "figures independently confirmed" if report.recompute else "ledger verified"
    if report.epsilon_remaining <= 0.01 * report.cap:
        return f"Budget used up — no further training without a cap raise · {confirmed}", "warn"
    return f"Within budget · ledger verified · {confirmed}", "good"


def _summary(report: AuditReport, used: float) -> str:
    shown = math.floor(used * 1000) / 10  # never round up to "100 %" before it is
    width = max(0.0, min(1.0, used)) * 100
    bar_class = "bar-bad" if used >= 1 else "bar-warn" if used >= 0.8 else "bar-good"
    refused = len(report.refusals)
    return f"""
<section class="cards">
  <div class="card"><div class="label">Privacy budget (cap)</div>
    <div class="value">ε = {_num(report.cap)}</div>
    <div class="hint">the most that may ever be spent on this dataset</div></div>
  <div class="card"><div class="label">Spent so far</div>
    <div class="value">ε = {_num(report.epsilon_spent)}</div>
    <div class="hint">{shown:.1f} % of the cap, by {len(report.runs)} training run(s)
    </div></div>
  <div class="card"><div class="label">Remaining</div>
    <div class="value">ε = {_num(report.epsilon_remaining)}</div>
    <div class="hint">still available for future training</div></div>
  <div class="card"><div class="label">Training steps · refused</div>
    <div class="value">{report.total_steps:,} · {refused:,}</div>
    <div class="hint">steps applied · steps refused at the cap</div></div>
</section>
<div class="meter" role="img" aria-label="{shown:.1f} percent of the budget used">
  <div class="{bar_class}" style="width:{width:.2f}%"></div></div>
<p class="meter-caption">Budget used: {shown:.1f} % (δ = {_num(report.delta)} throughout)</p>
"""


def _explainer(report: AuditReport) -> str:
    one_in = f"1 in {round(1 / report.delta):,}" if report.delta > 0 else "0"
    return f"""
<section class="explain">
<h2>How to read this report</h2>
<dl>
<dt>ε (epsilon) — the privacy loss</dt>
<dd>A number that bounds how much anyone who sees the trained models could learn about
any <em>single</em> person whose record is in this dataset. 0 would mean nothing at all;
smaller is more private. Every training step that uses the data spends a little ε, and
the amounts add up over all training runs on the dataset. As a rule of thumb, ε up to
about 1 is a strong guarantee and values up to about 8–10 are common in practice.</dd>
<dt>δ (delta) — the small print</dt>
<dd>The probability that the ε guarantee does not hold, here {_e(one_in)}. It is fixed
when the budget is created and is always far smaller than one divided by the number of
records.</dd>
<dt>The cap</dt>
<dd>The most ε the data owner allows to be spent on this dataset, by all training runs
together. Before each training step touches the data, the service computes the ε the
dataset would reach after that step and <strong>refuses the step</strong> if that would
exceed the cap; a refused step changes nothing and is itself recorded.</dd>
<dt>Remaining budget</dt>
<dd>The cap minus what has been spent. When it reaches zero, no further training on
this dataset is possible unless an administrator raises the cap — and every cap change
is recorded in this report, with who made it.</dd>
<dt>How ε is counted</dt>
<dd>The recorded figures are deliberately cautious: they may slightly over-state the
privacy loss (by at most about 0.25 %), never under-state it. Steps of different runs on
the same dataset are simply added up, which is the safe assumption even when the runs
used different parts of the data.</dd>
</dl>
</section>"""


def _overview_figure(report: AuditReport) -> str:
    if not report.runs:
        return "<section><h2>Privacy spent over time</h2><p>No training step yet.</p></section>"
    image = _png(_overview_plot(report))
    return f"""
<section><h2>Privacy spent over time</h2>
<p>The line shows the dataset's total ε after every training step, in the order the steps
happened; the shaded area is the budget still available. The red dashed line is the cap:
the total can never cross it. The bars underneath show when each run was training, and red
crosses mark steps that were refused because they would have crossed the cap.</p>
<figure><img alt="Dataset ε against training steps, with the cap"
  src="data:image/png;base64,{image}">
<figcaption>Figure 1. Total privacy spent on the dataset, all runs together.</figcaption></figure>
</section>"""


def _runs_section(report: AuditReport) -> str:
    if not report.runs:
        return ""
    rows = []
    for index, run in enumerate(report.runs):
        colour = _PALETTE[index % len(_PALETTE)]
        segments = "<br>".join(
            f"σ = {_num(s)}, q = {_num(q)} × {n:,} steps" for s, q, n in run.history
        )
        sizes = ", ".join(f"{n:,}" for n in run.dataset_sizes)
        batch = "<br>".join(f"{q * run.dataset_sizes[0]:,.1f}" for _, q, _ in run.history)
        rows.append(
            f'<tr><td><span class="swatch" style="background:{colour}"></span>'
            f"<code>{_e(run.run_id)}</code></td><td class=num>{run.steps:,}</td>"
            f"<td>{segments}</td><td class=num>{_e(', '.join(_num(c) for c in run.max_grad_norms))}"
            f"</td><td class=num>{_e(sizes)}</td><td class=num>{batch}</td>"
            f"<td class=num><strong>{_num(run.epsilon)}</strong></td>"
            f"<td class=num>{run.refusals}</td><td>{_e(_time(run.first_step_at))}<br>"
            f"{_e(_time(run.last_step_at))}</td></tr>"
        )
    panels = _png(_run_panels(report))
    extra = ""
    if len(report.runs) > MAX_RUN_PANELS:
        extra = f"<p>Only the first {MAX_RUN_PANELS} runs are drawn; all are in the table.</p>"
    return f"""
<section><h2>Training runs</h2>
<p>Each run is one training job on this dataset. σ (noise multiplier) is how much random
noise hides each training step — more noise, less ε per step. q (sampling rate) is the
fraction of records each step uses on average; C is the limit on any single record's
influence on a step. “ε of the run” counts only that run's own steps.</p>
<div class="scroll"><table>
<thead><tr><th>Run</th><th>Steps</th><th>Noise σ, sampling rate q</th><th>C</th>
<th>Records N</th><th>Avg. batch</th><th>ε of the run</th><th>Refused</th><th>First / last step</th>
</tr></thead><tbody>{"".join(rows)}</tbody></table></div>
<figure><img alt="ε against step for each run, with the cap" src="data:image/png;base64,{panels}">
<figcaption>Figure 2. For each run: its own ε (solid) and the dataset's total ε at the time
of each of its steps (dotted), against the run's step number; red dashed line: the cap.
</figcaption></figure>{extra}
</section>"""


def _recompute_section(report: AuditReport) -> str:
    result = report.recompute
    if result is None:
        return "<section><h2>Independent check of the figures</h2><p>Not run.</p></section>"
    checks = [result.dataset, *result.runs]
    rows = []
    for check in checks:
        what = "Whole dataset" if check.scope == "dataset" else f"Run {check.subject}"
        verdict = "agrees" if check.agree_within_1pct else "DISAGREES"
        css = "ok" if check.agree_within_1pct else "bad"
        rows.append(
            f"<tr><td>{_e(what)}</td><td class=num>{check.steps:,}</td>"
            f"<td class=num><strong>{_num(check.recorded)}</strong></td>"
            f"<td class=num>{_num(check.pld)}</td>"
            f"<td class=num>{_pct(check.pld_relative_difference)}</td>"
            f"<td class=num>{_num(check.prv) if check.prv is not None else '—'}</td>"
            f"<td class=num>{_pct(check.prv_relative_difference)}</td>"
            f'<td class="{css}">{verdict}</td></tr>'
        )
    accountant_note = ""
    if result.accountant == "rdp":
        accountant_note = (
            "<p>This budget is accounted with the RDP method, which is deliberately looser: "
            "its figures are expected to be above the independent ones (never below).</p>"
        )
    return f"""
<section><h2>Independent check of the figures</h2>
<p>From the raw parameters stored in the ledger (σ, q and the number of steps), ε was
recalculated with two independent, widely used open-source libraries: Google's
<em>dp-accounting</em> (privacy loss distributions) and Meta's <em>Opacus</em> (privacy
random variables). Neither shares code with the service's own calculation. The recorded
figures must agree with both within {result.relative_tolerance * 100:g} %. A small positive
difference is expected: the service rounds up, on purpose.</p>{accountant_note}
<div class="scroll"><table><thead><tr><th>What</th><th>Steps</th><th>Recorded ε</th>
<th>Google PLD</th><th>difference</th><th>Opacus PRV</th><th>difference</th><th>Result</th>
</tr></thead><tbody>{"".join(rows)}</tbody></table></div>
</section>"""


def _chain_section(report: AuditReport) -> str:
    chain = report.chain
    if chain is None:
        verdict = (
            '<p class="warn-text">Not verified: the report was built without the ledger key.</p>'
        )
    elif chain.ok:
        verdict = (
            f'<p class="ok-text">Verified: all {chain.checked:,} ledger entries are intact and in '
            f"order (last entry {chain.head.seq:,}, seal "
            f"<code>{_e(chain.head.link[:16])}…</code>).</p>"
        )
    else:
        verdict = (
            f'<p class="bad-text">FAILED at entry {chain.first_broken_seq}: '
            f"{_e(chain.reason or '')}. "
            f"{chain.checked:,} entries before it verified.</p>"
        )
    replay = report.replay
    replay_text = ""
    if replay is not None:
        if replay.ok:
            replay_text = (
                f"<p>Replay: re-running the service's own calculation over the ledger reproduced "
                f"every value checked ({replay.evaluated:,} totals, all {replay.rows:,} entries "
                "checked against the cap).</p>"
            )
        else:
            first = replay.mismatches[0]
            replay_text = (
                f'<p class="bad-text">Replay found {len(replay.mismatches)} inconsistent value(s); '
                f"first at entry {first.seq} ({_e(first.field)}): {_e(first.detail)}.</p>"
            )
    return f"""
<section><h2>Is the record complete and unaltered?</h2>
<p>Every ledger entry is sealed with a cryptographic code (HMAC-SHA256) computed over the
entry <em>and the seal of the entry before it</em>, like the links of a chain. The secret key
that makes the seals is held by the service's key store, not in the database. If anyone
edits, deletes, inserts or reorders entries in the database, the check below fails and
names the first broken entry.</p>{verdict}{replay_text}
<p class="small">What this proves: the ledger has not been changed since it was written by
someone without the key. What it cannot prove alone: that the service wrote an entry for
every step — that is guaranteed by the service writing the entry in the same database
transaction that makes the step take effect.</p>
</section>"""


def _changes_section(report: AuditReport) -> str:
    rows = []
    for change in report.budget_changes:
        what = "Budget created" if change.kind == "budget_created" else "Cap changed"
        before = "—" if change.previous_cap is None else _num(change.previous_cap)
        rows.append(
            f"<tr><td class=num>{change.seq}</td><td>{_e(_time(change.created_at))}</td>"
            f"<td>{what}</td><td class=num>{before}</td>"
            f"<td class=num><strong>{_num(change.new_cap)}"
            f"</strong></td><td class=num>{_num(change.epsilon_spent)}</td>"
            f"<td>{_e(change.actor or '—')}</td><td>{_e(change.reason or '')}</td></tr>"
        )
    return f"""
<section><h2>Budget history</h2>
<p>When the budget was created and every change of its cap, with who made it. Caps are
only raised by an explicit administrator action, and can never be lowered below what has
already been spent.</p>
<div class="scroll"><table><thead><tr><th>Entry</th><th>When (UTC)</th><th>Change</th>
<th>Cap before</th><th>Cap after</th><th>ε spent then</th><th>By</th><th>Reason</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table></div></section>"""


def _refusals_section(report: AuditReport) -> str:
    if not report.refusals:
        return (
            "<section><h2>Refused steps</h2><p>None: no training step has been refused.</p>"
            "</section>"
        )
    rows = [
        f"<tr><td class=num>{r.seq}</td><td>{_e(_time(r.created_at))}</td><td><code>"
        f"{_e(r.run_id)}</code></td><td class=num>{r.step}</td>"
        f"<td class=num>{_num(r.epsilon_spent)}"
        f"</td><td class=num>{_beside(r.epsilon_requested, r.cap)}</td>"
        f"<td class=num>{_beside(r.cap, r.epsilon_requested)}</td></tr>"
        for r in report.refusals[:200]
    ]
    more = (
        f"<p>Showing 200 of {len(report.refusals):,} refusals.</p>"
        if len(report.refusals) > 200
        else ""
    )
    return f"""
<section><h2>Refused steps</h2>
<p>Training steps the service refused because the dataset's ε would have gone over the cap.
Nothing was applied for these steps: no data was used and no model changed.</p>
<div class="scroll"><table><thead><tr><th>Entry</th><th>When (UTC)</th><th>Run</th><th>Step</th>
<th>ε spent</th><th>ε had it run</th><th>Cap</th></tr></thead><tbody>{"".join(rows)}</tbody>
</table></div>{more}</section>"""


def _technical_section(report: AuditReport) -> str:
    versions = ", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(report.library_versions.items()))
    pld = ""
    if report.recompute is not None:
        pld = (
            f" Recomputation: dp-accounting PLD with discretization "
            f"{report.recompute.pld_value_discretization:g} "
            f"({report.recompute.pld_seconds:.2f} s), "
            f"Opacus PRVAccountant ({report.recompute.prv_seconds:.2f} s)."
        )
    return f"""
<section class="technical"><h2>Technical details</h2>
<p>Mechanism: DP-SGD with Poisson sampling (each record joins each step independently with
probability q) and Gaussian noise N(0, σ²C²) on the sum of per-record gradients clipped to
norm C. Accountant: <code>{_e(report.accountant)}</code>. Composition: sequential
composition of every step of every run on the dataset (an upper bound; order-independent).
Recorded ε are conservative: each step count is rounded up to a fine geometric grid before
evaluation.{_e(pld)}</p>
<p>Computed with: {versions or "—"}. Report format {report.format}; {report.ledger_rows:,}
ledger entries for this dataset.</p>
</section>"""


# --------------------------------------------------------------------- plots


def _overview_plot(report: AuditReport) -> Figure:
    """Top: the dataset's ε after every step, the cap, the remaining budget. Bottom: when
    each run was training (bars) and where it was refused (crosses)."""
    runs = report.runs
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
            ax.annotate(f"cap {verb} to {_num(caps[i])}", (xs[i], caps[i]),
                        xytext=(4, 4), textcoords="offset points", fontsize=8,
                        color="#555555")  # fmt: skip
    ax.annotate(f"spent: ε = {_num(ys[-1])}", (xs[-1], ys[-1]), xytext=(-6, -16),
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
    for index, run in enumerate(runs):
        colour = _PALETTE[index % len(_PALETTE)]
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
    runs = report.runs[:MAX_RUN_PANELS]
    cols = 1 if len(runs) == 1 else 2 if len(runs) <= 4 else 3
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(9.6, 2.9 * rows + 0.3), dpi=110,
                             squeeze=False, sharey=True)  # fmt: skip
    top = max(report.cap, *(max(r.series.epsilon_dataset) for r in runs))
    for index, run in enumerate(runs):
        ax = axes[index // cols][index % cols]
        colour = _PALETTE[index % len(_PALETTE)]
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


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------ formatting


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _num(value: float) -> str:
    if math.isinf(value):
        return "∞"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.4g}"


def _beside(value: float, other: float) -> str:
    """``value`` with enough digits to tell it apart from ``other`` (e.g. ε vs the cap)."""
    for digits in range(4, 17):
        text = f"{value:.{digits}g}"
        if text != f"{other:.{digits}g}":
            return text
    return f"{value!r}"


def _pct(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value * 100:+.2f} %"


def _time(stamp: str) -> str:
    """``2026-01-31T12:00:00.123456Z`` → ``2026-01-31 12:00:00 UTC``."""
    return stamp[:19].replace("T", " ") + " UTC" if len(stamp) >= 19 else stamp


_HEAD = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
:root { --ink:#1d232a; --muted:#5b6670; --line:#e3e7eb; --bg:#f6f8fa; --good:#1e7b4a;
        --warn:#a86400; --bad:#b3261e; --accent:#1f5fa8; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font:15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 28px 28px 60px; background:#fff;
       min-height:100vh; box-shadow: 0 0 0 1px var(--line); }
header { border-bottom: 3px solid var(--accent); padding-bottom: 14px; margin-bottom: 18px; }
.kicker { text-transform: uppercase; letter-spacing: .08em; font-size: 12px; color: var(--accent);
          font-weight: 600; }
h1 { font-size: 26px; margin: 4px 0 6px; }
h2 { font-size: 19px; margin: 30px 0 8px; padding-bottom: 4px;
     border-bottom: 1px solid var(--line); }
.meta { color: var(--muted); font-size: 13px; }
code { font: 13px/1.4 "SFMono-Regular", Menlo, Consolas, monospace; background:#f1f3f5;
       padding: 1px 5px; border-radius: 4px; white-space: nowrap; }
.status { display:inline-block; margin-top:10px; padding: 6px 12px; border-radius: 999px;
          font-weight: 600; font-size: 14px; }
.status.good { background:#e3f4ea; color: var(--good); }
.status.warn { background:#fff1dc; color: var(--warn); }
.status.bad { background:#fde7e6; color: var(--bad); }
.alert { background:#fde7e6; border:1px solid #f3b8b4; border-radius:8px; padding: 4px 18px 10px; }
.alert h2 { border:0; color: var(--bad); margin-top: 10px; }
.cards { display:grid; grid-template-columns: repeat(auto-fit, minmax(210px, 1fr)); gap: 12px;
         margin: 18px 0 12px; }
.card { border:1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card .label { font-size: 12px; text-transform: uppercase; letter-spacing: .05em;
               color: var(--muted); }
.card .value { font-size: 24px; font-weight: 650; margin: 2px 0; }
.card .hint { font-size: 12.5px; color: var(--muted); }
.meter { height: 14px; background:#eef1f4; border-radius: 999px; overflow:hidden; }
.meter div { height:100%; border-radius: 999px; }
.bar-good { background: linear-gradient(90deg, #2e8b57, #49a86f); }
.bar-warn { background: linear-gradient(90deg, #d9822b, #e8a24f); }
.bar-bad { background: linear-gradient(90deg, #b3261e, #d9534f); }
.meter-caption { font-size: 13px; color: var(--muted); margin: 6px 0 0; }
.explain { background:#f3f7fc; border:1px solid #d8e4f2; border-radius: 10px;
           padding: 2px 20px 10px;
           margin-top: 22px; }
.explain h2 { border:0; }
dt { font-weight: 650; margin-top: 10px; }
dd { margin: 2px 0 0 0; color: #2c353d; }
figure { margin: 14px 0; }
figure img { width: 100%; height: auto; border:1px solid var(--line); border-radius: 8px; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; margin: 8px 0; }
th { text-align:left; font-weight:600; color: var(--muted); font-size: 12.5px;
     letter-spacing: .03em; border-bottom: 2px solid var(--line); padding: 6px 8px; }
td { border-bottom: 1px solid var(--line); padding: 6px 8px; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
.swatch { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:6px; }
.ok, .ok-text { color: var(--good); font-weight: 600; }
.bad, .bad-text { color: var(--bad); font-weight: 600; }
.warn-text { color: var(--warn); font-weight: 600; }
.small { font-size: 13px; color: var(--muted); }
.technical { font-size: 13.5px; color: #36414b; }
@media print { body { background:#fff; } main { box-shadow:none; } }
</style></head><body><main>"""


__all__ = ["MAX_PLOT_POINTS", "MAX_RUN_PANELS", "render_html"]
