"""Incremental image embedding: scan, embed only new content, commit per batch."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .catalog import Catalog, open_catalog
from .dataset import create_dataset
from .images import BadImage, item_file, load_rgb
from .models import LoadedModel, ModelSpec, load_model
from .progress import Progress, or_null
from .scan import scan
from .storage import DatasetPaths, writer_lock


@dataclass
class EmbedResult:
    model_key: str
    scanned: dict
    embedded: int = 0
    already_embedded: int = 0
    failed: int = 0
    device: str | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"model": self.model_key, **self.scanned, "embedded": self.embedded,
                "already_embedded": self.already_embedded, "failed": self.failed, "device": self.device}


@dataclass(frozen=True)
class EmbedOptions:
    batch_size: int = 32
    workers: int | None = None  # decode/preprocess processes; None = one per core
    device: str = "auto"
    precision: str = "auto"
    storage_dtype: str = "float32"  # or float16


class _DecodeDataset:
    """Decodes and preprocesses one image per index; failures become None (counted, skipped)."""

    def __init__(self, files: Sequence[Path], preprocess):
        self.files = list(files)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(load_rgb(self.files[i])), None
        except BadImage as exc:
            return i, None, exc.message
        except OSError as exc:
            return i, None, str(exc)


def _collate(batch):
    import torch

    good = [(i, t) for i, t, _ in batch if t is not None]
    bad = [(i, err) for i, t, err in batch if t is None]
    pixels = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], pixels, bad


def _pending(catalog: Catalog, model_key: str) -> tuple[list[str], list[Path], int]:
    """Unique content hashes of live items still lacking a vector, one file each."""
    have = catalog.hashes_with_vectors(model_key)
    hashes, files, already = [], [], 0
    seen: set[str] = set()
    for item in catalog.items("ok"):
        if item.content_hash in have:
            already += 1
        elif item.content_hash not in seen:
            seen.add(item.content_hash)
            hashes.append(item.content_hash)
            files.append(item_file(catalog.paths.images, item.path))
    return hashes, files, already


def embed_dataset(paths: DatasetPaths, spec: ModelSpec, files: Sequence[Path] | None = None,
                  options: EmbedOptions = EmbedOptions(), progress: Progress | None = None,
                  model: LoadedModel | None = None, lock: bool = True, create: bool = False) -> EmbedResult:
    """Bring `spec`'s vectors up to date with the dataset's files.

    Only content without a vector is embedded (renamed or duplicate files reuse vectors);
    vectors are committed per batch, so an interrupted run resumes where it stopped.
    The model is not loaded at all when nothing needs embedding.
    """
    if create:
        create_dataset(paths)
    guard = writer_lock(paths) if lock else contextlib.nullcontext()
    with guard, open_catalog(paths) as catalog:
        scanned = scan(catalog, files=files, prune=files is None)
        hashes, todo, already = _pending(catalog, spec.key)
        result = EmbedResult(spec.key, scanned.as_dict(), already_embedded=already, warnings=scanned.warnings)
        if not todo:
            return result
        model = model or load_model(spec, options.device, options.precision)
        result.device = model.device
        dtype = _storage_dtype(catalog, model, spec, options.storage_dtype)
        _embed_files(catalog, model, hashes, todo, options, dtype, or_null(progress), result)
    return result


def _storage_dtype(catalog: Catalog, model: LoadedModel, spec: ModelSpec, wanted: str) -> str:
    known = catalog.model(spec.key)
    if known:
        return known["dtype"]
    catalog.ensure_model(spec.key, spec.name, spec.pretrained or "", model.dim, wanted)
    return wanted


def _embed_files(catalog: Catalog, model: LoadedModel, hashes: list[str], files: list[Path],
                 options: EmbedOptions, dtype: str, progress: Progress, result: EmbedResult) -> None:
    from torch.utils.data import DataLoader

    workers = options.workers if options.workers is not None else min(8, os.cpu_count() or 1)
    loader = DataLoader(_DecodeDataset(files, model.preprocess), batch_size=options.batch_size,
                        num_workers=workers, collate_fn=_collate, pin_memory=model.device.startswith("cuda"),
                        prefetch_factor=4 if workers else None)
    progress.start("embedding", len(files))
    try:
        for idx, pixels, bad in loader:
            with catalog.transaction():
                if pixels is not None:
                    catalog.put_vectors(model.key, [hashes[i] for i in idx],
                                        model.encode_images(pixels), dtype)
                    result.embedded += len(idx)
                for i, err in bad:
                    _mark_corrupt(catalog, hashes[i])
                    result.failed += 1
                    result.warnings.append(f"{files[i]}: {err}")
            progress.advance(len(idx) + len(bad))
    finally:
        progress.finish()


def _mark_corrupt(catalog: Catalog, content_hash: str) -> None:
    catalog.set_status([it.id for it in catalog.items_with_hash(content_hash)], "corrupt")
