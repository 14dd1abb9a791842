"""Standard normal samples whose randomness is an AES-256-CTR keystream (a CSPRNG).

Opacus' secure mode draws its noise from torchcsprng, which no longer installs;
``torch.Generator`` (MT19937 on CPU, Philox on GPU) is fast but not
cryptographically secure: its state can be reconstructed from its outputs. This
module replaces it with a keystream from pyca ``cryptography`` (OpenSSL).

Construction, one :meth:`KeystreamNormals.standard_normal` call at a time:

1. **Keystream.** AES-256 in CTR mode, encrypting zeros, under a 256-bit key that
   never leaves the object. The initial counter block is ``call index (64-bit,
   big-endian) ‖ 0⁶⁴``; CTR increments the whole 128-bit block, and a call draws
   far fewer than 2⁶⁴ blocks, so no two calls (and no two keys' worth of calls —
   the index is never reset for a key) share a counter block: the keystream is
   never reused. AES-256-CTR was chosen over ChaCha20 because it is about twice as
   fast where the CPU has AES instructions (every x86-64 and ARMv8 server CPU);
   both are constant-time in OpenSSL.
2. **Uniforms.** Each 64-bit little-endian word keeps its top 53 bits ``k``
   (``k < 2⁵³``, exactly representable in float64). The radius uniform is
   ``u₁ = (k+1)·2⁻⁵³ ∈ (0, 1]`` (never 0, so ``log u₁`` is finite), the angle
   uniform ``u₂ = k·2⁻⁵³ ∈ [0, 1)``; both on the full 53-bit grid.
3. **Normals.** Box–Muller in float64: ``r = √(−2 ln u₁)``, ``z = r·cos(2πu₂)``
   and ``r·sin(2πu₂)``. It is exact in real arithmetic (unlike a rational
   approximation of the inverse CDF), uses one uniform per normal, and its
   float64 ``log``/``sqrt`` (numpy) and ``sin``/``cos`` (torch) are vectorised.

Floating-point caveats (documented, not hidden): the samples are a deterministic
function of a 53-bit grid, so their distribution is discrete and truncated —
``|z| ≤ √(2·53·ln 2) ≈ 8.57`` (a standard normal exceeds that with probability
≈ 10⁻¹⁷ per coordinate, negligible against any δ in use); and a value rounded to
float32/bfloat16 after scaling does not reach every representable number. The
latter is what floating-point attacks on DP noise exploit (Mironov 2012;
arXiv:2107.10138, arXiv:2112.05307); :class:`tensafe.privacy.NoiseSource` keeps
Opacus' mitigation in secure mode (a sum of several draws).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tensafe.errors import ConfigError, PrivacyError

KEY_BYTES = 32
_WORD_BYTES = 8
_MANTISSA_SHIFT = np.uint64(64 - 53)
_TWO_POW_MINUS_53 = 2.0**-53
_MAX_CALLS = 2**64  # the call index fills the upper half of the counter block


class KeystreamNormals:
    """i.i.d. standard normal float64 samples from an AES-256-CTR keystream.

    The key is held privately and never exported (``repr`` does not show it; pickling
    and copying raise ``TypeError``);
    every call uses a fresh counter block, so no keystream is ever reused. The
    object is not thread-safe: one run draws its noise from one thread at a time.

    Example::

        import secrets
        normals = KeystreamNormals(key=secrets.token_bytes(32))
        z = normals.standard_normal(1000)   # float64, CPU, mean ≈ 0, std ≈ 1

    Args:
        key: 32 bytes from a CSPRNG (``secrets.token_bytes(32)``).

    Raises:
        ConfigError: ``key`` is not 32 bytes (field ``key``).
    """

    def __init__(self, *, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ConfigError("key", f"must be {KEY_BYTES} bytes")
        self._key = key
        self._calls = 0

    def __repr__(self) -> str:
        return f"KeystreamNormals(calls={self._calls})"

    def __reduce__(self) -> tuple[object, ...]:
        # pickle and copy would carry the key out of the object (a checkpoint, a
        # process boundary): refused, so the key cannot leak that way by accident
        raise TypeError("KeystreamNormals holds a secret key and cannot be pickled or copied")

    @property
    def calls(self) -> int:
        """How many calls (counter blocks ``index ‖ 0⁶⁴``) this key has used."""
        return self._calls

    def skip_to(self, calls: int) -> None:
        """Continue from call index ``calls`` (resuming a test-only deterministic
        stream). Only forward: an index already used is refused.

        Raises:
            ConfigError: ``calls`` is not an integer in [current index, 2⁶⁴).
        """
        if isinstance(calls, bool) or not isinstance(calls, int):
            raise ConfigError("calls", "must be an integer")
        if not self._calls <= calls < _MAX_CALLS:
            raise ConfigError("calls", f"must be in [{self._calls}, 2**64): keystream reuse")
        self._calls = calls

    def standard_normal(self, count: int) -> torch.Tensor:
        """``count`` i.i.d. N(0, 1) samples: a new float64 CPU tensor.

        Consumes one call index (a fresh counter block) and ``16·⌈count/2⌉`` bytes
        of keystream.

        Raises:
            ConfigError: ``count`` is negative or not an integer (field ``count``).
            PrivacyError: the key's 2⁶⁴ call indices are used up.
        """
        _check_count(count)
        return self.standard_normal_at(self.reserve(1), count)

    def reserve(self, calls: int) -> int:
        """Take the next ``calls`` call indices for :meth:`standard_normal_at` (so that
        several threads can draw them at once); returns the first.

        Raises:
            ConfigError: ``calls`` is not an integer ≥ 1.
            PrivacyError: fewer than ``calls`` of the key's 2⁶⁴ call indices are left.
        """
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise ConfigError("calls", f"must be an integer >= 1, got {calls!r}")
        if self._calls + calls > _MAX_CALLS:
            raise PrivacyError("the noise key's counter space is exhausted; re-key the source")
        first = self._calls
        self._calls += calls
        return first

    def standard_normal_at(self, call: int, count: int) -> torch.Tensor:
        """``count`` N(0, 1) samples from call index ``call``, which must have been
        taken by :meth:`reserve` (each reserved index is to be drawn once: the same
        index gives the same keystream). Thread-safe for distinct indices.

        Raises:
            ConfigError: ``count`` is invalid, or ``call`` was not reserved.
        """
        _check_count(count)
        if isinstance(call, bool) or not isinstance(call, int) or not 0 <= call < self._calls:
            raise ConfigError("call", "must be a call index taken by reserve()")
        pairs = (count + 1) // 2
        words = np.frombuffer(self._keystream(call, 2 * pairs * _WORD_BYTES), dtype="<u8")
        return box_muller(words)[:count]

    def _keystream(self, call: int, nbytes: int) -> bytes:
        counter_block = call.to_bytes(8, "big") + bytes(8)
        encryptor = Cipher(algorithms.AES(self._key), modes.CTR(counter_block)).encryptor()
        return encryptor.update(bytes(nbytes))


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError("count", f"must be an integer >= 0, got {count!r}")


def box_muller(words: np.ndarray) -> torch.Tensor:
    """Standard normals from an even number of uniformly random 64-bit words.

    The first half of ``words`` gives the radius uniforms ``(k+1)·2⁻⁵³``, the second
    half the angle uniforms ``k·2⁻⁵³`` (``k`` = top 53 bits); the result holds the
    cosine normals, then the sine normals (float64, CPU, ``len(words)`` values).

    Raises:
        ConfigError: ``words`` is not a 1-d uint64 array of even length.
    """
    if words.dtype != np.uint64 or words.ndim != 1 or len(words) % 2:
        raise ConfigError("words", "must be a 1-d uint64 array of even length")
    half = len(words) // 2
    grid = (words >> _MANTISSA_SHIFT).astype(np.float64)
    # the radius in numpy: its float64 log and sqrt are vectorised (about 3.5× and 1.6×
    # faster than torch's on this CPU); sin and cos in torch (numpy's are not)
    radius_np = grid[:half]
    radius_np += 1.0
    radius_np *= _TWO_POW_MINUS_53
    np.log(radius_np, out=radius_np)
    radius_np *= -2.0
    np.sqrt(radius_np, out=radius_np)
    radius = torch.from_numpy(radius_np)
    angle = torch.from_numpy(grid[half:]).mul_(2.0 * math.pi * _TWO_POW_MINUS_53)
    out = torch.empty(2 * half, dtype=torch.float64)
    torch.cos(angle, out=out[:half])
    torch.sin(angle, out=out[half:])
    out[:half].mul_(radius)
    out[half:].mul_(radius)
    return out


__all__ = ["KEY_BYTES", "KeystreamNormals", "box_muller"]
