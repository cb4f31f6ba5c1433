"""Zero-shot attributes: label each item per attribute by comparing it with text prompts.

For every attribute (e.g. style = photo, illustration, 3d render) each label is embedded as
the mean of several prompt templates ("a photo of {}", ...), items are scored against the
labels with CLIP's logit scale, and a softmax per attribute gives the best label and its
probability, stored as the metadata fields `<attribute>` and `<attribute>_prob`. Only items
without the attribute are tagged unless asked to redo all.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

import numpy as np

from ..embed.encoders.query import query_encoder
from ..embed.models import ModelSpec
from ..errors import NotReady, UserError
from ..store.catalog import open_catalog
from ..store.files import writer_lock
from ..store.paths import DatasetPaths

TEMPLATES = ("a photo of {}.", "an image of {}.", "{}", "a picture in the style of {}.", "an example of {}.")
LOGIT_SCALE = 100.0  # CLIP's learned temperature, the same for the models open_clip ships
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def parse_attribute(text: str) -> tuple[str, list[str]]:
    """`name=label,label,"label, with comma"` -> (name, labels)."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not _NAME.fullmatch(name):
        raise UserError(f"Cannot read attribute {text!r}.",
                        "Write NAME=LABEL,LABEL,... with a name of letters, digits, '_' or '-'.")
    try:
        labels = [label.strip() for label in next(csv.reader(io.StringIO(rest), skipinitialspace=True), [])]
    except csv.Error as exc:
        raise UserError(f"Cannot read the labels of attribute {name!r}: {exc}.") from None
    labels = list(dict.fromkeys(label for label in labels if label))
    if len(labels) < 2:
        raise UserError(f"Attribute {name!r} needs at least two labels to choose between (got {len(labels)}).")
    return name, labels


@dataclass
class TagResult:
    attributes: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"attributes": self.attributes}


def label_vectors(encoder, labels: list[str], templates=TEMPLATES) -> np.ndarray:
    """One unit vector per label: the normalised mean of its prompt embeddings."""
    prompts = [t.format(label) for label in labels for t in templates]
    vectors = encoder.encode_text(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def zero_shot(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(best label index, its probability) per image, by softmax over CLIP logits."""
    logits = LOGIT_SCALE * images @ labels.T
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    best = probs.argmax(axis=1)
    return best, probs[np.arange(len(best)), best]


def tag_dataset(paths: DatasetPaths, spec: ModelSpec, attributes: dict[str, list[str]], redo: bool = False,
                encoder=None, device: str = "auto") -> TagResult:
    """Store the best label and its probability per attribute for every (untagged) embedded item."""
    if not attributes:
        raise UserError("No attributes to tag.", "Give at least one NAME=LABEL,LABEL attribute.")
    result = TagResult()
    with writer_lock(paths), open_catalog(paths) as catalog:
        ids, vectors = catalog.vectors.load(spec.key)
        if not len(ids):
            raise NotReady(f"Dataset {paths.name!r} has no embedded items to tag.", "Embed the dataset first.",
                           dataset=paths.name, step="embed")
        current = catalog.metadata(ids)
        encoder = encoder or query_encoder(paths, spec, device, dim=vectors.shape[1])
        for name, labels in attributes.items():
            todo = np.array([redo or name not in current.get(int(i), {}) for i in ids], dtype=bool)
            best, prob = zero_shot(vectors[todo], label_vectors(encoder, labels)) if todo.any() else ([], [])
            with catalog.transaction():
                for item_id, b, p in zip(ids[todo], best, prob):
                    catalog.set_metadata(int(item_id), {name: labels[int(b)], f"{name}_prob": round(float(p), 4)})
            counts = {label: int(np.sum(np.asarray(best) == n)) for n, label in enumerate(labels)}
            result.attributes[name] = {"tagged": int(todo.sum()), "already_tagged": int((~todo).sum()),
                                       "labels": counts}
    return result
