"""Encrypted artifacts vs plain safetensors, side by side in one run.

    python bench/artifact_crypto.py --json                 # 1 GiB of tensors (default)
    python bench/artifact_crypto.py --size-mib 64 --json   # quick

Measures, on the same tensors and the same disk:

* save: ``safetensors.torch.save_file`` vs ``seal_checkpoint`` to a file
  (encrypt + plaintext SHA-256 + ciphertext SHA-256 + write), each without
  ``fsync`` (page cache) and with it (durable: the sealed file is written with the
  same write-behind as the artifact store, then fsynced); plus the real server
  path, ``seal_checkpoint`` into a ``LocalArtifactStore`` upload and ``commit``
  (the store hashes what it receives once more, fsyncs data and metadata, renames);
* load: ``load_file`` + touching every page (mmap) and ``load_file`` + ``clone``
  (tensors in private memory, the ratio's baseline) vs ``open_checkpoint`` (decrypt and
  verify into memory) and ``decrypt_to_directory`` (streaming to disk);
* the stream core alone (encrypt + ciphertext SHA-256, no safetensors, no disk);
* the floor this machine sets: single-stream SHA-256 and AES-256-GCM
  (``encrypt_into``) over the same tensor bytes in chunk-sized pieces. The format
  needs two SHA-256 streams (plaintext and ciphertext) that cannot be split, so an
  encrypted save can never take less than one SHA-256 pass (both streams on
  separate cores), nor less than all the work (two passes, AES, and the write,
  counted as one plain save) spread over every usable core.
  ``save_ratio_floor`` is one SHA-256 pass / plain save; ``save_ratio_floor_cpu``
  is the larger of the two bounds / plain save; ``save_ratio_floor_durable`` is the
  larger of that bound and the plain save + fsync (the disk transfer at best
  overlaps the crypto), over the plain save + fsync;
* peak extra memory of seal / streaming decrypt / in-memory decrypt, each in a
  fresh subprocess: the kernel's peak-RSS mark (VmHWM) is reset through
  ``/proc/self/clear_refs`` right before the operation, so OpenSSL and other
  native buffers count; in-memory decrypt is charged beyond its own output.

Times are medians of ``--repeats`` runs (default 5), interleaved plain/encrypted;
deleting the previous run's output is not timed. GB = 1e9 bytes. "per core"
figures divide bytes by the CPU seconds the process used (all threads).
``targets`` and ``targets_met`` compare with the issue's goals. With ``--json``
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from safetensors.torch import load_file, save_file

from server.storage import LocalArtifactStore
from tensafe.artifacts import (
    DEFAULT_CHUNK_SIZE,
    Manifest,
    SealingWriter,
    TenantKey,
    decrypt_to_directory,
    open_checkpoint,
    seal_checkpoint,
)
from tensafe.artifacts.format import TAG_SIZE
from tensafe.artifacts.safetensors_io import tensor_bytes
from tensafe.artifacts.writeback import WriteBehind

KEY = TenantKey("bench", "tk_bench", 1, bytes(range(32)))
TENSOR_MIB = 16
MIB = 1 << 20


def make_tensors(size_mib: int) -> dict[str, torch.Tensor]:
    """``size_mib`` MiB of float32 tensors of 16 MiB each (the last one smaller)."""
    gen = torch.Generator().manual_seed(0)
    tensors, left, index = {}, size_mib * MIB, 0
    while left > 0:
        count = min(TENSOR_MIB * MIB, left) // 4
        tensors[f"layers.{index}.weight"] = torch.randn(count, generator=gen)
        left -= count * 4
        index += 1
    return tensors


def timed(action: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


class _WriteBehindFile:
    """A file written like the artifact store writes it (write-behind, then fsync)."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._behind = WriteBehind(handle.fileno())

    def write(self, data: bytes | memoryview) -> int:
        count = self._handle.write(data)
        self._behind.wrote(len(data))
        return count

    def flush(self) -> None:
        self._handle.flush()


def seal_to(path: Path, tensors: dict[str, torch.Tensor], chunk_size: int, durable: bool) -> None:
    with path.open("wb") as handle:
        seal_checkpoint(
            tensors=tensors,
            manifest=Manifest(kind="full_weights", base_model="bench"),
            tenant_key=KEY,
            artifact_id="art_bench",
            out=_WriteBehindFile(handle) if durable else handle,  # type: ignore[arg-type]
            chunk_size=chunk_size,
        )
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def seal_to_store(
    store: LocalArtifactStore, tensors: dict[str, torch.Tensor], chunk_size: int
) -> None:
    """The server's path: seal into a store upload, commit (durable, atomic)."""
    with store.create("art_bench") as upload:
        info = seal_checkpoint(
            tensors=tensors,
            manifest=Manifest(kind="full_weights", base_model="bench"),
            tenant_key=KEY,
            artifact_id="art_bench",
            out=upload,  # type: ignore[arg-type]
            chunk_size=chunk_size,
        )
        upload.commit(expected_content_hash=info.content_hash)


def plain_save(path: Path, tensors: dict[str, torch.Tensor], durable: bool) -> None:
    save_file(tensors, path)
    if durable:
        fsync_file(path)


def plain_load_touch(path: Path) -> None:
    for tensor in load_file(path).values():  # lazily mapped: touch every 4 KiB page
        tensor.view(-1)[::1024].sum()


def plain_load_copy(path: Path) -> None:
    # Tensors in private memory, like open_checkpoint's (no mapping of the file left).
    [tensor.clone() for tensor in load_file(path).values()]


def decrypt_in_memory(path: Path) -> None:
    with path.open("rb") as src:
        open_checkpoint(src, keys=KEY, tenant_id="bench", artifact_id="art_bench")


def decrypt_to_dir(path: Path, out: Path) -> None:
    with path.open("rb") as src:
        decrypt_to_directory(src, out, keys=KEY, tenant_id="bench", artifact_id="art_bench")


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


def core_encrypt(size: int, chunk_size: int) -> tuple[float, float]:
    """Stream core only: encrypt + ciphertext SHA-256 of ``size`` bytes to nowhere."""
    block = memoryview(os.urandom(64 * MIB))

    def run() -> None:
        writer = SealingWriter(_Null(), tenant_key=KEY, artifact_id="a", chunk_size=chunk_size)  # type: ignore[arg-type]
        for start in range(0, size, len(block)):
            writer.write(block[: min(len(block), size - start)])
        writer.finish()

    return timed(run)


def _pieces(tensors: dict[str, torch.Tensor], chunk_size: int) -> list[memoryview]:
    views = [tensor_bytes(t) for t in tensors.values()]
    return [v[i : i + chunk_size] for v in views for i in range(0, len(v), chunk_size)]


def floor_sha256(tensors: dict[str, torch.Tensor], chunk_size: int) -> tuple[float, float]:
    """One single-stream SHA-256 pass over the tensor bytes, in chunk-sized pieces."""
    pieces = _pieces(tensors, chunk_size)

    def run() -> None:
        digest = hashlib.sha256()
        for piece in pieces:
            digest.update(piece)

    return timed(run)


def floor_aesgcm(tensors: dict[str, torch.Tensor], chunk_size: int) -> tuple[float, float]:
    """One AES-256-GCM pass (``encrypt_into`` one reused buffer) over the tensor bytes."""
    pieces = _pieces(tensors, chunk_size)
    aead = AESGCM(bytes(32))
    buffer = memoryview(bytearray(chunk_size + TAG_SIZE))

    def run() -> None:
        for index, piece in enumerate(pieces):
            nonce = index.to_bytes(12, "big")
            aead.encrypt_into(nonce, piece, b"", buffer[: len(piece) + TAG_SIZE])

    return timed(run)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(operation: str, size_mib: int, chunk_size: int, workdir: Path) -> None:
    """Child process: print the peak RSS increase (MiB) caused by ``operation``."""
    tensors = make_tensors(size_mib)
    artifact = workdir / "mem.tsa"
    if operation != "seal":
        seal_to(artifact, tensors, chunk_size, durable=False)
        tensors.clear()  # free the 1 GiB before the memory subprocesses
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = _status_kib("VmRSS")
    output = 0
    if operation == "seal":
        seal_to(workdir / "mem-seal.tsa", tensors, chunk_size, durable=False)
    elif operation == "decrypt_stream":
        decrypt_to_dir(artifact, workdir / "mem-out")
    else:
        with artifact.open("rb") as src:
            opened = open_checkpoint(src, keys=KEY, tenant_id="bench", artifact_id="art_bench")
        output = sum(t.numel() * t.element_size() for t in opened.tensors.values())
    peak = _status_kib("VmHWM")
    print(json.dumps({"extra_mib": (peak - baseline) * 1024 / MIB - output / MIB}))


def memory_in_subprocess(operation: str, args: argparse.Namespace, workdir: Path) -> float:
    command = [
        sys.executable,
        __file__,
        "--measure-memory",
        operation,
        "--size-mib",
        str(args.size_mib),
        "--chunk-size",
        str(args.chunk_size),
        "--dir",
        str(workdir),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["extra_mib"])


def run(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="tensafe-bench-", dir=args.dir))
    try:
        tensors = make_tensors(args.size_mib)
        nbytes = args.size_mib * MIB
        plain, sealed = workdir / "plain.safetensors", workdir / "sealed.tsa"
        results: dict[str, list[tuple[float, float]]] = {}

        def record(name: str, sample: tuple[float, float]) -> None:
            results.setdefault(name, []).append(sample)

        def save_pair(durable: bool) -> None:
            # Fresh files each time (no truncation of the previous run's pages).
            suffix = "_fsync" if durable else ""
            plain.unlink(missing_ok=True)
            record("plain_save" + suffix, timed(lambda: plain_save(plain, tensors, durable)))
            sealed.unlink(missing_ok=True)
            record(
                "encrypted_save" + suffix,
                timed(lambda: seal_to(sealed, tensors, args.chunk_size, durable)),
            )

        store = LocalArtifactStore(workdir / "store")
        for _ in range(2):  # warm-up: allocator, page cache, thread start
            save_pair(durable=False)
        results.clear()
        for _ in range(args.repeats):
            save_pair(durable=False)
            save_pair(durable=True)
            store.delete("art_bench")  # deleting the previous one is not part of a save
            record("store_save", timed(lambda: seal_to_store(store, tensors, args.chunk_size)))
            record("floor_sha256", floor_sha256(tensors, args.chunk_size))
            record("floor_aesgcm", floor_aesgcm(tensors, args.chunk_size))
            record("plain_load", timed(lambda: plain_load_touch(plain)))
            record("plain_load_copy", timed(lambda: plain_load_copy(plain)))
            record("decrypt", timed(lambda: decrypt_in_memory(sealed)))
            shutil.rmtree(workdir / "out", ignore_errors=True)
            record("decrypt_to_dir", timed(lambda: decrypt_to_dir(sealed, workdir / "out")))
            record("core_encrypt", core_encrypt(nbytes, args.chunk_size))
        wall = {k: statistics.median(s[0] for s in v) for k, v in results.items()}
        cpu = {k: statistics.median(s[1] for s in v) for k, v in results.items()}
        tensors.clear()  # free the 1 GiB before the memory subprocesses
        memory = {
            op: memory_in_subprocess(op, args, workdir)
            for op in ("seal", "decrypt_stream", "decrypt_memory")
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    gb = nbytes / 1e9
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    sha_pass, aes_pass = wall["floor_sha256"], wall["floor_aesgcm"]
    # All the work of an encrypted save (two SHA-256 streams, AES, the write, taken
    # as long as the plain save) on every core at once, but never below one stream.
    cpu_floor = max(sha_pass, (2 * sha_pass + aes_pass + wall["plain_save"]) / cores)
    result: dict[str, object] = {
        "size_mib": args.size_mib,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "plain_save_s": round(wall["plain_save"], 3),
        "encrypted_save_s": round(wall["encrypted_save"], 3),
        "encrypted_save_time_ratio": round(wall["encrypted_save"] / wall["plain_save"], 2),
        "plain_save_fsync_s": round(wall["plain_save_fsync"], 3),
        "encrypted_save_fsync_s": round(wall["encrypted_save_fsync"], 3),
        "encrypted_save_time_ratio_durable": round(
            wall["encrypted_save_fsync"] / wall["plain_save_fsync"], 2
        ),
        "store_save_s": round(wall["store_save"], 3),
        "store_save_time_ratio_durable": round(wall["store_save"] / wall["plain_save_fsync"], 2),
        "plain_load_mmap_s": round(wall["plain_load"], 3),
        "plain_load_copy_s": round(wall["plain_load_copy"], 3),
        "decrypt_s": round(wall["decrypt"], 3),
        "decrypt_time_ratio": round(wall["decrypt"] / wall["plain_load_copy"], 2),
        "decrypt_to_dir_s": round(wall["decrypt_to_dir"], 3),
        "encrypt_gbps": round(gb / wall["encrypted_save"], 3),
        "encrypt_gbps_per_core": round(gb / cpu["encrypted_save"], 3),
        "core_encrypt_hash_gbps_per_core": round(gb / cpu["core_encrypt"], 3),
        "decrypt_gbps": round(gb / wall["decrypt"], 3),
        "decrypt_gbps_per_core": round(gb / cpu["decrypt"], 3),
        "sha256_gbps": round(gb / sha_pass, 3),
        "aesgcm_gbps": round(gb / aes_pass, 3),
        "save_ratio_floor": round(sha_pass / wall["plain_save"], 2),
        "save_ratio_floor_cpu": round(cpu_floor / wall["plain_save"], 2),
        "save_ratio_floor_durable": round(
            max(cpu_floor, wall["plain_save_fsync"]) / wall["plain_save_fsync"], 2
        ),
        "peak_extra_mib": round(max(memory.values()), 1),
        "peak_extra_mib_seal": round(memory["seal"], 1),
        "peak_extra_mib_decrypt_stream": round(memory["decrypt_stream"], 1),
        "peak_extra_mib_decrypt_memory": round(memory["decrypt_memory"], 1),
        "memory_method": "VmHWM reset via /proc/self/clear_refs, fresh subprocess per operation",
    }
    core_gbps = gb / cpu["core_encrypt"]
    save_ratio = wall["encrypted_save"] / wall["plain_save"]
    durable_ratio = wall["encrypted_save_fsync"] / wall["plain_save_fsync"]
    peak = max(memory.values())
    result["targets"] = {
        "core_encrypt_hash_gbps_per_core": 1.0,
        "encrypted_save_time_ratio": 1.3,
        "peak_extra_mib": 64.0,
    }
    result["targets_met"] = {
        "core_encrypt_hash_gbps_per_core": core_gbps >= 1.0,
        "encrypted_save_time_ratio": save_ratio <= 1.3,
        "encrypted_save_time_ratio_durable": durable_ratio <= 1.3,
        "peak_extra_mib": peak <= 64.0,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="tensor bytes (default 1024)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--dir", default=None, help="scratch directory (default: system temp)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as last line")
    parser.add_argument("--measure-memory", choices=["seal", "decrypt_stream", "decrypt_memory"])
    args = parser.parse_args(argv)
    if args.measure_memory:
        measure_memory(args.measure_memory, args.size_mib, args.chunk_size, Path(args.dir))
        return 0
    result = run(args)
    width = max(map(len, result))
    for name, value in result.items():
        print(f"{name:<{width}}  {value}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
