"""White-box gradient canaries: m Dirac gradients that join DP steps like examples.

Each canary is a gradient that is zero except for one coordinate of the trainable
parameters (a "Dirac" canary, as in Steinke, Nasr & Jagielski 2023, §6), with L2
norm ``raw_norm`` — larger than the clipping norm C, so that clipping matters. The
coordinates are distinct, drawn uniformly; each canary is *included* in the audit
with probability ½, independently; an included canary then joins every logical
batch independently with the run's sampling rate q, exactly like a record under
Poisson sampling. Its contribution is clipped by the engine's own rule
(:meth:`~tensafe.engine.DPState.clip_norms`) and added to the clipped sum before the
noise is drawn (:class:`~tensafe.engine.probes.StepProbe`).

A canary's *score* is its coordinate of the total released update: the sum over
steps of the noisy gradient ``(clipped sum + noise) ÷ q·N``, multiplied back by
``q·N / C`` — so an included canary scores about ``q · steps`` on average (it
contributed C in each step it joined) and an excluded one about 0, both blurred by
the noise (σ√steps) and by the real examples' gradients in that coordinate.

All randomness (coordinates, inclusion, per-step presence) comes from one
:class:`~tensafe.datasets.sampling.UniformSource`: the OS CSPRNG by default, a seed
for reproducible tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from tensafe.datasets.sampling import UniformSource
from tensafe.engine.dp_state import DPState
from tensafe.errors import ConfigError


class GradientCanaries:
    """m Dirac gradient canaries attached to one DP engine (a :class:`StepProbe`).

    Example::

        from tensafe.datasets.sampling import SeededUniforms
        canaries = GradientCanaries(
            params=engine.params, canaries=1000, sample_rate=0.5, raw_norm=10.0,
            source=SeededUniforms(7),
        )
        engine.attach_probe(canaries)
        ...  # forward_backward / optim_step as usual
        scores, included = canaries.scores, canaries.included

    Args:
        params: the engine's trainable parameters, in its order (``engine.params``).
        canaries: m, at most the number of trainable coordinates.
        sample_rate: q, the chance an included canary joins a step.
        raw_norm: each canary gradient's L2 norm before clipping (> 0).
        source: the audit's randomness.

    Raises:
        ConfigError: ``canaries`` not in [1, number of coordinates], ``sample_rate``
            not in (0, 1], ``raw_norm`` not finite and > 0.
    """

    def __init__(
        self,
        *,
        params: Sequence[nn.Parameter],
        canaries: int,
        sample_rate: float,
        raw_norm: float,
        source: UniformSource,
    ) -> None:
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        if (
            isinstance(canaries, bool)
            or not isinstance(canaries, int)
            or not 1 <= canaries <= total
        ):
            raise ConfigError(
                "canaries", f"must be an integer in [1, {total}] (trainable coordinates)"
            )
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError("sample_rate", f"must be in (0, 1], got {sample_rate!r}")
        if not np.isfinite(raw_norm) or raw_norm <= 0:
            raise ConfigError("raw_norm", f"must be finite and > 0, got {raw_norm!r}")
        self.params = list(params)
        self.sample_rate = float(sample_rate)
        self.raw_norm = float(raw_norm)
        self._source = source
        coordinates = np.sort(np.asarray(source.choose(total, canaries), dtype=np.int64))
        #: which canaries are in the audit (each with probability ½)
        self.included: np.ndarray = source.uniforms(canaries) <= 0.5
        #: each canary's score so far (see the module docstring)
        self.scores: np.ndarray = np.zeros(canaries, dtype=np.float64)
        #: how many steps each canary joined
        self.presences: np.ndarray = np.zeros(canaries, dtype=np.int64)
        starts = np.cumsum([0, *sizes])
        owner = np.searchsorted(starts, coordinates, side="right") - 1
        self._sites: list[tuple[int, np.ndarray, torch.Tensor]] = [
            (
                int(j),
                np.flatnonzero(owner == j),
                torch.as_tensor(coordinates[owner == j] - starts[j]),
            )
            for j in np.unique(owner)
        ]
        self._present = np.zeros(canaries, dtype=bool)

    @property
    def count(self) -> int:
        """m, the number of canaries."""
        return int(self.scores.shape[0])

    def contributions(self, dp: DPState) -> Mapping[nn.Parameter, torch.Tensor]:
        """This step's clipped canary gradients: which included canaries join is drawn
        (probability q each); each is clipped by ``dp``'s rule."""
        self._present = self.included & (self._source.uniforms(self.count) <= self.sample_rate)
        self.presences += self._present
        out: dict[nn.Parameter, torch.Tensor] = {}
        for j, which, offsets in self._sites:
            joined = self._present[which]
            if not joined.any():
                continue
            param = self.params[j]
            norms = torch.full((int(joined.sum()),), self.raw_norm, dtype=torch.float32)
            values = norms * dp.clip_norms(norms)  # a Dirac gradient's norm is its value
            flat = torch.zeros(param.numel(), dtype=torch.promote_types(param.dtype, torch.float32))
            flat[offsets[torch.as_tensor(joined)]] = values.to(flat.dtype)
            out[param] = flat.view(param.shape).to(param.device)
        return out

    def observe(self, gradients: Sequence[torch.Tensor | None], dp: DPState) -> None:
        """Add each canary's coordinate of the released gradient, in units of C per
        example (× q·N / C), to its score."""
        scale = dp.config.expected_batch_size / dp.config.max_grad_norm
        for j, which, offsets in self._sites:
            grad = gradients[j]
            if grad is None:
                continue
            values = grad.detach().reshape(-1)[offsets.to(grad.device)].double().cpu().numpy()
            self.scores[which] += values * scale


__all__ = ["GradientCanaries"]
