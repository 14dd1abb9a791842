"""The seam through which a privacy audit takes part in a DP step (white-box).

A :class:`StepProbe` attached to a :class:`~tensafe.engine.TrainingEngine` adds
contributions to the clipped sum of every logical batch — each formed and clipped
like one more example's (:meth:`~tensafe.engine.DPState.clip_norms`) — and then sees
the noisy gradient the optimizer applies. That is the threat model of DP-SGD's
analysis (every noisy gradient is released), so it is where an audit measures the
step itself: :mod:`tensafe.audit.canaries` implements it with gradient canaries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from tensafe.engine.dp_state import DPState


class StepProbe(Protocol):
    """Extra clipped contributions in, the released noisy gradient out."""

    def contributions(self, dp: DPState) -> Mapping[nn.Parameter, torch.Tensor]:
        """Clipped contributions to add to this step's clipped sum, by parameter (at
        least float32, shaped like the parameter). Called once per ``optim_step``,
        before the noise is drawn."""
        ...

    def observe(self, gradients: Sequence[torch.Tensor | None], dp: DPState) -> None:
        """The step's noisy gradients, ``(clipped sum + noise) ÷ q·N``, in the engine's
        parameter order, after the optimizer applied them."""
        ...


__all__ = ["StepProbe"]
