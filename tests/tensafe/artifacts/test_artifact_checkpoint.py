"""Checkpoints: tensors + manifest sealed and opened, peft loading, training state."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from tensafe.artifacts import (  # noqa: E402
    Manifest,
    SealingWriter,
    TenantKey,
    decrypt_to_directory,
    flatten_state,
    open_checkpoint,
    pack_training_state,
    peft_config_dict,
    seal_checkpoint,
    unflatten_state,
    unpack_training_state,
)
from tensafe.artifacts.payload import encode_prefix  # noqa: E402
from tensafe.errors import ConfigError, IntegrityError  # noqa: E402

DP = {
    "noise_multiplier": 1.1,
    "sample_rate": 0.01,
    "max_grad_norm": 1.0,
    "dataset_size": 1000,
    "delta": 1e-5,
    "accountant": "prv",
    "epsilon": 2.5,
}


def _all_dtype_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    floats = torch.randn(5, 3, generator=gen)
    return {
        "f64": floats.double(),
        "f32": floats,
        "f16": floats.half(),
        "bf16": floats.bfloat16(),
        "i64": torch.arange(-3, 4, dtype=torch.int64),
        "i32": torch.arange(7, dtype=torch.int32),
        "i16": torch.arange(5, dtype=torch.int16),
        "i8": torch.arange(-2, 2, dtype=torch.int8),
        "u8": torch.arange(9, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "f8": floats.to(torch.float8_e4m3fn),
        "scalar": torch.tensor(3.25),
        "empty": torch.zeros(0, 4),
        "transposed": floats.t(),  # not contiguous
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }


def _seal(tensors, manifest, key, *, chunk_size=1 << 16, artifact_id="art_c") -> bytes:
    out = io.BytesIO()
    info = seal_checkpoint(
        tensors=tensors,
        manifest=manifest,
        tenant_key=key,
        artifact_id=artifact_id,
        out=out,
        chunk_size=chunk_size,
    )
    blob = out.getvalue()
    assert info.size_bytes == len(blob)
    assert info.content_hash == hashlib.sha256(blob).hexdigest()
    assert info.manifest.plaintext_sha256 == info.plaintext_sha256
    return blob


@pytest.mark.parametrize("chunk_size", [64, 1 << 16, 1 << 20])
def test_all_dtypes_roundtrip_in_memory(
    tenant_key: TenantKey, small_manifest: Manifest, chunk_size: int
) -> None:
    tensors = _all_dtype_tensors()
    blob = _seal(tensors, small_manifest, tenant_key, chunk_size=chunk_size)
    opened = open_checkpoint(
        io.BytesIO(blob),
        keys=tenant_key,
        tenant_id="acme",
        artifact_id="art_c",
        expected_content_hash=hashlib.sha256(blob).hexdigest(),
    )
    assert set(opened.tensors) == set(tensors)
    for name, tensor in tensors.items():
        expected = tensor.detach().contiguous()
        got = opened.tensors[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert (
            got.reshape(-1).view(torch.uint8).tolist()
            == expected.reshape(-1).view(torch.uint8).tolist()
        ), name
    assert opened.manifest.plaintext_sha256 is not None
    assert opened.manifest.base_model == "tiny"


def test_decrypted_directory_is_standard_safetensors(
    tenant_key: TenantKey, small_manifest: Manifest, tmp_path: Path
) -> None:
    tensors = _all_dtype_tensors()
    blob = _seal(tensors, small_manifest, tenant_key)
    result = decrypt_to_directory(
        io.BytesIO(blob), tmp_path / "out", keys=tenant_key, tenant_id="acme", artifact_id="art_c"
    )
    weights = tmp_path / "out" / "model.safetensors"
    assert result.files == (weights, tmp_path / "out" / "manifest.json")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == result.manifest.plaintext_sha256
    loaded = load_file(weights)  # the reference safetensors reader
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name].float(), tensor.detach().float()), name
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (
        manifest["kind"] == "full_weights"
        and manifest["plaintext_sha256"] == result.manifest.plaintext_sha256
    )
    assert (weights.stat().st_mode & 0o077) == 0


def test_decrypt_refuses_to_overwrite(
    tenant_key: TenantKey, small_manifest: Manifest, tmp_path: Path
) -> None:
    blob = _seal({"w": torch.ones(2)}, small_manifest, tenant_key)
    kwargs = {"keys": tenant_key, "tenant_id": "acme", "artifact_id": "art_c"}
    decrypt_to_directory(io.BytesIO(blob), tmp_path, **kwargs)
    with pytest.raises(FileExistsError):
        decrypt_to_directory(io.BytesIO(blob), tmp_path, **kwargs)
    decrypt_to_directory(io.BytesIO(blob), tmp_path, overwrite=True, **kwargs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_wrong_content_hash_fails_and_writes_nothing(
    tenant_key: TenantKey, small_manifest: Manifest, tmp_path: Path
) -> None:
    blob = _seal({"w": torch.ones(2)}, small_manifest, tenant_key)
    with pytest.raises(IntegrityError):
        open_checkpoint(
            io.BytesIO(blob),
            keys=tenant_key,
            tenant_id="acme",
            artifact_id="art_c",
            expected_content_hash="00" * 32,
        )
    with pytest.raises(IntegrityError):
        decrypt_to_directory(
            io.BytesIO(blob),
            tmp_path / "o",
            keys=tenant_key,
            tenant_id="acme",
            artifact_id="art_c",
            expected_content_hash="00" * 32,
        )
    assert not (tmp_path / "o").exists()


def test_manifest_hash_disagreeing_with_tensors_fails(
    tenant_key: TenantKey, small_manifest: Manifest, tmp_path: Path
) -> None:
    """An artifact whose (authentic) manifest names another plaintext hash is refused."""
    from safetensors.torch import save

    weights = save({"w": torch.ones(2)})
    out = io.BytesIO()
    with SealingWriter(out, tenant_key=tenant_key, artifact_id="art_c", chunk_size=64) as writer:
        writer.write(encode_prefix(len(weights)) + weights)
        writer.write(small_manifest.with_plaintext_sha256("ab" * 32).to_json().encode())
    with pytest.raises(IntegrityError):
        open_checkpoint(
            io.BytesIO(out.getvalue()), keys=tenant_key, tenant_id="acme", artifact_id="art_c"
        )
    with pytest.raises(IntegrityError):
        decrypt_to_directory(
            io.BytesIO(out.getvalue()),
            tmp_path / "o",
            keys=tenant_key,
            tenant_id="acme",
            artifact_id="art_c",
        )
    assert not (tmp_path / "o").exists()


def test_unsupported_tensor_is_a_config_error(
    tenant_key: TenantKey, small_manifest: Manifest
) -> None:
    with pytest.raises(ConfigError, match="complex"):
        _seal({"c": torch.zeros(2, dtype=torch.complex64)}, small_manifest, tenant_key)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_lora_adapter_roundtrip_loads_in_peft_with_identical_logits(
    tenant_key: TenantKey, tmp_path: Path
) -> None:
    peft = pytest.importorskip("peft")
    base = _tiny_llama()
    base_state = copy.deepcopy(base.state_dict())
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = peft.get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; make the adapter matter
                param.normal_()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    expected = model(ids).logits
    manifest = Manifest(
        kind="lora_adapter",
        base_model="tiny-llama",
        step=7,
        lora_config=peft_config_dict(lora),
        dp=DP,
        metadata={"run": "unit-test"},
    )
    blob = _seal(peft.get_peft_model_state_dict(model), manifest, tenant_key)
    out = tmp_path / "adapter"
    result = decrypt_to_directory(
        io.BytesIO(blob), out, keys=tenant_key, tenant_id="acme", artifact_id="art_c"
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    ]
    assert result.manifest.dp == DP and result.manifest.step == 7

    fresh = _tiny_llama()
    fresh.load_state_dict(base_state)
    assert not torch.allclose(fresh(ids).logits, expected)  # the adapter matters
    loaded = peft.PeftModel.from_pretrained(fresh, out).eval()
    assert torch.equal(loaded(ids).logits, expected)


def _assert_same_tree(a: object, b: object) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same_tree(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_tree(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def test_flatten_state_roundtrips_every_supported_type() -> None:
    state = {
        0: {"t": torch.ones(2), "nested": ({"x": None}, [1, 2.5, True], "s")},
        "inf": float("inf"),
        "nan": float("nan"),
        "neg": -float("inf"),
        "a.b": torch.zeros(1),
        "a": {"b": torch.ones(1)},  # path collides with "a.b"
    }
    tensors, structure = flatten_state(state, prefix="p")
    assert len(tensors) == 3
    rebuilt = unflatten_state(json.loads(json.dumps(structure)), tensors)
    _assert_same_tree(state, rebuilt)
    with pytest.raises(ConfigError):
        flatten_state({"bad": object()}, prefix="p")


def test_adamw_training_state_roundtrip_continues_identically(tenant_key: TenantKey) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    data = torch.randn(16, 4)

    def step(m: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        m(data).pow(2).mean().backward()
        opt.step()

    for _ in range(3):
        step(model, optimizer)
    history = [{"noise_multiplier": 1.1, "sample_rate": 0.01, "steps": 3}]
    tensors, info = pack_training_state(
        model_state=model.state_dict(),
        optimizer_state=optimizer.state_dict(),
        accountant_history=history,
    )
    manifest = Manifest(kind="training_state", base_model="mlp", step=3, dp=DP, training_state=info)
    blob = _seal(tensors, manifest, tenant_key, chunk_size=64)
    opened = open_checkpoint(
        io.BytesIO(blob), keys=tenant_key, tenant_id="acme", artifact_id="art_c"
    )
    state = unpack_training_state(opened.tensors, opened.manifest)
    _assert_same_tree(optimizer.state_dict(), state.optimizer_state)
    assert state.accountant_history == history

    restored = copy.deepcopy(model)
    restored.load_state_dict(state.model_state)
    restored_opt = torch.optim.AdamW(restored.parameters(), lr=0.5)
    restored_opt.load_state_dict(state.optimizer_state)
    step(model, optimizer)
    step(restored, restored_opt)
    for a, b in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.equal(a, b)


class _FailingOutput:
    """A sink that fails after ``limit`` bytes, like a full disk."""

    def __init__(self, limit: int) -> None:
        self.limit, self.written = limit, 0

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self.limit:
            raise OSError(28, "No space left on device")
        self.written += len(data)
        return len(data)


def test_output_failure_propagates_without_hanging(
    tenant_key: TenantKey, small_manifest: Manifest
) -> None:
    tensors = {"w": torch.zeros(1 << 20)}  # 4 MiB: several chunks through the helper thread
    with pytest.raises(OSError, match="No space left"):
        seal_checkpoint(
            tensors=tensors,
            manifest=small_manifest,
            tenant_key=tenant_key,
            artifact_id="art_f",
            out=_FailingOutput(1 << 20),  # type: ignore[arg-type]
            chunk_size=1 << 16,
        )
