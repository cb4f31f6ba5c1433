"""`stylesearch import`: a collection downloaded by img2dataset and/or embedded by clip-retrieval, without
embedding it again."""

from __future__ import annotations

from typing import Optional

import typer

from .common import STATE, make_progress, model_option, pretrained_option, summary, warn_list


def import_(
    dataset: str = typer.Argument(..., help="Dataset name (new, or one imported from the same images before)."),
    folder: str = typer.Argument(..., help="img2dataset's output (image files with .json/.txt sidecars, or tar "
                                           "shards), clip-retrieval inference's output (img_emb/, metadata/), "
                                           "or one holding both."),
    images: Optional[str] = typer.Option(None, "--images", help="The image folder, when FOLDER holds only "
                                                                "clip-retrieval's embeddings."),
    model: Optional[str] = model_option(),
    pretrained: Optional[str] = pretrained_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Import images, their metadata and captions, and clip-retrieval's vectors for the model they were
    computed with (-m/-p; their size is checked), so index, search, train, umap-export and serve work
    without embedding. The dataset's images/ links to the image folder; a rerun imports what is new."""
    from ..embed.choice import resolve_spec
    from ..embed.configs import embedding_dim
    from ..ingest.imports import ImportModel, import_folder
    from ..store.paths import dataset_paths

    paths = dataset_paths(dataset, STATE.root)
    spec = resolve_spec(paths, model, pretrained)
    target = ImportModel(spec.key, spec.name, spec.pretrained or "", embedding_dim(spec))
    progress = make_progress()
    result = import_folder(paths, folder, target, images, progress)
    warn_list(result.warnings)
    summary({"model": spec.key, **result.as_dict()}, as_json, "import", progress)


def register(app: typer.Typer) -> None:
    app.command("import")(import_)
