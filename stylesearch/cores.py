"""How many cores this process may use, and the worker counts derived from that (the one home of both)."""

from __future__ import annotations

import os

MAX_DECODE_WORKERS = 8


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def pool_workers(requested: int | None = None) -> int:
    """Processes for CPU-bound work with nothing else running (thumbnails): as asked, else one per core."""
    return requested if requested is not None and requested > 0 else available_cores()


def decode_workers(requested: int | None = None) -> int:
    """Image-decoding processes beside a model (embedding): as asked, else half the cores, 1 to 8, since
    the model's own threads need the rest."""
    if requested is not None:
        return requested
    return max(1, min(MAX_DECODE_WORKERS, available_cores() // 2))
