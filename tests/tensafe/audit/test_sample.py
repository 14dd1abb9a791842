"""``docs/audit-sample.html`` is rendered from the templates shipped today.

The sample repeats ``tensafe/audit/templates/`` (its CSS, page and sections) filled
with a simulated ledger's values. Re-rendering it takes about 15–35 minutes (every
step is charged through the real PRV budget: ``make audit-sample``), too slow for a
test; this checks, in milliseconds, that every template's literal text is in the
sample as the renderer would put it there, so a template edit without a regenerated
sample fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

import pytest

from tensafe.audit import render

SAMPLE = Path(__file__).resolve().parents[3] / "docs" / "audit-sample.html"
REGENERATE = "regenerate docs/audit-sample.html with `make audit-sample`"


def substitutions_of(template: Template) -> re.Pattern[str]:
    """A pattern matching any ``template.substitute(...)``: its literal text, with
    anything in place of each placeholder."""
    text, parts, last = template.template, [], 0
    for match in template.pattern.finditer(text):
        parts.append(re.escape(text[last : match.start()]))
        parts.append(re.escape("$") if match.group("escaped") is not None else "(?s:.*?)")
        last = match.end()
    parts.append(re.escape(text[last:]))
    return re.compile("".join(parts))


@pytest.fixture(scope="module")
def sample() -> str:
    return SAMPLE.read_text(encoding="utf-8")


def test_pattern_matches_a_substitution_and_nothing_else() -> None:
    template = Template("<p>$a costs $$${b}.</p>")
    pattern = substitutions_of(template)
    assert pattern.fullmatch(template.substitute(a="x\ny", b="3"))
    assert not pattern.fullmatch("<p>x costs 3.</p>")


def test_sample_page_and_css_are_the_current_ones(sample: str) -> None:
    assert substitutions_of(render._page()).fullmatch(sample), REGENERATE
    assert f"<style>\n{render._resource('report.css')}</style>" in sample, REGENERATE


@pytest.mark.parametrize("name", sorted(render._sections()))
def test_sample_holds_each_current_section(sample: str, name: str) -> None:
    assert substitutions_of(render._sections()[name]).search(sample), f"{name}: {REGENERATE}"
