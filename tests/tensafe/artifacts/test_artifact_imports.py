"""The crypto core must work without torch, numpy or safetensors (the SDK shares it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CORE_MODULES = (
    "tensafe.artifacts",
    "tensafe.artifacts.format",
    "tensafe.artifacts.pipeline",
    "tensafe.artifacts.reader",
    "tensafe.artifacts.writer",
    "tensafe.artifacts.writeback",
    "tensafe.artifacts.tenant_key",
    "tensafe.artifacts.manifest",
    "tensafe.artifacts.payload",
    "tensafe.artifacts.cli",
)

SCRIPT = textwrap.dedent(
    """
    import importlib, io, sys, tempfile

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "numpy", "safetensors", "transformers", "peft"}:
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Block())
    for name in MODULES:
        importlib.import_module(name)

    from tensafe.artifacts import Manifest, TenantKey, decrypt_to_directory
    from tensafe.artifacts.payload import encode_prefix
    from tensafe.artifacts.writer import SealingWriter
    import hashlib, struct

    key = TenantKey.generate(tenant_id="t", key_id="tk", version=1)
    weights = struct.pack("<Q", 8) + b"{}      "
    manifest = Manifest(kind="full_weights", base_model="m").with_plaintext_sha256(
        hashlib.sha256(weights).hexdigest())
    out = io.BytesIO()
    with SealingWriter(out, tenant_key=key, artifact_id="a") as w:
        w.write(encode_prefix(len(weights)) + weights + manifest.to_json().encode())
    out.seek(0)
    result = decrypt_to_directory(out, tempfile.mkdtemp(), keys=key, tenant_id="t", artifact_id="a")
    assert result.manifest == manifest
    print("ok")
    """
)


def test_core_imports_and_decrypts_without_torch_numpy_safetensors() -> None:
    code = f"MODULES = {CORE_MODULES!r}\n{SCRIPT}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_core_never_imports_web_or_db_code() -> None:
    code = (
        "import sys, tensafe.artifacts, tensafe.artifacts.checkpoint\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'server', 'fastapi', 'sqlalchemy', 'boto3', 'httpx'}]\n"
        "print(bad)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
