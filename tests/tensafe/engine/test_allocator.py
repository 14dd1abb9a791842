"""retain_freed_memory: freed memory is reused instead of being faulted in afresh.

Each case runs in a fresh interpreter (the allocator's state is per process): it
allocates three 24 MiB blocks, touches every page and frees them, four rounds, and
counts the minor page faults of rounds 2–4. glibc's default maps such blocks fresh or
trims the heap they came from once they are free, so every round faults their pages in
again; with retain_freed_memory they come from a heap that is kept, so later rounds
fault almost nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_ROUNDS = r"""
import ctypes, json, resource, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
applied = None
if sys.argv[1] == "retain":
    from tensafe.engine.allocator import retain_freed_memory
    applied = retain_freed_memory()
size = 24 << 20
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(size) for _ in range(3)]
    for b in blocks:
        libc.memset(b, 1, size)
    for b in blocks:
        libc.free(b)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""

PAGES_PER_ROUND = 3 * (24 << 20) // 4096  # 18432 pages of 4 KiB


def _rounds(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_memory_is_reused_with_retain_and_faulted_again_without():
    retained, default = _rounds("retain"), _rounds("default")
    assert retained["applied"] is True
    # first round: fresh pages either way
    assert retained["faults"][0] >= PAGES_PER_ROUND // 2
    # later rounds: retained memory is reused; glibc's default faults it in again
    assert max(retained["faults"][1:]) < PAGES_PER_ROUND // 20
    assert min(default["faults"][1:]) > PAGES_PER_ROUND // 2


def test_retain_freed_memory_is_applied_once_per_process():
    from tensafe.engine.allocator import retain_freed_memory

    assert retain_freed_memory() is True
    assert retain_freed_memory() is True
    assert retain_freed_memory.cache_info().misses == 1  # one mallopt pair per process
