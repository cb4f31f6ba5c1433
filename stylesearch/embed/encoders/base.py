"""The Encoder interface every embedding backend implements.

An Encoder turns image files into L2-normalised float32 vectors, batch by batch, so that the
embedding run can commit each batch as it arrives. Failures (unreadable or undecodable files)
come back per file instead of raising, so one bad file never stops a run. Which backend embeds
is decided in embed/backends.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from ... import cores


@dataclass
class EncodedBatch:
    """Vectors of the files at `indices` (positions in the list given to encode) and failed files."""

    indices: list[int]
    vectors: np.ndarray | None
    failures: list[tuple[int, str]]


class Encoder(Protocol):
    key: str  # the model key the vectors belong to
    dim: int
    device: str
    backend: str

    def encode(self, files: Sequence[Path]) -> Iterator[EncodedBatch]: ...

    def report(self) -> dict: ...  # backend facts for the run's summary (e.g. int8 agreement)


@dataclass(frozen=True)
class EncoderOptions:
    backend: str = "auto"
    batch_size: int = 32
    workers: int | None = None  # decode threads (DataLoader fallback: processes); None = decode_workers()
    device: str = "auto"
    precision: str = "auto"
    engine: str = "local"  # local, or ray (a Ray cluster; see encoders/ray.py)
    ray_address: str | None = None  # None: a local Ray instance; "auto" or "ray://host:port": a cluster
    ray_workers: int = 2  # model actors
    ray_gpus: float = 0.0  # GPUs per model actor


def decode_workers(options: EncoderOptions) -> int:
    """Decode threads of a run: as asked, else cores.decode_workers's default."""
    return cores.decode_workers(options.workers)
