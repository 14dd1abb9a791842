"""The privacy budget of one dataset: every run's steps, composed, against a cap.

Pure and in memory: no database, no clock. The server keeps one
:class:`DatasetBudget` per (tenant, dataset), rebuilds it from the ledger after a
restart (:meth:`DatasetBudget.from_state`), and asks it, before the noise of a step
is drawn, whether the step fits (:meth:`DatasetBudget.check_step`).

Which composition, and why it is an upper bound
-----------------------------------------------
Every DP-SGD step of every run on the dataset is one application of the
Poisson-subsampled Gaussian mechanism to that dataset: each example is included
with probability ``q`` and the clipped sum receives N(0, σ²C²). Later steps (of the
same run or of another run started after looking at earlier models) may depend on
the outputs of earlier ones, so the steps form an *adaptive sequential
composition*. The adaptive composition theorem (for privacy loss distributions /
PRVs as for RDP) bounds the privacy loss of any individual by the composition of
**all** steps ever taken on the dataset, whatever run took them. The dataset's ε is
therefore ε of the concatenated history of all its runs — and since a composition
does not depend on the order of its parts (its privacy loss distribution is the
convolution of theirs), ε of the multiset of ``(σ, q)`` step counts.

Runs that train on disjoint subsets, or on a subset at rate q, are bounded too: an
individual outside a run's data is never sampled by it (its steps cost that person
nothing), one inside is sampled with probability ``q``; counting every step for
every individual can only over-count. Parallel composition would be tighter for
disjoint subsets; we do not rely on knowing which rows a run used.

Conservative ε
--------------
Budget decisions use :meth:`EpsilonSchedule.epsilon`, which rounds each step count
up to a geometric grid before evaluating (see :mod:`tensafe.privacy.schedule`): an
upper bound on the exact ε, at most ``s = 0.25 %`` above it with PRV, and cached, so
a check costs microseconds except when a count crosses a grid point.
:meth:`DatasetBudget.exact_epsilon` gives the un-rounded value for reports.

Modules
-------
* :mod:`~tensafe.privacy.budget.dataset` — :class:`DatasetBudget`: the cap, checks
  and charges, under one lock.
* :mod:`~tensafe.privacy.budget.records` — what it returns: :class:`BudgetDecision`,
  :class:`StepCharge`, :class:`CapChange`.
* :mod:`~tensafe.privacy.budget.tally` — the steps recorded, per run and per
  ``(σ, q)`` class.
* :mod:`~tensafe.privacy.budget.state` — the exported state's layout
  (:data:`BUDGET_STATE_FORMAT`), written and read back with checks.
* :mod:`~tensafe.privacy.budget.prefetch` — which ε values to evaluate in the
  background before a step needs them.
* :mod:`~tensafe.privacy.budget.checks` — input validation shared by the above.
* :mod:`~tensafe.privacy.budget.versions` — :func:`accounting_versions`, stamped on
  ledger rows.
"""

from tensafe.privacy.budget.dataset import DatasetBudget
from tensafe.privacy.budget.records import BudgetDecision, CapChange, StepCharge
from tensafe.privacy.budget.state import BUDGET_STATE_FORMAT
from tensafe.privacy.budget.versions import ACCOUNTING_LIBRARIES, accounting_versions

__all__ = [
    "ACCOUNTING_LIBRARIES",
    "BUDGET_STATE_FORMAT",
    "BudgetDecision",
    "CapChange",
    "DatasetBudget",
    "StepCharge",
    "accounting_versions",
]
