"""Embedding backends behind one interface.

An Encoder turns image files into L2-normalised float32 vectors, batch by batch, so that
embed.py can commit each batch as it arrives. Failures (unreadable or undecodable files)
come back per file instead of raising, so one bad file never stops a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from ..choices import EMBED_BACKENDS as BACKENDS


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

    def encode(self, files: Sequence[Path]) -> Iterator[EncodedBatch]: ...


@dataclass(frozen=True)
class EncoderOptions:
    backend: str = "torch"
    batch_size: int = 32
    workers: int | None = None  # decode/preprocess processes; None = one per core (max 8)
    device: str = "auto"
    precision: str = "auto"


def make_encoder(spec, options: EncoderOptions = EncoderOptions(), model=None) -> Encoder:
    """The encoder of a backend; `model` reuses an already loaded torch model."""
    from ..errors import UserError

    if options.backend == "torch":
        from .local import LocalEncoder

        return LocalEncoder.load(spec, options, model)
    raise UserError(f"Unknown embedding backend {options.backend!r}.", f"Choose one of: {', '.join(BACKENDS)}.")
