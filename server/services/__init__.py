"""Protocol-agnostic service logic: every query is scoped by tenant here, not in routes.

:mod:`.tenants` (API keys), :mod:`.keys` (wrapped tenant keys), :mod:`.runs`,
:mod:`.operations` (futures), :mod:`.artifacts`, :mod:`.privacy` (``dp_steps``).
"""
