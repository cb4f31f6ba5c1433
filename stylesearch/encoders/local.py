"""The local torch encoder: a DataLoader decodes and preprocesses in worker processes,
the model encodes each batch on the chosen device."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

from ..images import BadImage, load_rgb
from . import EncodedBatch, EncoderOptions


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
            return i, None, exc.strerror or str(exc)


def _collate(batch):
    import torch

    good = [(i, t) for i, t, _ in batch if t is not None]
    bad = [(i, err) for i, t, err in batch if t is None]
    pixels = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], pixels, bad


class LocalEncoder:
    """Encodes with an open_clip model loaded in this process."""

    def __init__(self, model, options: EncoderOptions):
        self.model = model
        self.options = options
        self.key = model.key
        self.dim = model.dim
        self.device = model.device

    @classmethod
    def load(cls, spec, options: EncoderOptions, model=None) -> "LocalEncoder":
        from ..models import load_model

        return cls(model or load_model(spec, options.device, options.precision), options)

    def encode(self, files: Sequence[Path]) -> Iterator[EncodedBatch]:
        from torch.utils.data import DataLoader

        opts = self.options
        workers = opts.workers if opts.workers is not None else min(8, os.cpu_count() or 1)
        loader = DataLoader(_DecodeDataset(files, self.model.preprocess), batch_size=opts.batch_size,
                            num_workers=workers, collate_fn=_collate,
                            pin_memory=self.device.startswith("cuda"), prefetch_factor=4 if workers else None)
        for idx, pixels, bad in loader:
            vectors = self.model.encode_images(pixels) if pixels is not None else None
            yield EncodedBatch(idx, vectors, bad)
