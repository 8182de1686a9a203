"""Host (CPU) allocator setting for training: make freed tensor memory go back to the OS.

glibc's malloc serves blocks under its mmap threshold from arenas it keeps, and raises that threshold (up to 32 MiB)
each time a large mmapped block is freed. Packed micro-batches change length every step, so the activations of one
step (mostly 1-30 MiB tensors) are carved from arenas that freed tensors of other sizes fragment; the process then
holds far more than the live tensors (the plan of `make agent`'s LoRA step is 6.3 GiB; its RSS peaked near 13 GB).
Fixing the threshold at 1 MiB (mallopt) sends every tensor of 1 MiB or more to its own mapping, returned on free, so
RSS follows the live tensors. `COALM_CPU_MALLOC=default` leaves glibc's behaviour alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
THRESHOLD = 1 << 20


def return_freed_memory() -> bool:
    """Fix glibc's mmap threshold (Linux only); True when applied."""
    if os.environ.get("COALM_CPU_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to set
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
