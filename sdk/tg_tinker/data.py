"""Client-side data helpers: Poisson batch sampling and prompt/completion batches.

**Why Poisson sampling.** TenSafe's privacy accountant (PRV or RDP) computes ε
for the *subsampled* Gaussian mechanism under Poisson sampling: at every step
each example of your dataset is included independently with probability
``q = expected_batch_size / dataset_size``. The guarantee the server reports is
only as good as that assumption. Fixed-size shuffled batches (a ``DataLoader``
with ``shuffle=True``) are a different mechanism; the reported ε does not hold
for them and the real privacy loss is weaker than reported. Use
:class:`PoissonBatchSampler`, and declare the same ``dataset_size`` and
``sample_rate`` in your :class:`~tg_tinker.DPConfig`.

**Empty batches.** Under Poisson sampling a batch can be empty (probability
``(1 - q) ** N``). Skip ``forward_backward`` for it but still call
``optim_step()``: the server then takes a noise-only step, which is exactly what
the accountant charged for.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence

import numpy as np

from tg_tinker.errors import ValidationError
from tg_tinker.types import BatchData, Datum, ModelInput, TensorData

IGNORE_INDEX = -100


class PoissonBatchSampler:
    """Yields batches of dataset indices, each index included independently with
    probability ``sample_rate`` (so batch sizes vary, and may be 0).

    Args:
        dataset_size: N, the number of examples (privacy units) in your dataset.
        sample_rate: q in (0, 1]; the expected batch size is q·N.
        num_steps: batches per pass of ``for batch in sampler``; default
            ``round(1 / q)`` (one "epoch" in expectation).
        seed: a fixed seed, for reproducible experiments only; needs ``secure=False``.
        secure: True (the default) seeds the generator from the operating system's
            CSPRNG (:mod:`secrets`), so nobody can predict or replay which examples
            were sampled. Note that numpy's generator itself is not a CSPRNG.

    Raises:
        ValidationError: an argument is out of range, or ``seed`` with ``secure=True``.

    Example::

        sampler = PoissonBatchSampler(len(dataset), sample_rate=0.01)
        for indices in sampler:            # one numpy array of indices per step
            if len(indices):
                tc.forward_backward([dataset[i] for i in indices])
            tc.optim_step()                # always, even for an empty batch
    """

    def __init__(
        self,
        dataset_size: int,
        sample_rate: float,
        *,
        num_steps: int | None = None,
        seed: int | None = None,
        secure: bool = True,
    ) -> None:
        if (
            isinstance(dataset_size, bool)
            or not isinstance(dataset_size, (int, np.integer))
            or dataset_size < 1
        ):
            raise ValidationError(
                f"must be a positive integer, got {dataset_size!r}", field="dataset_size"
            )
        if not 0.0 < float(sample_rate) <= 1.0:
            raise ValidationError(f"must be in (0, 1], got {sample_rate!r}", field="sample_rate")
        if num_steps is not None and num_steps < 1:
            raise ValidationError(f"must be >= 1, got {num_steps!r}", field="num_steps")
        if seed is not None and secure:
            raise ValidationError(
                "a fixed seed makes the sampled batches predictable; pass secure=False "
                "as well to use one (experiments and tests only)",
                field="seed",
            )
        self.dataset_size = int(dataset_size)
        self.sample_rate = float(sample_rate)
        self.num_steps = (
            num_steps if num_steps is not None else max(1, round(1.0 / self.sample_rate))
        )
        self.secure = secure
        entropy = secrets.randbits(128) if seed is None else seed
        self._rng = np.random.Generator(np.random.PCG64(entropy))

    @property
    def expected_batch_size(self) -> float:
        """q·N, the divisor the server uses for the noisy gradient."""
        return self.sample_rate * self.dataset_size

    def __repr__(self) -> str:
        return (
            f"PoissonBatchSampler(dataset_size={self.dataset_size}, "
            f"sample_rate={self.sample_rate}, num_steps={self.num_steps}, secure={self.secure})"
        )

    def __len__(self) -> int:
        return self.num_steps

    def sample(self) -> np.ndarray:
        """One batch: the sorted int64 indices of the included examples (maybe none)."""
        included = self._rng.random(self.dataset_size) < self.sample_rate
        return np.flatnonzero(included).astype(np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        """``num_steps`` fresh batches; iterating again continues the random stream."""
        for _ in range(self.num_steps):
            yield self.sample()


def _tokens(values: Sequence[int] | np.ndarray, field: str) -> list[int]:
    arr = np.asarray(values)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValidationError("must be a 1-D sequence of integer token ids", field=field)
    return [int(t) for t in arr.tolist()]


def _prompt_completion(
    prompt_tokens: Sequence[int] | np.ndarray,
    completion_tokens: Sequence[int] | np.ndarray,
    field: str,
) -> tuple[list[int], list[int]]:
    prompt = _tokens(prompt_tokens, f"{field}.prompt_tokens")
    completion = _tokens(completion_tokens, f"{field}.completion_tokens")
    if not prompt:
        raise ValidationError("needs at least one token", field=f"{field}.prompt_tokens")
    if not completion:
        raise ValidationError("needs at least one token", field=f"{field}.completion_tokens")
    return prompt, completion


def datum_from_prompt_completion(
    prompt_tokens: Sequence[int] | np.ndarray, completion_tokens: Sequence[int] | np.ndarray
) -> Datum:
    """One :class:`Datum` that trains on the completion only.

    With ``tokens = prompt + completion``, the model input is ``tokens[:-1]`` and
    position ``t`` predicts ``tokens[t + 1]`` (``target_tokens``); ``weights`` is 1
    where that target is a completion token and 0 where it is a prompt token.

    Example::

        d = datum_from_prompt_completion([1, 2, 3], [4, 5])
        d.model_input.to_ints()                      # [1, 2, 3, 4]
        d.loss_fn_inputs["target_tokens"].data       # [2, 3, 4, 5]
        d.loss_fn_inputs["weights"].data             # [0.0, 0.0, 1.0, 1.0]
    """
    prompt, completion = _prompt_completion(prompt_tokens, completion_tokens, "example")
    tokens = prompt + completion
    weights = [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
    n = len(tokens) - 1
    return Datum(
        model_input=ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": TensorData(data=tokens[1:], dtype="int64", shape=[n]),
            "weights": TensorData(data=weights, dtype="float32", shape=[n]),
        },
    )


def batch_from_prompt_completions(
    examples: Sequence[tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray]],
    *,
    pad_token_id: int = 0,
) -> BatchData:
    """A right-padded :class:`BatchData` that trains on the completions only.

    Row ``i`` holds ``prompt + completion`` padded with ``pad_token_id``;
    ``labels[t]`` is the next token when that token belongs to the completion and
    ``-100`` otherwise (prompt, last position, padding), as in the training guide.
    An empty ``examples`` gives an empty BatchData: skip ``forward_backward`` for
    it and still call ``optim_step()``.
    """
    rows: list[list[int]] = []
    labels: list[list[int]] = []
    for i, (prompt_tokens, completion_tokens) in enumerate(examples):
        prompt, completion = _prompt_completion(prompt_tokens, completion_tokens, f"examples[{i}]")
        tokens = prompt + completion
        rows.append(tokens)
        labels.append(
            [
                tokens[t + 1] if t + 1 >= len(prompt) else IGNORE_INDEX
                for t in range(len(tokens) - 1)
            ]
            + [IGNORE_INDEX]
        )
    width = max((len(r) for r in rows), default=0)
    return BatchData(
        input_ids=[r + [pad_token_id] * (width - len(r)) for r in rows],
        attention_mask=[[1] * len(r) + [0] * (width - len(r)) for r in rows],
        labels=[lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels],
    )


__all__ = [
    "IGNORE_INDEX",
    "PoissonBatchSampler",
    "batch_from_prompt_completions",
    "datum_from_prompt_completion",
]
