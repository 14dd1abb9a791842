"""HTML for canary audits: the audit report's section, and a page of its own.

The section (``templates/canary.html``, block ``section``) is added to the dataset
report only when its ledger records an audit, so a report without one renders exactly
as before. :func:`render_canary_html` is the page ``tensafe audit canaries --html``
writes for an audit that is not (yet) in a ledger.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from functools import cache
from importlib import resources
from string import Template

from tensafe.audit.canary_plot import canary_scores_png
from tensafe.audit.canary_result import CanaryAuditResult
from tensafe.audit.plots import format_number

_BLOCK = re.compile(r"^<!-- template: (\w+) -->\n", re.MULTILINE)


def privacy_audit_section(audits: Sequence[CanaryAuditResult]) -> str:
    """The "Empirical privacy audit" section for ``audits`` ("" when there is none)."""
    if not audits:
        return ""
    rows, figures = [], []
    for audit in audits:
        verdict, css = ("passed", "ok") if audit.passed else ("AUDIT FAILED", "bad")
        if audit.test_fault:
            verdict += f" (test-only broken engine: {audit.test_fault})"
        rows.append(
            f"<tr><td><code>{_e(audit.run_id)}</code></td><td class=num>{audit.canaries:,}</td>"
            f"<td class=num>{audit.steps:,}</td>"
            f"<td class=num>{format_number(audit.noise_multiplier)} · "
            f"{format_number(audit.sample_rate)} · {format_number(audit.max_grad_norm)}</td>"
            f"<td class=num>{audit.correct:,} of {audit.guesses:,}</td>"
            f"<td class=num><strong>{format_number(audit.epsilon_lower_bound)}</strong>"
            f" ({audit.confidence:.0%})</td><td class=num>{format_number(audit.epsilon_upper)}</td>"
            f"<td class=num>{format_number(audit.delta)}</td>"
            f'<td class="{css}">{_e(verdict)}</td></tr>'
        )
        if audit.included_scores or audit.excluded_scores:
            figures.append(
                _templates()["figure"].substitute(
                    image=canary_scores_png(audit), run_id=_e(audit.run_id)
                )
            )
    return _templates()["section"].substitute(rows="".join(rows), figures="".join(figures))


def render_canary_html(result: CanaryAuditResult) -> str:
    """One audit as a complete HTML page (no external resources)."""
    status = result.verdict()
    return _templates()["page"].substitute(
        title=_e(f"Privacy audit — run {result.run_id}"),
        css=resources.files("tensafe.audit").joinpath("templates", "report.css").read_text("utf-8"),
        run_id=_e(result.run_id),
        model=_e(result.model or "?"),
        seconds=f"{result.seconds:.1f}",
        created_at=_e(result.created_at[:19].replace("T", " ") + " UTC"),
        status=_e(status[:1].upper() + status[1:]),
        status_class="good" if result.passed else "bad",
        section=privacy_audit_section([result]),
    )


@cache
def _templates() -> dict[str, Template]:
    text = resources.files("tensafe.audit").joinpath("templates", "canary.html").read_text("utf-8")
    parts = _BLOCK.split(text)
    return {name: Template(body) for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


__all__ = ["privacy_audit_section", "render_canary_html"]
