"""Embedding backends behind one interface.

An Encoder turns image files into L2-normalised float32 vectors, batch by batch, so that
embed.py can commit each batch as it arrives. Failures (unreadable or undecodable files)
come back per file instead of raising, so one bad file never stops a run.

Backends: torch (open_clip in this process, any device), onnx (the dataset's ONNX export of
the image tower on the CPU) and onnx-int8 (its int8-quantised copy, which reports its cosine
agreement with fp32). `auto` takes onnx on the CPU, where it is the faster exact backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from ..choices import EMBED_BACKENDS as BACKENDS

# With no image export yet, `auto` uses torch for fewer pending images than this: exporting the
# image tower takes about as long as embedding ~150 images with torch on the CPU.
ONNX_WORTH_EXPORTING = 256


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
    workers: int | None = None  # decode/preprocess processes; None = decode_workers()
    device: str = "auto"
    precision: str = "auto"
    engine: str = "local"  # local, or ray (a Ray cluster; see encoders/ray.py)
    ray_address: str | None = None  # None: a local Ray instance; "auto" or "ray://host:port": a cluster
    ray_workers: int = 2  # model actors
    ray_gpus: float = 0.0  # GPUs per model actor


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def decode_workers(options: EncoderOptions) -> int:
    """Decode processes: as asked, else half the cores (the model's threads need the rest), 1 to 8."""
    return options.workers if options.workers is not None else max(1, min(8, cpu_count() // 2))


def choose_backend(options: EncoderOptions, spec, paths=None, pending: int = 0) -> str:
    """The backend `auto` means here: onnx on the CPU when an image export exists or pays off, else torch."""
    from ..errors import UserError

    if options.backend not in BACKENDS:
        raise UserError(f"Unknown embedding backend {options.backend!r}.", f"Choose one of: {', '.join(BACKENDS)}.")
    if options.backend != "auto":
        return options.backend
    if paths is None or options.device not in ("auto", "cpu"):
        return "torch"
    from .onnx import load_export

    export = load_export(paths, spec.key)
    if (export is None or export.tower("image") is None) and pending < ONNX_WORTH_EXPORTING:
        return "torch"
    if options.device == "auto":
        from ..models import pick_device

        return "onnx" if pick_device("auto") == "cpu" else "torch"
    return "onnx"


def make_encoder(spec, options: EncoderOptions = EncoderOptions(), model=None, paths=None,
                 pending: int = 0) -> Encoder:
    """The encoder of a backend; `model` reuses an already loaded torch model, `paths` holds ONNX exports."""
    if options.engine == "ray":
        from .ray import RayEncoder, RayOptions

        return RayEncoder.load(spec, options, RayOptions(options.ray_address, options.ray_workers, options.ray_gpus),
                               model)
    if options.engine != "local":
        from ..errors import UserError

        raise UserError(f"Unknown engine {options.engine!r}.", "Choose local or ray.")
    backend = choose_backend(options, spec, paths, pending)
    if backend != "torch":
        from ..errors import StyleSearchError, UserError
        from .onnx import onnx_encoder

        if paths is None:
            raise UserError(f"The {backend} backend needs a dataset to keep its ONNX export in.")
        try:
            return onnx_encoder(paths, spec, options, backend, model)
        except StyleSearchError:  # e.g. an image tower that cannot be exported: `auto` embeds with torch
            if options.backend != "auto":
                raise
    from .local import LocalEncoder

    return LocalEncoder.load(spec, options, model)
