"""A damaged or re-pointed artifact fails with one opaque integrity error, wherever it is
read: restoring it on the server (``load_state``), pulling it (``/content``) and
decrypting it with the SDK."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from tg_tinker.artifacts import TenantKeyFile, decrypt, load_key_files
from tg_tinker.errors import ArtifactIntegrityError

from server.db.models import ArtifactRow
from server.storage.local import DATA_FILE, LocalArtifactStore

from .harness import Harness

OPAQUE = {
    "error": "IntegrityError",
    "category": "user",
    "detail": "artifact integrity check failed",
}


def _saved(api: Harness, headers: dict[str, str], name: str) -> tuple[str, str]:
    run_id = api.create_run(headers)
    saved = api.call(headers, run_id, "save_state", {"name": name})
    return run_id, str(saved["artifact_id"])


def _blob(api: Harness, artifact_id: str) -> Path:
    store = api.context.store
    assert isinstance(store, LocalArtifactStore)
    with api.context.db.sessions() as session:
        row = session.get(ArtifactRow, artifact_id)
        assert row is not None
        return store.object_dir(row.storage_key) / DATA_FILE


def _restore_error(api: Harness, headers: dict[str, str], run_id: str, artifact_id: str) -> dict:
    error = api.fail(headers, run_id, "load_state", {"artifact_id": artifact_id})
    return {k: error[k] for k in OPAQUE}


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset", [11, 14, 40])  # header: length, chunk size, ids/salt
def test_a_flipped_header_byte_is_one_opaque_error(
    api: Harness, offset: int, tmp_path: Path
) -> None:
    headers = api.tenant()
    run_id, artifact_id = _saved(api, headers, f"flip{offset}")
    _flip(_blob(api, artifact_id), offset)
    assert _restore_error(api, headers, run_id, artifact_id) == OPAQUE
    pulled = api.client.get(f"/v1/artifacts/{artifact_id}/content", headers=headers)
    keys = api.client.get("/v1/keys/export", headers=headers)
    assert pulled.status_code == 200 and keys.status_code == 200
    with pytest.raises(ArtifactIntegrityError, match=r"^artifact integrity check failed$"):
        decrypt(
            io.BytesIO(pulled.content), _key_files(keys.json(), tmp_path), artifact_id=artifact_id
        )


def _key_files(exported: object, tmp: Path) -> list[TenantKeyFile]:
    path = tmp / "keys.json"
    path.write_text(json.dumps(exported))
    return load_key_files(path)


def test_a_truncated_blob_is_refused_before_streaming(api: Harness) -> None:
    headers = api.tenant()
    run_id, artifact_id = _saved(api, headers, "cut")
    blob = _blob(api, artifact_id)
    blob.write_bytes(blob.read_bytes()[:-100])
    pulled = api.client.get(f"/v1/artifacts/{artifact_id}/content", headers=headers)
    # not a cut-off stream (which a client would retry as a connection error)
    assert pulled.status_code == 422
    assert {k: pulled.json()[k] for k in OPAQUE} == OPAQUE
    assert _restore_error(api, headers, run_id, artifact_id) == OPAQUE


def test_a_row_pointed_at_another_blob_is_one_opaque_error(api: Harness) -> None:
    headers = api.tenant()
    run_id, first = _saved(api, headers, "first")
    _other_run, second = _saved(api, headers, "second")
    with api.context.db.transaction() as session:
        row = session.get(ArtifactRow, first)
        other = session.get(ArtifactRow, second)
        assert row is not None and other is not None
        row.storage_key = other.storage_key  # the database now names the wrong blob
    assert _restore_error(api, headers, run_id, first) == OPAQUE
    pulled = api.client.get(f"/v1/artifacts/{first}/content", headers=headers)
    assert pulled.status_code == 422
    assert {k: pulled.json()[k] for k in OPAQUE} == OPAQUE
