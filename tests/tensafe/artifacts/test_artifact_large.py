"""Beyond the 2 GiB one-shot AES-GCM limit, in bounded memory (slow: run with -m slow)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tensafe.artifacts import OpeningReader, SealingWriter, TenantKey

SIZE = (2 << 30) + 12345  # one-shot AESGCM.encrypt over this raises OverflowError


def _peak_rss_reset() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.slow
def test_over_2_gib_round_trip_in_bounded_memory(tenant_key: TenantKey, tmp_path: Path) -> None:
    path = tmp_path / "big.tsa"
    piece_data = bytes(range(256)) * (64 * 1024 * 4)  # 64 MiB
    expected = hashlib.sha256()
    baseline = _peak_rss_reset()
    with (
        path.open("wb") as out,
        SealingWriter(out, tenant_key=tenant_key, artifact_id="art_big") as writer,
    ):
        left = SIZE
        while left:
            piece = memoryview(piece_data)[: min(left, len(piece_data))]
            expected.update(piece)
            writer.write(piece)
            left -= len(piece)
    got = hashlib.sha256()
    with path.open("rb") as src:
        reader = OpeningReader(src, keys=tenant_key, tenant_id="acme", artifact_id="art_big")
        for chunk in reader.chunks():
            got.update(chunk)
    assert reader.complete and reader.payload_size == SIZE
    assert got.digest() == expected.digest()
    extra_mib = (_status_kib("VmHWM") - baseline) / 1024
    assert extra_mib < 64, extra_mib
