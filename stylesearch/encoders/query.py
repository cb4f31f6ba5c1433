"""Encoding query terms (text prompts, query images) for search.

`query_encoder` is the one place search gets its query vectors from, so a faster backend
(an ONNX export of the towers, a cache of text vectors) plugs in here without search knowing.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..models import ModelSpec
from ..storage import DatasetPaths


class QueryEncoder(Protocol):
    def encode_text(self, texts: list[str]) -> np.ndarray: ...

    def encode_image(self, image) -> np.ndarray: ...  # a decoded RGB PIL image -> one unit vector


class TorchQueryEncoder:
    """Query vectors from the open_clip model loaded in this process (loaded on first use)."""

    def __init__(self, spec: ModelSpec, device: str = "auto"):
        self.spec, self.device = spec, device
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from ..models import load_model

            self._model = load_model(self.spec, self.device)
        return self._model

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self.model.encode_text(texts)

    def encode_image(self, image) -> np.ndarray:
        return self.model.encode_images(self.model.preprocess(image).unsqueeze(0))[0]


def query_encoder(paths: DatasetPaths, spec: ModelSpec, device: str = "auto") -> QueryEncoder:
    """The encoder for text and image query terms of a dataset's model."""
    return TorchQueryEncoder(spec, device)
