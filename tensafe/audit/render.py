"""The audit report as one self-contained HTML page, for readers who are not ML engineers.

No external resources: the CSS is inlined and the plots are base64 PNG images
(:mod:`tensafe.audit.plots`). The page and its sections are ``string.Template`` files
shipped in ``tensafe/audit/templates/`` (``report.html``, ``sections.html`` — blocks
introduced by ``<!-- template: NAME -->`` — and ``report.css``); this module only fills
in the values, HTML-escaped. Every number is explained in plain language next to it.
"""

from __future__ import annotations

import html
import math
import re
from functools import cache
from importlib import resources
from string import Template

from tensafe.audit.canary_render import privacy_audit_section
from tensafe.audit.plots import (
    MAX_PLOT_POINTS,
    MAX_RUN_PANELS,
    PALETTE,
    overview_png,
    plotted_runs,
    run_panels_png,
)
from tensafe.audit.plots import format_number as _num
from tensafe.audit.recompute import EpsilonCheck
from tensafe.audit.report import AuditReport

_BLOCK = re.compile(r"^<!-- template: (\w+) -->\n", re.MULTILINE)


def render_html(report: AuditReport) -> str:
    """The report as a complete HTML document (UTF-8 text, no external resources)."""
    status, status_class = _status(report)
    used = (
        report.epsilon_spent / report.cap
        if report.cap > 0
        else (1.0 if report.epsilon_spent else 0.0)
    )
    shown = math.floor(used * 1000) / 10  # never round up to "100 %" before it is
    warnings = ""
    if report.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in report.warnings)
        warnings = f'<section class="alert"><h2>Attention</h2><ul>{items}</ul></section>'
    if report.notices:
        items = "".join(f"<li>{_e(n)}</li>" for n in report.notices)
        warnings += f'<section class="notice"><h2>Please note</h2><ul>{items}</ul></section>'
    return _page().substitute(
        title=_e(f"Privacy audit — dataset {report.dataset_id}"),
        css=_resource("report.css"),
        dataset_id=_e(report.dataset_id)
        if report.dataset_name is None
        else f"{_e(report.dataset_name)}</code> <code>{_e(report.dataset_id)}",
        tenant_id=_e(report.tenant_id),
        generated_at=_e(_time(report.generated_at)),
        first_event_at=_e(_time(report.first_event_at)),
        last_event_at=_e(_time(report.last_event_at)),
        status=_e(status),
        status_class=status_class,
        warnings=warnings,
        cap=_num(report.cap),
        spent=_num(report.epsilon_spent),
        remaining=_num(report.epsilon_remaining),
        shown=f"{shown:.1f}",
        run_count=len(report.runs),
        total_steps=f"{report.total_steps:,}",
        refused=f"{len(report.refusals):,}",
        width=f"{max(0.0, min(1.0, used)) * 100:.2f}",
        bar_class="bar-bad" if used >= 1 else "bar-warn" if used >= 0.8 else "bar-good",
        delta=_num(report.delta),
        one_in=_e(f"1 in {round(1 / report.delta):,}" if report.delta > 0 else "0"),
        overview=_overview_section(report),
        runs=_runs_section(report),
        recompute=_recompute_section(report) + privacy_audit_section(report.privacy_audits),
        chain=_chain_section(report),
        changes=_changes_section(report),
        refusals=_refusals_section(report),
        technical=_technical_section(report),
    )


# ------------------------------------------------------------------ templates


def _resource(name: str) -> str:
    return resources.files("tensafe.audit").joinpath("templates", name).read_text("utf-8")


@cache
def _page() -> Template:
    return Template(_resource("report.html"))


@cache
def _sections() -> dict[str, Template]:
    parts = _BLOCK.split(_resource("sections.html"))
    return {name: Template(body) for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def _section(name: str, **values: object) -> str:
    return _sections()[name].substitute(values)


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


def _overview_section(report: AuditReport) -> str:
    if not plotted_runs(report):
        return "<section><h2>Privacy spent over time</h2><p>No training step yet.</p></section>"
    return _section("overview", image=overview_png(report))


def _runs_section(report: AuditReport) -> str:
    if not report.runs:
        return ""
    rows = []
    for index, run in enumerate(report.runs):
        colour = PALETTE[index % len(PALETTE)]
        segments = (
            "<br>".join(f"σ = {_num(s)}, q = {_num(q)} × {n:,} steps" for s, q, n in run.history)
            or "—"
        )
        sizes = ", ".join(f"{n:,}" for n in run.dataset_sizes) or "—"
        batch = "<br>".join(f"{q * run.dataset_sizes[0]:,.1f}" for _, q, _ in run.history)
        norms = ", ".join(_num(c) for c in run.max_grad_norms) or "—"
        rows.append(
            f'<tr><td><span class="swatch" style="background:{colour}"></span>'
            f"<code>{_e(run.run_id)}</code></td><td class=num>{run.steps:,}</td>"
            f"<td>{segments}</td><td class=num>{_e(norms)}</td><td class=num>{_e(sizes)}</td>"
            f"<td class=num>{batch or '—'}</td>"
            f"<td class=num><strong>{_num(run.epsilon)}</strong></td>"
            f"<td class=num>{_num(run.epsilon_budget)}</td>"
            f"<td class=num>{run.carried_steps:,}</td>"
            f"<td>{_e(_sampling_words(run.sampling, run.privacy_unit))}</td>"
            f"<td class=num>{run.refusals}</td><td>{_e(_time(run.first_step_at))}<br>"
            f"{_e(_time(run.last_step_at))}</td></tr>"
        )
    figure = ""
    if plotted_runs(report):
        extra = ""
        if plotted_runs(report) > MAX_RUN_PANELS:
            extra = f"<p>Only the first {MAX_RUN_PANELS} runs are drawn; all are in the table.</p>"
        figure = _section("run_figure", image=run_panels_png(report), extra=extra)
    return _section("runs", rows="".join(rows), figure=figure)


def _sampling_words(sampling: str | None, unit: str | None) -> str:
    who = {
        "server-poisson": "drawn by the server",
        "client-declared": "built by the client (declared)",
    }.get(sampling or "", "built by the client (declared; not labelled)")
    return f"{who}; one {'person/unit' if unit == 'unit' else 'record'} per contribution"


def _recompute_section(report: AuditReport) -> str:
    result = report.recompute
    if result is None:
        return "<section><h2>Independent check of the figures</h2><p>Not run.</p></section>"
    rows = []
    for check in (result.dataset, *result.runs, *result.runs_exact):
        if check.scope == "dataset":
            what = "Whole dataset"
        elif check.scope == "run":
            what = f"Run {check.subject} (conservative, own steps)"
        else:
            what = f"Run {check.subject} (reported, with carried steps)"
            if check.delta is not None or check.accountant is not None:
                own = [f"δ={check.delta:g}"] if check.delta is not None else []
                own += [check.accountant.upper()] if check.accountant is not None else []
                what += f" [{', '.join(own)}]"
        verdict, css = _verdict(check)
        prv = _num(check.prv) if check.prv is not None else "—"
        rows.append(
            f"<tr><td>{_e(what)}</td><td class=num>{check.steps:,}</td>"
            f"<td class=num><strong>{_num(check.recorded)}</strong></td>"
            f"<td class=num>{_num(check.pld)}</td>"
            f"<td class=num>{_pct(check.pld_relative_difference)}</td>"
            f"<td class=num>{prv}</td><td class=num>{_pct(check.prv_relative_difference)}</td>"
            f'<td class="{css}">{verdict}</td></tr>'
        )
    note = ""
    if result.accountant == "rdp":
        note = (
            "<p>This budget is accounted with the RDP method, which is deliberately looser: "
            "its figures are expected to be above the independent ones (never below).</p>"
        )
    return _section(
        "recompute",
        tolerance=f"{result.relative_tolerance * 100:g}",
        accountant_note=note,
        rows="".join(rows),
    )


def _verdict(check: EpsilonCheck) -> tuple[str, str]:
    """The table's verdict and its CSS class: a recorded ε below a reference is an
    under-report; one only above them (beyond the tolerance) is conservative."""
    if check.agree_within_1pct:
        return "agrees", "ok"
    if not check.upper_bound_holds:
        return "UNDER-REPORTED", "bad"
    if check.passes:
        return "holds (RDP bound)", "ok"
    if check.pld_converged is not False and check.prv is not None:
        return "over-reported (safe side)", "warn-text"
    return "DISAGREES (reference incomplete)", "bad"


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
    if replay is not None and replay.ok:
        replay_text = (
            f"<p>Replay: re-running the service's own calculation over the ledger reproduced "
            f"every value checked ({replay.evaluated:,} totals, all {replay.rows:,} entries "
            "checked against the cap).</p>"
        )
    elif replay is not None:
        first = replay.mismatches[0]
        replay_text = (
            f'<p class="bad-text">Replay found {len(replay.mismatches)} inconsistent value(s); '
            f"first at entry {first.seq} ({_e(first.field)}): {_e(first.detail)}.</p>"
        )
    return _section("chain", verdict=verdict, replay=replay_text)


_POLICY_WORDS = {
    "server-only": "server-drawn batches only",
    "any": "client-declared batches allowed",
}


def _changes_section(report: AuditReport) -> str:
    rows = []
    for change in report.budget_changes:
        what = "Budget created" if change.kind == "budget_created" else "Cap changed"
        if change.sampling_policy is not None:
            what += f" · sampling: {_POLICY_WORDS.get(change.sampling_policy, '?')}"
        before = "—" if change.previous_cap is None else _num(change.previous_cap)
        rows.append(
            f"<tr><td class=num>{change.seq}</td><td>{_e(_time(change.created_at))}</td>"
            f"<td>{what}</td><td class=num>{before}</td>"
            f"<td class=num><strong>{_num(change.new_cap)}"
            f"</strong></td><td class=num>{_num(change.epsilon_spent)}</td>"
            f"<td>{_e(change.actor or '—')}</td><td>{_e(change.reason or '')}</td></tr>"
        )
    return _section("changes", rows="".join(rows))


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
    return _section("refusals", rows="".join(rows), more=more)


def _technical_section(report: AuditReport) -> str:
    versions = ", ".join(f"{_e(k)} {_e(v)}" for k, v in sorted(report.library_versions.items()))
    pld = ""
    if report.recompute is not None:
        result = report.recompute
        pld = (
            f" Recomputation: dp-accounting PLD, its discretization refined until two "
            f"successive values agree within {result.pld_tolerance:.2%} (finest interval "
            f"{result.pld_value_discretization:.3g}; {result.pld_seconds:.2f} s), "
            f"Opacus PRVAccountant ({result.prv_seconds:.2f} s)."
        )
    return _section(
        "technical",
        accountant=_e(report.accountant),
        pld=_e(pld),
        versions=versions or "—",
        format=report.format,
        ledger_rows=f"{report.ledger_rows:,}",
    )


# ------------------------------------------------------------------ formatting


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


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


__all__ = ["MAX_PLOT_POINTS", "MAX_RUN_PANELS", "render_html"]
