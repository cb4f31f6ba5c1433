"""The local torch encoder: a DataLoader decodes and preprocesses in worker processes,
the model encodes each batch on the chosen device."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from .base import EncodedBatch, EncoderOptions, decode_workers
from .pixels import Preprocess, load_item


class _DecodeDataset:
    """Decodes and preprocesses one image per index; failures become None (counted, skipped).

    JPEGs are reduced on decode (pixels.Preprocess.draft_side) when the model's preprocessing is known.
    """

    def __init__(self, files: Sequence[Path], preprocess, draft: Preprocess | None = None):
        self.files = list(files)
        self.preprocess = preprocess
        self.draft = draft

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        pixels, error = load_item(self.files[i], self.preprocess, self.draft)
        return i, pixels, error


def _collate(batch):
    import torch

    good = [(i, t) for i, t, _ in batch if t is not None]
    bad = [(i, err) for i, t, err in batch if t is None]
    pixels = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], pixels, bad


def model_preprocess(model) -> Preprocess | None:
    """The torch-free description of a loaded model's preprocessing (for reduce-on-decode), if it has one."""
    cfg = getattr(getattr(model.model, "visual", None), "preprocess_cfg", None)
    return Preprocess.from_config(cfg) if cfg else None


class LocalEncoder:
    """Encodes with an open_clip model loaded in this process."""

    backend = "torch"

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

    @property
    def torch_model(self):
        """The loaded model, for exports that need torch (embed/export.py)."""
        return self.model

    def encode(self, files: Sequence[Path]) -> Iterator[EncodedBatch]:
        from torch.utils.data import DataLoader

        opts = self.options
        workers = decode_workers(opts)
        dataset = _DecodeDataset(files, self.model.preprocess, model_preprocess(self.model))
        loader = DataLoader(dataset, batch_size=opts.batch_size, num_workers=workers, collate_fn=_collate,
                            pin_memory=self.device.startswith("cuda"), prefetch_factor=4 if workers else None)
        for idx, pixels, bad in loader:
            vectors = self.model.encode_images(pixels) if pixels is not None else None
            yield EncodedBatch(idx, vectors, bad)

    def report(self) -> dict:
        return {"backend": self.backend}
