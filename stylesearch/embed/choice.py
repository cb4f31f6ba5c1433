"""Which model a command uses: the one place that decides.

The rule, for every command, the labeller and training:
- no model and no weights given: the dataset's embedded model (an error lists them if there
  are several); a dataset with no embeddings yet gets the default model and weights;
- a model name alone: the embedded model of that name if exactly one exists, else that name
  with its default weights;
- weights (a tag, a file or 'random') are only needed to choose between embedded models of one
  name, or to embed with other weights.
"""

from __future__ import annotations

import os

from ..errors import NotReady, UserError
from ..store.catalog import open_catalog
from ..store.paths import DatasetPaths
from .models import DEFAULT_MODEL, DEFAULT_PRETRAINED, ModelSpec, default_pretrained, has_schema


def embedded_specs(paths: DatasetPaths) -> list[ModelSpec]:
    """The models a dataset has vectors of, oldest first (none when it has no catalog yet)."""
    if not paths.catalog.exists():
        return []
    with open_catalog(paths, readonly=True) as catalog:
        rows = catalog.vectors.models()
    return [ModelSpec(r["model_name"], r["pretrained"] or None, stored_key=r["model_key"]) for r in rows]


def _same_weights(spec: ModelSpec, pretrained: str) -> bool:
    if spec.pretrained == pretrained:
        return True
    return os.path.isfile(pretrained) and ModelSpec(spec.name, pretrained).key == spec.key


def _describe(specs: list[ModelSpec]) -> str:
    return ", ".join(f"{s.name} ({s.pretrained or 'own weights'})" for s in specs)


def resolve_spec(paths: DatasetPaths, model: str | None = None, pretrained: str | None = None,
                 embedded_only: bool = False) -> ModelSpec:
    """The model to use on a dataset, by the rule above.

    With `embedded_only` (search, index, projection, training, labelling), a model the
    dataset has no vectors of is an error instead of a new model to embed with.
    """
    embedded = embedded_specs(paths)
    matches = [s for s in embedded
               if (model is None or s.name == model) and (pretrained is None or _same_weights(s, pretrained))]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"Dataset {paths.name!r} has vectors of several models: {_describe(matches)}.",
                        "Choose one by its model name and, where names repeat, its pretrained weights.",
                        dataset=paths.name)
    if embedded_only:
        if not embedded:
            raise NotReady(f"Dataset {paths.name!r} has no embeddings yet.", "Embed its images first.",
                           dataset=paths.name, step="embed")
        asked = " ".join(x for x in (model, pretrained) if x)
        raise NotReady(f"Dataset {paths.name!r} has no embeddings of {asked}.",
                       f"Embedded models: {_describe(embedded)}. Embed with {asked} first, or choose one of these.",
                       dataset=paths.name, step="embed")
    name = model or DEFAULT_MODEL
    if has_schema(name):
        return ModelSpec(name, None)
    if pretrained is None:
        pretrained = DEFAULT_PRETRAINED if name == DEFAULT_MODEL else default_pretrained(name)
    return ModelSpec(name, pretrained)
