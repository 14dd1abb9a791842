"""DP noise from the AES-256-CTR keystream: construction, distribution, no reuse, no export."""

from __future__ import annotations

import copy
import math
import pickle
import secrets
import struct

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from tensafe.errors import ConfigError
from tensafe.privacy import InsecureNoiseWarning, KeystreamNormals, NoiseSource
from tensafe.privacy.csprng import box_muller
from tensafe.privacy.noise import _CHUNK as CHUNK  # values per keystream call

# Statistical tests on the production path use a fresh random key each run, so they
# can fail by chance: each has a false-alarm rate of at most ALPHA.
ALPHA = 1e-6
SIGMA, C = 1.3, 0.7


def _ks_pvalue(z: torch.Tensor, std: float) -> float:
    return float(stats.kstest(z.double().flatten().numpy() / std, "norm").pvalue)


# ----------------------------------------------------------- the construction
def _reference_normals(key: bytes, call: int, count: int) -> list[float]:
    """The documented construction, computed independently: AES-256 (ECB) of the
    counter blocks ``call ‖ i``, 64-bit little-endian words, top 53 bits, Box–Muller."""
    pairs = (count + 1) // 2
    blocks = b"".join(struct.pack(">QQ", call, i) for i in range(pairs))  # 16 B = 2 words each
    stream = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(blocks)
    words = [int.from_bytes(stream[8 * i : 8 * i + 8], "little") for i in range(2 * pairs)]
    grid = [w >> 11 for w in words]
    out = []
    for k1, k2 in zip(grid[:pairs], grid[pairs:], strict=True):
        radius = math.sqrt(-2.0 * math.log((k1 + 1) * 2.0**-53))
        out.append(radius * math.cos(2.0 * math.pi * (k2 * 2.0**-53)))
    for k1, k2 in zip(grid[:pairs], grid[pairs:], strict=True):
        radius = math.sqrt(-2.0 * math.log((k1 + 1) * 2.0**-53))
        out.append(radius * math.sin(2.0 * math.pi * (k2 * 2.0**-53)))
    return out[:count]


@pytest.mark.parametrize("count", [1, 7, 64])
def test_keystream_normals_follow_the_documented_construction(count):
    key = bytes(range(32))
    normals = KeystreamNormals(key=key)
    first = normals.standard_normal(count)
    second = normals.standard_normal(count)  # the next call index, a fresh counter block
    assert normals.calls == 2
    assert first.dtype == torch.float64
    for call, got in ((0, first), (1, second)):
        expected = _reference_normals(key, call, count)
        assert got.tolist() == pytest.approx(expected, rel=1e-13, abs=1e-13)


def test_box_muller_extremes_are_finite_and_bounded():
    top = np.uint64(2**64 - 1)
    words = np.array([0, top, 0, top], dtype=np.uint64)  # u1 = 2^-53 and 1; u2 = 0 and ~1
    z = box_muller(words)
    assert torch.isfinite(z).all()
    bound = math.sqrt(-2 * math.log(2.0**-53))  # ≈ 8.57: the documented truncation
    assert float(z.abs().max()) == pytest.approx(bound)
    assert float(z[1]) == 0.0 and float(z[3]) == 0.0  # u1 = 1: radius 0


def test_keystream_normals_refuse_bad_keys_counts_and_rewinds():
    with pytest.raises(ConfigError) as exc:
        KeystreamNormals(key=b"short")
    assert exc.value.field == "key"
    normals = KeystreamNormals(key=secrets.token_bytes(32))
    with pytest.raises(ConfigError) as exc:
        normals.standard_normal(-1)
    assert exc.value.field == "count"
    normals.standard_normal(2)
    with pytest.raises(ConfigError, match="reuse"):
        normals.skip_to(0)  # a used counter block is never handed out again
    key = bytes(range(32))
    assert key.hex() not in repr(KeystreamNormals(key=key))


@pytest.mark.parametrize("export", [pickle.dumps, copy.deepcopy])
def test_the_key_cannot_leave_by_pickling_or_copying(export):
    with pytest.raises(TypeError, match="secret key"):
        export(NoiseSource(secure_mode=False))


# ------------------------------------------------------------- distribution
@pytest.mark.parametrize("secure_mode", [False, True])
def test_noise_is_normal_with_std_sigma_c(secure_mode):
    std = SIGMA * C
    z = NoiseSource(secure_mode=secure_mode).gaussian_like(torch.zeros(2**18), std=std)
    assert _ks_pvalue(z, std) > ALPHA
    n = z.numel()
    # mean: N(0, std²/n); std: relative s.e. ≈ 1/√(2n) ≈ 0.14 %
    assert abs(float(z.double().mean())) < 5.3 * std / math.sqrt(n)
    assert float(z.double().std()) == pytest.approx(std, rel=5.3 / math.sqrt(2 * n))


def test_ks_test_rejects_a_wrongly_scaled_or_uniform_source():
    # The distribution test has power: noise 5 % too wide, or uniform noise of the
    # right variance, fails it at the same false-alarm rate.
    z = NoiseSource(secure_mode=False).gaussian_like(torch.zeros(2**18), std=1.0)
    assert _ks_pvalue(z * 1.05, 1.0) < ALPHA
    u = (torch.rand(2**18, dtype=torch.float64) - 0.5) * math.sqrt(12)
    assert _ks_pvalue(u, 1.0) < ALPHA


def test_bfloat16_noise_keeps_its_scale():
    std = SIGMA * C
    z = NoiseSource(secure_mode=False).gaussian_like(
        torch.zeros(512, 512, dtype=torch.bfloat16), std=std
    )
    assert z.dtype == torch.bfloat16
    assert float(z.double().std()) == pytest.approx(std, rel=0.01)  # bf16 rounding: ~0.4 %
    assert abs(float(z.double().mean())) < 5.3 * std / 512


# ----------------------------------------------------- shape, dtype, device
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.float16])
@pytest.mark.parametrize("secure_mode", [False, True])
def test_output_matches_the_reference_tensor(dtype, secure_mode):
    reference = torch.ones(4, 6, 5, dtype=dtype).transpose(0, 2)  # non-contiguous
    z = NoiseSource(secure_mode=secure_mode).gaussian_like(reference, std=0.5)
    assert z.shape == reference.shape and z.dtype == dtype and z.device == reference.device
    assert torch.isfinite(z).all() and bool((z != 0).any())
    zero = NoiseSource(secure_mode=secure_mode).gaussian_like(reference, std=0.0)
    assert zero.dtype == dtype and zero.shape == reference.shape and not zero.any()


def test_bad_std_reference_or_device_name_the_field():
    noise = NoiseSource(secure_mode=False)
    for std in (-1.0, math.nan, math.inf, True):
        with pytest.raises(ConfigError) as exc:
            noise.gaussian_like(torch.zeros(3), std=std)
        assert exc.value.field == "std"
    with pytest.raises(ConfigError) as exc:
        noise.gaussian_like(torch.zeros(3, dtype=torch.int64), std=1.0)
    assert exc.value.field == "reference"
    with pytest.raises(ConfigError) as exc:
        NoiseSource(secure_mode=False, device="cuda").gaussian_like(torch.zeros(3), std=1.0)
    assert exc.value.field == "reference"
    with pytest.raises(ConfigError) as exc:
        NoiseSource(secure_mode=False, seed="1")  # type: ignore[arg-type]
    assert exc.value.field == "seed"


# ---------------------------------------------------- no reuse, no export
def test_no_repetition_across_steps_or_sources():
    ref = torch.zeros(4096, dtype=torch.float64)
    one, two = NoiseSource(secure_mode=False), NoiseSource(secure_mode=False)
    draws = [one.gaussian_like(ref, std=1.0), one.gaussian_like(ref, std=1.0)]
    draws += [two.gaussian_like(ref, std=1.0), two.gaussian_like(ref, std=1.0)]
    values = torch.cat(draws)
    # 16384 float64 draws on a 2^53 grid: a chance collision is ~1e-8 likely;
    # a reused keystream would repeat whole draws
    assert values.unique().numel() == values.numel()
    for i in range(4):
        for j in range(i + 1, 4):
            assert abs(float(torch.corrcoef(torch.stack([draws[i], draws[j]]))[0, 1])) < 0.1


def test_each_chunk_uses_a_fresh_counter_block():
    noise = NoiseSource(secure_mode=False)
    noise.gaussian_like(torch.zeros(3 * CHUNK + 1), std=1.0)
    assert noise._normals.calls == 4
    noise.gaussian_like(torch.zeros(1), std=1.0)
    assert noise._normals.calls == 5


@pytest.mark.parametrize("secure_mode", [False, True])
def test_the_key_is_never_exported_and_loading_state_rekeys(secure_mode):
    noise = NoiseSource(secure_mode=secure_mode)
    noise.gaussian_like(torch.zeros(8), std=1.0)
    assert noise.state_dict() == {} and not noise.deterministic
    # a test-only state names a seed; a source with a secret key must not adopt it
    seeded = NoiseSource(secure_mode=False, seed=3)
    state = seeded.state_dict()
    noise.load_state_dict(state)
    assert noise.state_dict() == {} and not noise.deterministic
    assert not torch.equal(
        noise.gaussian_like(torch.zeros(64), std=1.0),
        seeded.gaussian_like(torch.zeros(64), std=1.0),
    )


# ------------------------------------------------ test-only deterministic mode
def test_seeded_mode_repeats_warns_and_resumes():
    ref = torch.zeros(1000)
    with pytest.warns(InsecureNoiseWarning):
        a = NoiseSource(secure_mode=False, seed=7)
    with pytest.warns(InsecureNoiseWarning):
        b = NoiseSource(secure_mode=False, seed=7)
    with pytest.warns(InsecureNoiseWarning):
        other = NoiseSource(secure_mode=False, seed=8)
    assert a.deterministic
    first = a.gaussian_like(ref, std=1.0)
    assert torch.equal(first, b.gaussian_like(ref, std=1.0))
    assert not torch.equal(first, other.gaussian_like(ref, std=1.0))
    state = a.state_dict()
    assert state == {"noise_seed": 7, "calls": 1}
    resumed = NoiseSource(secure_mode=False, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.gaussian_like(ref, std=1.0), a.gaussian_like(ref, std=1.0))
    a.reseed()  # back to a secret key: no longer reproducible, nothing exported
    assert not a.deterministic and a.state_dict() == {}


def test_secure_mode_ignores_any_seed(recwarn):
    ref = torch.zeros(1000)
    a = NoiseSource(secure_mode=True, seed=7)
    b = NoiseSource(secure_mode=True, seed=7)
    assert not a.deterministic
    assert not torch.equal(a.gaussian_like(ref, std=1.0), b.gaussian_like(ref, std=1.0))
    assert not [w for w in recwarn if issubclass(w.category, InsecureNoiseWarning)]


# ------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_noise_is_staged_on_the_host_and_lands_on_the_device(dtype):
    reference = torch.zeros(2**20, device="cuda", dtype=dtype)
    z = NoiseSource(secure_mode=False, device="cuda").gaussian_like(reference, std=SIGMA * C)
    assert z.device == reference.device and z.dtype == dtype and z.shape == reference.shape
    assert float(z.double().std()) == pytest.approx(SIGMA * C, rel=0.01)
    if dtype == torch.float32:
        assert _ks_pvalue(z.cpu(), SIGMA * C) > ALPHA


def test_noise_workers_run_torch_serially_and_the_thread_count_is_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        source = NoiseSource(secure_mode=False)
        seen = []
        real = source._standard_normal

        def spy(call, count):
            seen.append(torch.get_num_threads())
            return real(call, count)

        source._standard_normal = spy  # type: ignore[method-assign]
        z = source.gaussian_like(torch.zeros(200_000), std=1.0)
        assert seen and set(seen) == {1}  # serial while drawing (no parallel regions)
        assert torch.get_num_threads() == 2  # restored
        assert 0.98 < float(z.std()) < 1.02
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("secure", [False, True])
def test_noise_does_not_depend_on_the_number_of_worker_threads(secure):
    before = torch.get_num_threads()
    draws = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with pytest.warns(InsecureNoiseWarning):
                source = NoiseSource(secure_mode=False, seed=11)
            source.secure_mode = secure  # the seeded stream, drawn the secure-mode way
            first = source.gaussian_like(torch.zeros(2 * CHUNK + 17), std=0.5)
            second = source.gaussian_like(torch.zeros(1_000), std=0.5)
            draws.append((first, second))
    finally:
        torch.set_num_threads(before)
    for first, second in draws[1:]:
        assert torch.equal(first, draws[0][0]) and torch.equal(second, draws[0][1])
    assert not torch.equal(draws[0][0][:1_000], draws[0][1])  # later calls: fresh keystream


# ------------------------------------------- a step's noisy means, in one call
def _seeded(seed: int = 5) -> NoiseSource:
    with pytest.warns(InsecureNoiseWarning):
        return NoiseSource(secure_mode=False, seed=seed)


SIZES = [(3 * CHUNK + 1,), (0,), (5, 7), (CHUNK,)]


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_noisy_means_are_sum_plus_the_same_noise_over_divisor_rounded_once(out_dtype):
    """Known answer: the noise of gaussian_like on each tensor in turn (float64
    references keep it unrounded), added to the sum and divided in float64, rounded
    once to the output dtype."""
    g = torch.Generator().manual_seed(0)
    sums = [torch.randn(shape, generator=g) for shape in SIZES]
    std, divisor = SIGMA * C, 24.0
    got = _seeded().noisy_means(sums, std=std, divisor=divisor, dtypes=[out_dtype] * len(sums))
    reference = _seeded()
    for s, out in zip(sums, got, strict=True):
        noise = reference.gaussian_like(torch.zeros(s.shape, dtype=torch.float64), std=std)
        expected = ((s.double() + noise) / divisor).to(out_dtype)
        assert out.dtype == out_dtype and out.shape == s.shape
        assert torch.equal(out, expected)


def test_noisy_means_leave_the_sums_alone_and_do_not_depend_on_worker_threads():
    sums = [torch.ones(2 * CHUNK + 3), torch.full((4, 4), 2.0)]
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            source = _seeded(9)
            source.secure_mode = True  # the seeded stream drawn the secure-mode way
            results.append(source.noisy_means(sums, std=0.5, divisor=2.0))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(sums[0], torch.ones(2 * CHUNK + 3)) and torch.equal(
        sums[1], torch.full((4, 4), 2.0)
    )
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


def test_noisy_means_distribution_and_fresh_noise_per_call():
    source = NoiseSource(secure_mode=False)
    sums = [torch.full((2**18,), 3.0)]
    (first,) = source.noisy_means(sums, std=SIGMA * C, divisor=4.0)
    (second,) = source.noisy_means(sums, std=SIGMA * C, divisor=4.0)
    centred = (first.double() - 0.75) * 4.0
    assert _ks_pvalue(centred, SIGMA * C) > ALPHA
    assert not torch.equal(first, second)
    # std 0: no draw, the plain mean
    calls = source._normals.calls
    (exact,) = source.noisy_means(sums, std=0.0, divisor=4.0)
    assert torch.equal(exact, torch.full((2**18,), 0.75)) and source._normals.calls == calls


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"std": -1.0, "divisor": 1.0}, "std"),
        ({"std": math.nan, "divisor": 1.0}, "std"),
        ({"std": 1.0, "divisor": 0.0}, "divisor"),
        ({"std": 1.0, "divisor": math.inf}, "divisor"),
        ({"std": 1.0, "divisor": True}, "divisor"),
        ({"std": 1.0, "divisor": 1.0, "dtypes": [torch.float32]}, "dtypes"),
        ({"std": 1.0, "divisor": 1.0, "dtypes": [torch.int64, torch.float32]}, "dtypes"),
    ],
)
def test_noisy_means_refuse_bad_arguments_before_drawing(kwargs, field):
    source = NoiseSource(secure_mode=False)
    with pytest.raises(ConfigError) as exc:
        source.noisy_means([torch.zeros(3), torch.zeros(2)], **kwargs)
    assert exc.value.field == field
    assert source._normals.calls == 0
    with pytest.raises(ConfigError) as exc:
        source.noisy_means([torch.zeros(3, dtype=torch.int64)], std=1.0, divisor=1.0)
    assert exc.value.field == "reference"
