"""The local torch encoder: the model encodes each batch on the chosen device while the next is
decoded beside it (pixels.decoded_batches: threads, torch-free preprocessing); a model without a
preprocessing config falls back to a DataLoader running its own transform in worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

from .base import EncodedBatch, EncoderOptions, decode_workers
from .pixels import Preprocess, decoded_batches, load_item, matching_preprocess, probe_images


class _DecodeDataset:
    """Decodes and transforms one image per index with the model's own transform; failures become
    None (counted, skipped)."""

    def __init__(self, files: Sequence[Path], preprocess):
        self.files = list(files)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        pixels, error = load_item(self.files[i], self.preprocess)
        return i, pixels, error


def _collate(batch):
    import torch

    good = [(i, t) for i, t, _ in batch if t is not None]
    bad = [(i, err) for i, t, err in batch if t is None]
    pixels = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], pixels, bad


def model_preprocess(model) -> Preprocess | None:
    """The torch-free equivalent of a loaded model's preprocessing, checked on a probe image (as an
    ONNX export checks it), or None: then the model's own transform runs."""
    found = matching_preprocess(model, probe_images())
    return found[0] if found else None


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
        preprocess = model_preprocess(self.model)
        if preprocess is None:
            yield from self._encode_with_loader(files)
            return
        import torch

        for idx, pixels, bad in decoded_batches(files, preprocess, self.options.batch_size,
                                                decode_workers(self.options)):
            vectors = self.model.encode_images(torch.from_numpy(pixels)) if pixels is not None else None
            yield EncodedBatch(idx, vectors, bad)

    def _encode_with_loader(self, files: Sequence[Path]) -> Iterator[EncodedBatch]:
        from torch.utils.data import DataLoader

        opts = self.options
        workers = decode_workers(opts)
        dataset = _DecodeDataset(files, self.model.preprocess)
        loader = DataLoader(dataset, batch_size=opts.batch_size, num_workers=workers, collate_fn=_collate,
                            pin_memory=self.device.startswith("cuda"), prefetch_factor=4 if workers else None)
        for idx, pixels, bad in loader:
            vectors = self.model.encode_images(pixels) if pixels is not None else None
            yield EncodedBatch(idx, vectors, bad)

    def report(self) -> dict:
        return {"backend": self.backend}
