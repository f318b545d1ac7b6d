"""Keep freed CPU memory for reuse: glibc ``malloc`` settings for the backward pass's large temporaries.

PyTorch's CPU allocator is the C library's ``malloc``. glibc serves every block above its mmap
threshold (128 kB to start with) with a fresh ``mmap`` and unmaps it on ``free``, so each multi-megabyte
temporary of a backward pass (the ``K·C_l`` top-down maps of a layer, the score tables, the scratch
of the elementwise loops) is faulted in page by page on every pass. Measured on this project's 2-core
CPU (``python -m scripts.bench``, one thread), those page faults cost more than the arithmetic done in
the memory: with the settings below a pass at batch 32 ran about 2x faster per image.

:func:`keep_freed_memory` asks glibc (through ``mallopt``) to take those blocks from the heap instead
and to keep freed memory there for the next pass. It changes process-wide state, so the library never
calls it on import: the entry points that run many passes (``scripts.bench``, ``scripts.evaluate``,
``scripts.parse``, ``scripts.demo``) do. The cost is that the process's resident memory stays at its
high-water mark instead of shrinking between passes. On other C libraries it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["keep_freed_memory"]

# mallopt parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_STATE = {"applied": None}


def keep_freed_memory(top_pad_mb: int = 64) -> bool:
    """Make glibc's ``malloc`` keep and reuse freed memory (module docstring). Idempotent.

    :param int top_pad_mb: extra memory (MB) the heap grows by whenever it must grow, so that growing
        is rare.
    :returns: ``True`` when the settings were applied (glibc), ``False`` where they cannot be (another C
        library or platform), in which case nothing changed.
    """
    if not isinstance(top_pad_mb, int) or isinstance(top_pad_mb, bool) or not 0 <= top_pad_mb <= 4096:
        raise ValueError(f"top_pad_mb: expected an int in [0, 4096], got {top_pad_mb!r}")
    if _STATE["applied"] is not None:
        return _STATE["applied"]
    ok = False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            # No mmap'd blocks (every block from the heap, so freed ones are reused), and never give the
            # heap's free top back to the OS (it would be faulted in again by the next pass).
            ok = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(
                libc.mallopt(_M_TOP_PAD, top_pad_mb << 20))
        except (OSError, AttributeError):
            ok = False
    _STATE["applied"] = ok
    return ok
