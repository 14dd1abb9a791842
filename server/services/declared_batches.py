"""Guards on batches a client builds itself (client-declared sampling).

Such a run declares N and q and the ε is computed for Poisson(q) batches over N
records; the server cannot see how the client sampled, but it refuses what no honest
Poisson sampler produces:

* a logical batch with more examples than N;
* a logical batch above the Binomial(N, q) tail at probability 1e-9 (an honest run of a
  billion steps would see that once);
* the same example twice in one logical batch (its sensitivity would be 2·C, not C).

Datums are compared by content (tokens and every loss input), across all the
``forward_backward`` calls of one logical batch.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from server.errors import ValidationError
from tensafe.losses.batch import Datum

#: Probability under which a logical batch size counts as impossible for the declared q.
TAIL = 1e-9


@functools.lru_cache(maxsize=256)
def binomial_ceiling(dataset_size: int, sample_rate: float, *, tail: float = TAIL) -> int:
    """The largest logical batch size an honest Poisson(q) sampler over N records
    reaches with probability more than ``tail``: ``P(Binomial(N, q) > k) ≤ tail``."""
    if sample_rate >= 1.0:
        return dataset_size
    return int(min(dataset_size, stats.binom.isf(tail, dataset_size, sample_rate)))


def example_digests(batch: Sequence[Datum] | Mapping[str, object]) -> list[bytes]:
    """One SHA-256 per example of a request's batch (datums, or ``BatchData`` arrays)."""
    if isinstance(batch, Mapping):
        ids = [np.asarray(r) for r in batch["input_ids"]]  # type: ignore[index, union-attr]
        mask = batch.get("attention_mask")
        labels = batch.get("labels")
        out = []
        for i, row in enumerate(ids):
            n = int(np.asarray(mask[i]).sum()) if mask is not None else len(row)  # type: ignore[index]
            parts = [row[:n]]
            if labels is not None:
                parts.append(np.asarray(labels[i])[:n])  # type: ignore[index]
            out.append(_digest(parts))
        return out
    return [
        _digest(
            [np.asarray(d.tokens)]
            + [np.asarray(d.loss_fn_inputs[k]) for k in sorted(d.loss_fn_inputs)],
            names=sorted(d.loss_fn_inputs),
        )
        for d in batch
    ]


def _digest(arrays: list[np.ndarray], *, names: Sequence[str] = ()) -> bytes:
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0")
    for array in arrays:
        wide = array.astype(np.float64 if array.dtype.kind == "f" else np.int64)
        h.update(len(wide).to_bytes(8, "little") + wide.tobytes())
    return h.digest()


@dataclass
class DeclaredBatchGuard:
    """What the current logical batch of a client-declared run holds (reset by
    ``optim_step``, forgotten with the engine's accumulator)."""

    seen: set[bytes] = field(default_factory=set)
    examples: int = 0

    def check(
        self, digests: Sequence[bytes], *, field_name: str, dataset_size: int, sample_rate: float
    ) -> None:
        """Whether a call's examples may join the logical batch (:meth:`add` them once
        the call succeeded).

        Raises:
            ValidationError: (``data[i]`` / ``batch.input_ids[i]``) an example repeated
                in the logical batch; (``data`` / ``batch``) the logical batch would exceed
                N or the Binomial(N, q) tail.
        """
        fresh: set[bytes] = set()
        for i, digest in enumerate(digests):
            if digest in self.seen or digest in fresh:
                raise ValidationError(
                    "this example is already in the logical batch; a record may be sampled "
                    "once per step (twice would count its data twice)",
                    field=f"{field_name}[{i}]",
                )
            fresh.add(digest)
        total = self.examples + len(digests)
        base = field_name.split(".")[0]
        if total > dataset_size:
            raise ValidationError(
                f"the logical batch would hold {total} examples, more than the declared dataset "
                f"size N = {dataset_size}",
                field=base,
            )
        ceiling = binomial_ceiling(dataset_size, sample_rate)
        if total > ceiling:
            raise ValidationError(
                f"the logical batch would hold {total} examples; Poisson sampling at the "
                f"declared q = {sample_rate:g} over N = {dataset_size} exceeds {ceiling} with "
                f"probability below {TAIL:g}: batches are not what the ε was computed for",
                field=base,
            )

    def add(self, digests: Sequence[bytes]) -> None:
        self.seen.update(digests)
        self.examples += len(digests)

    def reset(self) -> None:
        self.seen.clear()
        self.examples = 0


__all__ = ["TAIL", "DeclaredBatchGuard", "binomial_ceiling", "example_digests"]
