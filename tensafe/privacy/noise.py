"""Gaussian noise for DP-SGD, from a cryptographically secure generator.

The noise is drawn once per logical batch, at ``optim_step``, with standard
deviation ``σ·C`` on the clipped *sum*; the engine then divides by the expected
batch size ``q·N``.

Where the randomness comes from (:class:`NoiseSource`):

* **Default.** An AES-256-CTR keystream (:class:`~tensafe.privacy.csprng.KeystreamNormals`)
  under a 256-bit key from the OS CSPRNG (``secrets``), turned into normals by
  Box–Muller in float64. The key is fresh for every source, replaced by
  :meth:`NoiseSource.reseed` and on :meth:`NoiseSource.load_state_dict`, and never
  exported (``state_dict()`` is empty). Nothing a client sends reaches it.
* **Secure mode** (``secure_mode=True``) additionally applies Opacus' mitigation of
  floating-point attacks: each coordinate is the sum of 2n = 4 draws divided by 2
  (arXiv:2107.10138 §5.1, as in Opacus' ``_generate_noise``). Any seed is ignored.
* **Test-only deterministic mode** (a ``seed`` and ``secure_mode=False``): the same
  construction keyed with ``SHA-256(domain ‖ seed)``, so tests can compare runs bit
  for bit along the production code path. Anyone who knows the seed can regenerate
  the noise and subtract it from the released weights: it warns
  :class:`InsecureNoiseWarning`, and the server allows it only in development.

Devices: the noise is generated on the host in float64, scaled, and rounded once to
the reference tensor's dtype. For a CUDA reference it is written into pinned
(page-locked) host memory and copied with ``non_blocking=True``; torch's caching
host allocator keeps the buffer until the copy has finished, and later kernels on
the stream are ordered after it. No device-side CSPRNG is provided (a GPU keystream
would need its own, separately verified kernel).
"""

from __future__ import annotations

import hashlib
import math
import secrets
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from tensafe.errors import ConfigError
from tensafe.privacy.csprng import KEY_BYTES, KeystreamNormals

SECURE_DRAWS = 4
"""Draws summed per coordinate in secure mode (Opacus' 2n with n = 2); the sum is
divided by √4 = 2 so the standard deviation is unchanged."""

_CHUNK = 1 << 18
"""Normals per keystream call (a chunk's float64 buffers are 2 MiB each).
Each chunk costs about a dozen numpy/torch calls; at 256 Ki values their dispatch is
amortised and two workers rarely wait on each other for the GIL (SmolLM2's 135 M noisy
means on a 2-core CPU, two workers: 0.93 s at 64 Ki, 0.69 s at 256 Ki)."""
_TEST_KEY_DOMAIN = b"tensafe/test-only-dp-noise-key/v1\x00"


class InsecureNoiseWarning(UserWarning):
    """A noise source was made deterministic (seeded): for tests only."""


class NoiseSource:
    """The Gaussian noise generator of one training run (AES-256-CTR keystream).

    Example::

        noise = NoiseSource(secure_mode=False)
        g = clipped_sum + noise.gaussian_like(clipped_sum, std=sigma * max_grad_norm)

    Args:
        secure_mode: sum several draws per coordinate (Opacus' floating-point
            mitigation, 4× the keystream) and ignore ``seed``.
        seed: **test-only.** Key the keystream from this integer so runs repeat bit
            for bit (warns :class:`InsecureNoiseWarning`). ``None`` (the default, the
            only safe choice for real data): a random key from the OS CSPRNG.
        device: the device of the tensors the noise is added to (the run's device).
            For CUDA, the noise is staged in pinned host memory and copied
            asynchronously.

    Raises:
        ConfigError: ``secure_mode`` is not a bool, or ``seed`` not an int or None.
    """

    def __init__(
        self, *, secure_mode: bool, seed: int | None = None, device: torch.device | str = "cpu"
    ) -> None:
        if not isinstance(secure_mode, bool):
            raise ConfigError("secure_mode", "must be a bool")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError("seed", "must be an integer or None")
        self.secure_mode = secure_mode
        self.device = torch.device(device)
        self._seed: int | None = None if secure_mode else seed
        if self._seed is None:
            self._normals = KeystreamNormals(key=secrets.token_bytes(KEY_BYTES))
        else:
            warnings.warn(
                "DP noise is seeded (test-only deterministic mode): anyone who knows the "
                "seed can remove the noise; never use it on real data",
                InsecureNoiseWarning,
                stacklevel=2,
            )
            self._normals = KeystreamNormals(key=_test_key(self._seed))

    def __repr__(self) -> str:
        mode = "deterministic" if self.deterministic else "csprng"
        return f"NoiseSource({mode}, secure_mode={self.secure_mode}, device={self.device})"

    @property
    def deterministic(self) -> bool:
        """Whether the noise is reproducible from a test seed (never in production)."""
        return self._seed is not None

    def gaussian_like(self, reference: torch.Tensor, *, std: float) -> torch.Tensor:
        """A new tensor with ``reference``'s shape, dtype and device and i.i.d.
        N(0, std²) entries (zeros when ``std == 0``, as Opacus does).

        Raises:
            ConfigError: ``std`` is negative or not finite (field ``std``), or
                ``reference`` is not a floating-point tensor on this source's device
                (field ``reference``).
        """
        _check_std(std)
        self._check_reference(reference)
        if std == 0:
            return torch.zeros_like(reference, memory_format=torch.contiguous_format)
        on_cuda = reference.device.type == "cuda"
        host = torch.empty(reference.shape, dtype=reference.dtype, pin_memory=on_cuda)
        self._draw_into([host], std=std)
        if reference.device.type == "cpu":
            return host
        return host.to(reference.device, non_blocking=on_cuda)

    def noisy_means(
        self,
        sums: Sequence[torch.Tensor],
        *,
        std: float,
        divisor: float,
        dtypes: Sequence[torch.dtype] | None = None,
    ) -> list[torch.Tensor]:
        """For each tensor ``s`` of ``sums``, a new tensor ``(s + Z) / divisor`` with
        ``Z`` i.i.d. N(0, std²): DP-SGD's noisy mean gradient, for all of a step's
        parameters in one call.

        Each entry is formed in float64 from ``s``, the float64 normal and ``std``,
        and rounded once to its output dtype (``dtypes[i]``, by default ``s``'s
        dtype). On CPU the work is split into chunks of the flattened tensors, in
        order, which the noise workers share; chunk ``k`` uses keystream call
        ``first + k``, so the noise is the same as :meth:`gaussian_like` on each tensor
        in turn, whatever the number of workers, and every value is computed where it
        is written (no full-size temporaries, no torch intra-op parallel regions
        between the chunks). For a CUDA tensor the noise is staged as in
        :meth:`gaussian_like` and the sum and division run on the device.

        Raises:
            ConfigError: ``std`` negative or not finite (field ``std``), ``divisor``
                not a finite number > 0 (field ``divisor``), ``dtypes`` not one
                floating-point dtype per tensor (field ``dtypes``), or a tensor that
                :meth:`gaussian_like` would refuse (field ``reference``).
        """
        _check_std(std)
        if (
            isinstance(divisor, bool)
            or not isinstance(divisor, int | float)
            or not math.isfinite(divisor)
            or divisor <= 0
        ):
            raise ConfigError("divisor", f"must be a finite number > 0, got {divisor!r}")
        sums = list(sums)
        for s in sums:
            self._check_reference(s)
        out_dtypes = [s.dtype for s in sums] if dtypes is None else list(dtypes)
        if len(out_dtypes) != len(sums) or not all(
            isinstance(d, torch.dtype) and d.is_floating_point for d in out_dtypes
        ):
            raise ConfigError("dtypes", "must give one floating-point dtype per tensor")
        if self.device.type != "cpu":
            return [
                s.add(self.gaussian_like(s, std=std)).div_(divisor).to(d)
                for s, d in zip(sums, out_dtypes, strict=True)
            ]
        if std == 0:  # as gaussian_like: no draw
            return [s.div(divisor).to(d) for s, d in zip(sums, out_dtypes, strict=True)]
        outs = [torch.empty(s.shape, dtype=d) for s, d in zip(sums, out_dtypes, strict=True)]
        self._draw_into(outs, std=std, sums=sums, divisor=divisor)
        return outs

    def _draw_into(
        self,
        outs: Sequence[torch.Tensor],
        *,
        std: float,
        sums: Sequence[torch.Tensor] | None = None,
        divisor: float = 1.0,
    ) -> None:
        """Write ``(sums[i] + std·Z) / divisor`` (``std·Z`` without ``sums``) into each
        contiguous CPU tensor ``outs[i]``: chunks of the flattened tensors in order,
        chunk ``k`` from keystream call ``first + k`` (all reserved before any is
        drawn), each formed in float64 and rounded once, shared by the noise workers."""
        chunk = self._chunk()
        tasks = [  # (tensor, start, count) in tensor order: chunk k ↔ call first + k
            (i, start, min(chunk, out.numel() - start))
            for i, out in enumerate(outs)
            for start in range(0, out.numel(), chunk)
        ]
        if not tasks:
            return
        first = self._normals.reserve(len(tasks))
        flat_outs = [out.view(-1) for out in outs]
        flat_sums = None if sums is None else [t.detach().reshape(-1) for t in sums]

        def fill(k: int) -> None:
            i, start, count = tasks[k]
            value = self._standard_normal(first + k, count).mul_(std)
            if flat_sums is not None:
                value.add_(flat_sums[i][start : start + count]).div_(divisor)
            flat_outs[i][start : start + count].copy_(value)

        _run_serial_tasks(fill, len(tasks))

    def _chunk(self) -> int:
        """Values per keystream call (secure mode draws ``SECURE_DRAWS`` per value)."""
        return _CHUNK // SECURE_DRAWS if self.secure_mode else _CHUNK

    def _standard_normal(self, call: int, count: int) -> torch.Tensor:
        """``count`` normals from reserved call index ``call`` (secure mode: the sum
        of ``SECURE_DRAWS`` draws per value, from that one call)."""
        if not self.secure_mode:
            return self._normals.standard_normal_at(call, count)
        draws = self._normals.standard_normal_at(call, SECURE_DRAWS * count)
        return draws.view(SECURE_DRAWS, count).sum(dim=0).div_(math.sqrt(SECURE_DRAWS))

    def _check_reference(self, reference: torch.Tensor) -> None:
        if not isinstance(reference, torch.Tensor) or not reference.is_floating_point():
            raise ConfigError("reference", "must be a floating-point tensor")
        where = reference.device
        if where.type != self.device.type or (
            self.device.index is not None and where.index != self.device.index
        ):
            raise ConfigError(
                "reference", f"is on {where}, but this noise source serves {self.device}"
            )

    def reseed(self) -> None:
        """Replace the key with a fresh one from the OS CSPRNG (also ending the
        test-only deterministic mode), so earlier noise is never replayed."""
        self._seed = None
        self._normals = KeystreamNormals(key=secrets.token_bytes(KEY_BYTES))

    def state_dict(self) -> dict[str, int]:
        """Empty (the key is never exported), except in the test-only deterministic
        mode: ``{"noise_seed", "calls"}`` for exact resumption."""
        if self._seed is None:
            return {}
        return {"noise_seed": self._seed, "calls": self._normals.calls}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore :meth:`state_dict`. A source with a secret key re-keys itself
        instead (nothing in ``state`` can choose or replay its noise); a
        deterministic source resumes the recorded test stream if there is one.

        Raises:
            ConfigError: a deterministic state with a malformed seed or call index.
        """
        if self._seed is None:
            self.reseed()
            return
        if "noise_seed" not in state:
            return
        seed, calls = state["noise_seed"], state.get("calls", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError("noise_seed", "must be an integer")
        normals = KeystreamNormals(key=_test_key(seed))
        normals.skip_to(calls)  # type: ignore[arg-type]
        self._seed, self._normals = seed, normals


def _run_serial_tasks(task: Callable[[int], None], count: int) -> None:
    """Run ``task(0)``, …, ``task(count - 1)`` (independent, any order) on up to
    ``torch.get_num_threads()`` Python threads, each running torch on itself alone.

    The noise is a long run of elementwise ops (256 Ki values each). With several
    torch threads each op is a parallel region, and on a machine with more busy threads
    than cores every region waits for a descheduled thread: with two torch threads under
    load, SmolLM2's 135 M normals took minutes. Here each worker runs its ops serially
    (in cache, never waiting on another), and the workers share the chunks; AES (OpenSSL)
    and torch release the GIL, so they run in parallel. torch's thread count is per
    thread (OpenMP builds); each worker sets 1 for itself, and the caller's setting is
    restored, also as the default for threads started later. The values do not depend
    on the number of workers: chunk ``k`` always uses keystream call ``first + k``.
    """
    before = torch.get_num_threads()
    workers = min(before, count)
    if workers <= 1:
        torch.set_num_threads(1)
        try:
            for k in range(count):
                task(k)
        finally:
            torch.set_num_threads(before)
        return
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for _ in pool.map(task, range(count)):  # re-raises a worker's error
                pass
    finally:
        torch.set_num_threads(before)  # the workers' setting also became the default


def _check_std(std: float) -> None:
    if isinstance(std, bool) or not isinstance(std, int | float) or not math.isfinite(std):
        raise ConfigError("std", f"must be a finite number, got {std!r}")
    if std < 0:
        raise ConfigError("std", f"must be >= 0, got {std!r}")


def _test_key(seed: int) -> bytes:
    return hashlib.sha256(_TEST_KEY_DOMAIN + str(seed).encode("ascii")).digest()


__all__ = ["SECURE_DRAWS", "InsecureNoiseWarning", "NoiseSource"]
