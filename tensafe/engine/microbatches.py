"""Splitting one call's batch into micro-batches, and putting their results back together.

A step's transient memory — activations, the per-layer tensors per-example clipping
keeps, the output-gradient book-keeping — grows with the number of examples run at
once. :class:`~tensafe.engine.TrainingEngine` with ``microbatch_examples=m`` runs at
most ``m`` examples at a time and returns what one pass over the whole batch returns:

- per-example clipping is per example (per unit with ``groups``), so the clipped
  sums of the micro-batches add up to the whole batch's clipped sum, up to float
  rounding, provided no unit is split — :func:`plan_micro_batches` never splits one;
- outputs are put back in the batch's order; ``loss:sum`` and the weight sum are
  added, and ``loss:mean`` is their quotient (never a mean of means);
- the clip statistics are computed once over every micro-batch's per-unit norms and
  factors (:func:`merge_clips`), so the clip fraction and the mean norm of the finite
  examples are those of the whole batch.

Example::

    plan_micro_batches(5, max_examples=2, groups=None)        # ((0, 1), (2, 3), (4,))
    plan_micro_batches(4, max_examples=2, groups=[7, 3, 7, 3])  # ((0, 2), (1, 3))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tensafe.engine.results import LossFnOutput
from tensafe.errors import ConfigError
from tensafe.losses import LossOutput, TokenBatch, take_rows
from tensafe.privacy.per_example import ClipResult


def check_microbatch_examples(value: int | None, *, field: str = "microbatch_examples") -> None:
    """Refuse anything but ``None`` (off) or a positive integer.

    Raises:
        ConfigError: naming ``field``.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, f"must be a positive integer or None (off), got {value!r}")


def plan_micro_batches(
    batch_size: int, *, max_examples: int | None, groups: Sequence[int] | None
) -> tuple[tuple[int, ...], ...]:
    """The rows of each micro-batch, each in increasing order.

    Without ``groups`` the batch is cut into consecutive runs of ``max_examples``
    rows. With ``groups`` (one unit label per row) every unit's rows stay in one
    micro-batch: units are packed in order of first appearance, a micro-batch is
    closed when the next unit would take it past ``max_examples``, and a unit larger
    than ``max_examples`` forms a micro-batch of its own (larger than the limit).
    ``max_examples=None`` gives one micro-batch of every row.

    Raises:
        ConfigError: (``groups``) not one label per row.
    """
    if groups is not None and len(groups) != batch_size:
        raise ConfigError("groups", f"{len(groups)} labels for {batch_size} examples")
    if max_examples is None or batch_size <= max_examples:
        return (tuple(range(batch_size)),)
    if groups is None:
        units = [[row] for row in range(batch_size)]
    else:
        by_label: dict[int, list[int]] = {}
        for row, label in enumerate(groups):  # int(): the labels as Grouping reads them
            by_label.setdefault(int(label), []).append(row)
        units = list(by_label.values())
    plans: list[tuple[int, ...]] = []
    current: list[int] = []
    for unit in units:
        if current and len(current) + len(unit) > max_examples:
            plans.append(tuple(sorted(current)))
            current = []
        current.extend(unit)
    plans.append(tuple(sorted(current)))
    return tuple(plans)


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch: the whole batch's ``rows`` it holds, the batch of those rows
    (padded to its own longest example) and their unit labels (``None`` without groups)."""

    rows: tuple[int, ...]
    batch: TokenBatch
    groups: tuple[int, ...] | None


def split_batch(
    batch: TokenBatch, *, max_examples: int | None, groups: Sequence[int] | None
) -> list[MicroBatch]:
    """``batch`` as micro-batches of :func:`plan_micro_batches`; a single micro-batch
    is ``batch`` itself, unchanged.

    Raises:
        ConfigError: (``groups``) not one label per example.
    """
    plans = plan_micro_batches(batch.batch_size, max_examples=max_examples, groups=groups)
    if len(plans) == 1:
        return [MicroBatch(rows=plans[0], batch=batch, groups=_labels(groups, plans[0]))]
    return [
        MicroBatch(rows=rows, batch=take_rows(batch, rows), groups=_labels(groups, rows))
        for rows in plans
    ]


def _labels(groups: Sequence[int] | None, rows: tuple[int, ...]) -> tuple[int, ...] | None:
    return None if groups is None else tuple(groups[r] for r in rows)


class LossTally:
    """The loss side of a call's result, filled one micro-batch at a time: each
    example's outputs in its batch position, the summed weighted loss and the
    summed weights."""

    def __init__(self, batch_size: int) -> None:
        self._outputs: list[LossFnOutput | None] = [None] * batch_size
        self.loss_sum = 0.0
        self.weight_sum = 0.0
        self.num_tokens = 0

    def add(self, part: MicroBatch, out: LossOutput) -> None:
        """Record ``part``'s loss output (copies to host memory; ``out`` may be dropped)."""
        self.weight_sum += float(out.weight_sum.sum())
        self.loss_sum += float(out.elementwise.sum())
        self.num_tokens += part.batch.num_tokens
        logprobs = out.logprobs.float().cpu().numpy()
        elementwise = out.elementwise.float().cpu().numpy()
        for i, (row, n) in enumerate(zip(part.rows, part.batch.lengths, strict=True)):
            self._outputs[row] = LossFnOutput(
                logprobs=logprobs[i, :n].copy(), elementwise_loss=elementwise[i, :n].copy()
            )

    @property
    def loss_mean(self) -> float:
        """``loss_sum / weight_sum`` (0 when no position had weight)."""
        return self.loss_sum / self.weight_sum if self.weight_sum > 0 else 0.0

    def outputs(self) -> list[LossFnOutput]:
        """Every example's outputs, in batch order.

        Raises:
            RuntimeError: an example was never recorded (a bug in the caller).
        """
        missing = [i for i, o in enumerate(self._outputs) if o is None]
        if missing:
            raise RuntimeError(f"no loss output recorded for example {missing[0]}")
        return [o for o in self._outputs if o is not None]


def add_sums(
    total: dict[nn.Parameter, torch.Tensor], sums: Mapping[nn.Parameter, torch.Tensor]
) -> None:
    """Add per-parameter gradient sums into ``total`` in at least float32 (in place:
    the first sums of a parameter are kept, not copied, so they must be the caller's)."""
    for p, s in sums.items():
        acc = total.get(p)
        s32 = s.to(torch.promote_types(s.dtype, torch.float32))
        total[p] = s32 if acc is None else acc.add_(s32)


def merge_clips(
    clips: Sequence[ClipResult], *, sums: dict[nn.Parameter, torch.Tensor]
) -> ClipResult:
    """One :class:`ClipResult` for the whole batch: every micro-batch's per-unit
    norms, factors and non-finite flags side by side (their ``sums`` are not read),
    with the added ``sums``."""
    return ClipResult(
        norms=torch.cat([c.norms for c in clips]),
        factors=torch.cat([c.factors for c in clips]),
        sums=sums,
        nonfinite=torch.cat([c.nonfinite for c in clips]),
    )


__all__ = [
    "LossTally",
    "MicroBatch",
    "add_sums",
    "check_microbatch_examples",
    "merge_clips",
    "plan_micro_batches",
    "split_batch",
]
