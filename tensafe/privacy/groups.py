"""Clipping several datums as one contribution (a record's completions, a person's records).

The clipper bounds each *example's* gradient by C. When a privacy unit owns several
datums of a batch — several completions of one drawn prompt, or several records of one
patient — the bound must hold for the unit: the *sum* of its datums' gradients is
clipped to C. :class:`Grouping` does this without changing any per-layer code: every
per-example quantity the clipper computes from a layer's inputs and output gradients is
a sum over token positions, so stacking a unit's datums along the token axis
(``(B, T, …) → (G, k·T, …)``, empty slots zero) turns "per example" into "per unit"
exactly. Unit gradients, norms and clip factors follow; ``G`` replaces ``B``.

Example:
    >>> import torch
    >>> g = Grouping.from_groups([7, 3, 7])   # datums 0 and 2 are one unit
    >>> g.num_groups, g.width
    (2, 2)
    >>> g.apply(torch.ones(3, 4, 5)).shape    # (units, datums per unit × tokens, dim)
    torch.Size([2, 8, 5])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tensafe.errors import ConfigError


@dataclass(frozen=True)
class Grouping:
    """Which batch rows form each unit.

    Attributes:
        members: ``(G, k)`` row indices of each unit's datums, ``-1`` for an empty slot
            (``k`` is the largest unit's size); units in order of first appearance.
        batch_size: ``B``, the number of datums.
    """

    members: torch.Tensor
    batch_size: int

    @classmethod
    def from_groups(cls, groups: Sequence[int]) -> Grouping:
        """One unit per distinct label in ``groups`` (one label per datum).

        Raises:
            ConfigError: (``groups``) empty.
        """
        if len(groups) == 0:
            raise ConfigError("groups", "must give one unit label per datum")
        order: dict[int, list[int]] = {}
        for row, label in enumerate(groups):
            order.setdefault(int(label), []).append(row)
        width = max(len(rows) for rows in order.values())
        members = torch.full((len(order), width), -1, dtype=torch.long)
        for unit, rows in enumerate(order.values()):
            members[unit, : len(rows)] = torch.tensor(rows, dtype=torch.long)
        return cls(members=members, batch_size=len(groups))

    @property
    def num_groups(self) -> int:
        return int(self.members.shape[0])

    @property
    def width(self) -> int:
        return int(self.members.shape[1])

    def apply(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(B, T, …)`` → ``(G, k·T, …)`` (or ``(B, d)`` → ``(G, k, d)``), each unit's
        datums stacked along the token axis, empty slots zero.

        Raises:
            ConfigError: (``groups``) the tensor's batch dimension is not ``B``.
        """
        if tensor.shape[0] != self.batch_size:
            raise ConfigError(
                "groups", f"{self.batch_size} unit labels for a batch of {tensor.shape[0]}"
            )
        index = self.members.to(tensor.device)
        stacked = tensor[index.clamp(min=0)]  # (G, k, …)
        empty = (index < 0).reshape(*index.shape, *([1] * (tensor.dim() - 1)))
        stacked = stacked.masked_fill(empty, 0)
        if tensor.dim() >= 3 or (tensor.dim() == 2 and not tensor.is_floating_point()):
            return stacked.reshape(self.num_groups, -1, *tensor.shape[2:])
        return stacked  # (G, k, d): the datums are the unit's "tokens"


__all__ = ["Grouping"]
