"""Keep freed memory in the process for reuse (glibc ``malloc``), instead of returning
it to the operating system after every training step.

A training step allocates and frees gigabytes: activations, output gradients, per-layer
clipped sums, the noisy gradients. By default glibc serves blocks above a threshold
that adapts up to 32 MiB with fresh ``mmap`` pages, and trims the heap back to the OS
once 64 MiB at its top are free, so the next step touches the same amount of fresh
memory again and the kernel zeroes every page of it on first touch. DP-SGD's ghost
clipping keeps each layer's output gradients until the clipped sums are formed, so its
heap grows further within a step and it pays more of those page faults than plain
training: on SmolLM2-135M full fine-tuning (2-core CPU) about 0.3–0.5 M minor faults
per ``forward_backward``, 0.3–0.8 s of the step, varying with whatever else the machine
does.

:func:`retain_freed_memory` sets ``M_MMAP_THRESHOLD`` to 32 MiB (blocks up to that size
come from the heap and are reused) and ``M_TRIM_THRESHOLD`` to 1 GiB (a freed heap is
kept), process-wide. The peak resident size is unchanged (the memory kept is what the
step already used at its peak); between steps it is not returned. Blocks above 32 MiB
(a ``B × T × V`` logits tensor) are still mapped and unmapped per use.

It is a process setting: the server applies it in each worker process (the in-process
backend's server process, every Ray actor) unless ``TENSAFE_RETAIN_FREED_MEMORY`` is
off; ``bench/dp_overhead.py`` applies it to every trainer it compares, the user's plain
baseline included.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger("tensafe.engine")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit).
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 1 << 30


@functools.cache
def retain_freed_memory() -> bool:
    """Make this process's glibc ``malloc`` reuse freed memory instead of returning it
    to the OS (see the module docstring). Applied once per process; later calls return
    the first call's outcome (every engine build calls it).

    Returns:
        ``True`` if both settings took effect; ``False`` where the process has no
        ``mallopt`` (not glibc) or it refused a setting (logged as a warning).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded in this process
    except (OSError, AttributeError):
        log.warning("retain_freed_memory: no glibc mallopt in this process; left as is")
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not applied:
        log.warning("retain_freed_memory: mallopt refused a setting")
    return applied


__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "retain_freed_memory"]
