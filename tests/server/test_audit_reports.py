"""The audit report: a strict Content-Security-Policy on the HTML page, and a cache that
rebuilds the report when — and only when — the ledger changes (tampering included)."""

from __future__ import annotations

import uuid

from server.services.audits import REPORTS

from .harness import TRAIN_AND_OFFICER, Harness
from .test_budgets import _tamper


def _budget(api: Harness) -> tuple[dict[str, str], str]:
    headers = api.tenant(scopes=TRAIN_AND_OFFICER)
    dataset = "audit-" + uuid.uuid4().hex[:8]
    response = api.client.post(
        "/v1/budgets", json={"dataset_id": dataset, "epsilon_cap": 3.0}, headers=headers
    )
    assert response.status_code == 201, response.text
    return headers, dataset


def test_the_html_report_has_a_strict_csp(api: Harness) -> None:
    headers, dataset = _budget(api)
    response = api.client.get(f"/v1/audit/{dataset}/report?format=html", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert "script-src" not in directives  # scripts fall back to 'none'
    assert directives["img-src"] == "data:" and directives["frame-ancestors"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "<script" not in response.text


def test_reports_are_cached_until_the_ledger_changes(api: Harness) -> None:
    headers, dataset = _budget(api)
    url = f"/v1/audit/{dataset}/report"
    first = api.client.get(url, headers=headers).json()
    hits = REPORTS.hits
    assert api.client.get(url, headers=headers).json() == first
    assert REPORTS.hits == hits + 1  # served from the cache
    # a cap change appends a ledger row: a new report
    patched = api.client.patch(f"/v1/budgets/{dataset}", json={"epsilon_cap": 4.0}, headers=headers)
    assert patched.status_code == 200, patched.text
    second = api.client.get(url, headers=headers).json()
    assert second != first and second["chain"]["ok"]
    # editing a stored row behind the server's back is never hidden by the cache
    _tamper(  # raw SQL, past the append-only guards
        api.context.db,
        ["UPDATE ledger_events SET cap = 1e9 WHERE dataset_id = :d AND seq = 1"],
        {"d": dataset},
    )
    tampered = api.client.get(url, headers=headers).json()
    assert not tampered["chain"]["ok"]
    assert "integrity check failed" in tampered["warnings"][0]
