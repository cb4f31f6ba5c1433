"""Incremental image embedding: scan, find content without vectors, encode, commit per batch.

How vectors are computed is the Encoder's business (encoders/); this module decides what
needs embedding, stores the results and reports the rate. When a run loaded the torch model
anyway, it also exports the text tower to ONNX once (embed.export), for torch-free text search.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..ingest.scan import scan
from ..progress import Progress, or_null, step
from ..store.catalog import Catalog, open_catalog
from ..store.datasets import create_dataset
from ..store.files import writer_lock
from ..store.paths import DatasetPaths
from .backends import make_encoder
from .encoders.base import Encoder, EncoderOptions
from .export import export_text_after_embedding, remove_interrupted_exports
from .models import ModelSpec


@dataclass
class EmbedResult:
    model_key: str
    scanned: dict
    embedded: int = 0
    already_embedded: int = 0
    failed: int = 0
    device: str | None = None
    seconds: float = 0.0  # decoding + encoding + storing, model loading and exports excluded
    backend: dict = field(default_factory=dict)  # the encoder's report: backend name, int8 agreement
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        done = self.embedded + self.failed
        return round(done / self.seconds, 2) if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"model": self.model_key, **self.scanned, "embedded": self.embedded,
                "already_embedded": self.already_embedded, "failed": self.failed, "device": self.device,
                "seconds": round(self.seconds, 2), "images_per_second": self.images_per_second, **self.backend}


@dataclass(frozen=True)
class EmbedOptions(EncoderOptions):
    storage_dtype: str = "float32"  # or float16
    export_onnx: bool = True  # export the text tower once when the run loads the torch model


def _pending(catalog: Catalog, model_key: str) -> tuple[list[str], list[Path], int]:
    """Unique content hashes of live items still lacking a vector, one file each."""
    have = catalog.vectors.hashes(model_key)
    hashes, files, already = [], [], 0
    seen: set[str] = set()
    for item in catalog.items("ok"):
        if item.content_hash in have:
            already += 1
        elif item.content_hash not in seen:
            seen.add(item.content_hash)
            hashes.append(item.content_hash)
            files.append(catalog.paths.item_file(item.path))
    return hashes, files, already


def embed_dataset(paths: DatasetPaths, spec: ModelSpec, files: Sequence[Path] | None = None,
                  options: EmbedOptions = EmbedOptions(), progress: Progress | None = None,
                  model=None, lock: bool = True, create: bool = False,
                  encoder: Encoder | None = None) -> EmbedResult:
    """Bring `spec`'s vectors up to date with the dataset's files.

    Only content without a vector is embedded (renamed or duplicate files reuse vectors);
    vectors are committed per batch, so an interrupted run resumes where it stopped.
    The encoder (and its model) is not made at all when nothing needs embedding.
    """
    if create:
        create_dataset(paths)
    guard = writer_lock(paths) if lock else contextlib.nullcontext()
    with guard, open_catalog(paths) as catalog:
        remove_interrupted_exports(paths, spec.key)
        scanned = scan(catalog, files=files, prune=files is None)
        hashes, todo, already = _pending(catalog, spec.key)
        result = EmbedResult(spec.key, scanned.as_dict(), already_embedded=already, warnings=scanned.warnings)
        if not todo:
            return result
        if encoder is None:
            with step(progress, f"loading model {spec.name}"):
                encoder = make_encoder(spec, options, model, paths, len(todo))
        result.device = encoder.device
        dtype = _storage_dtype(catalog, encoder, spec, options.storage_dtype)
        start = time.perf_counter()
        _commit_batches(catalog, encoder, hashes, todo, dtype, or_null(progress), result)
        result.seconds = time.perf_counter() - start
        result.backend = encoder.report() if hasattr(encoder, "report") else {}
        _export_text_tower(paths, spec, encoder, options, result, progress)
    return result


def _export_text_tower(paths: DatasetPaths, spec: ModelSpec, encoder: Encoder, options: EmbedOptions,
                       result: EmbedResult, progress: Progress | None) -> None:
    model = getattr(encoder, "torch_model", None)
    if options.export_onnx and model is not None:
        warning = export_text_after_embedding(paths, spec, model, progress)
        if warning:
            result.warnings.append(warning)


def _storage_dtype(catalog: Catalog, encoder: Encoder, spec: ModelSpec, wanted: str) -> str:
    known = catalog.vectors.model(spec.key)
    if known:
        return known["dtype"]
    catalog.vectors.ensure_model(spec.key, spec.name, spec.pretrained or "", encoder.dim, wanted)
    return wanted


def _commit_batches(catalog: Catalog, encoder: Encoder, hashes: list[str], files: list[Path], dtype: str,
                    progress: Progress, result: EmbedResult) -> None:
    progress.start("embedding images", len(files))
    try:
        for batch in encoder.encode(files):
            with catalog.transaction():
                if batch.vectors is not None and len(batch.indices):
                    catalog.vectors.put(result.model_key, [hashes[i] for i in batch.indices],
                                        batch.vectors, dtype)
                    result.embedded += len(batch.indices)
                for i, err in batch.failures:
                    _mark_corrupt(catalog, hashes[i])
                    result.failed += 1
                    result.warnings.append(f"{files[i]}: {err}")
            progress.advance(len(batch.indices) + len(batch.failures))
    finally:
        progress.finish()


def _mark_corrupt(catalog: Catalog, content_hash: str) -> None:
    catalog.set_status([it.id for it in catalog.items_with_hash(content_hash)], "corrupt")
