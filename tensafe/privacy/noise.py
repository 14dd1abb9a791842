"""Gaussian noise for DP-SGD, drawn with Opacus' ``_generate_noise``.

The noise is drawn once per logical batch, at ``optim_step``, with standard
deviation ``σ·C`` on the clipped *sum*; the engine then divides by the expected
batch size ``q·N``.

The generator is seeded from the operating system's CSPRNG (``secrets``) unless a
``seed`` is given explicitly — a test-only option: anyone who knows the seed can
regenerate the noise and subtract it. ``secure_mode=True`` additionally ignores any
seed, never exports the generator state, and uses Opacus' secure sampling (sum of
several Gaussian draws) that defeats floating-point attacks on the noise.
"""

from __future__ import annotations

import secrets

import torch
from opacus.optimizers.optimizer import _generate_noise


class NoiseSource:
    """A seeded Gaussian noise generator for one training run.

    Example::

        noise = NoiseSource(secure_mode=True)
        g = clipped_sum + noise.gaussian_like(clipped_sum, std=sigma * max_grad_norm)
    """

    def __init__(
        self, *, secure_mode: bool, seed: int | None = None, device: torch.device | str = "cpu"
    ) -> None:
        self.secure_mode = secure_mode
        self.generator = torch.Generator(device=device)
        if secure_mode or seed is None:
            self.generator.manual_seed(secrets.randbits(63))
        else:
            self.generator.manual_seed(seed)

    def gaussian_like(self, reference: torch.Tensor, *, std: float) -> torch.Tensor:
        """A tensor shaped like ``reference`` with i.i.d. N(0, std²) entries."""
        return _generate_noise(
            std, reference, generator=self.generator, secure_mode=self.secure_mode
        )

    def reseed(self) -> None:
        """Draw a fresh seed from the OS CSPRNG."""
        self.generator.manual_seed(secrets.randbits(63))

    def state_dict(self) -> dict[str, object]:
        """Generator state for exact resumption; empty in secure mode (never exported)."""
        if self.secure_mode:
            return {}
        return {"rng_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict`; in secure mode the generator is re-seeded instead."""
        if self.secure_mode:
            self.reseed()
        elif "rng_state" in state:
            self.generator.set_state(state["rng_state"])  # type: ignore[arg-type]


__all__ = ["NoiseSource"]
