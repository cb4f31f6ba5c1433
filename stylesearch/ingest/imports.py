"""Import a collection downloaded or embedded elsewhere, without embedding it again.

Two layouts, alone or together (the usual pipeline is img2dataset, then `clip-retrieval inference`):

- img2dataset's output: image files with `.json`/`.txt` sidecars (`00000/000000001.jpg`), or tar
  shards (`00000.tar` with `key.jpg`, `key.json`, `key.txt`, beside `00000.parquet`). The folder
  becomes the dataset's `images/` (a link to it: nothing is copied), is scanned as any images folder
  (shards read in place), and each item gets its sidecar JSON as metadata (plus its `key`), its text
  as caption and the JSON's `url` as source URL.
- clip-retrieval's inference output: `img_emb/img_emb_N.npy` with `metadata/metadata_N.parquet`
  (row i of one describes row i of the other: `image_path`, `caption`, `url` and any other columns).
  Each row's vector (checked against the model's dimension, normalised) is stored for the item its
  `image_path` names; the other columns become metadata. Both files stream, read a batch of rows at a
  time, so the vectors' memory stays at one batch whatever their number.

`image_path` values are data: one that climbs out (`..`) or is an absolute path outside the images
folder is refused and counted, never opened; one naming no catalogued image is counted. Nothing here
reads a file a value names. Re-running imports only what is new.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import UserError
from ..progress import Progress, or_null
from ..store.catalog import Catalog, open_catalog
from ..store.files import writer_lock
from ..store.images import is_image_name
from ..store.paths import DatasetPaths
from ..store.shards import is_shard_name
from .clip_vectors import ImportModel, ImportResult, import_vectors
from .scan import scan
from .urls import is_http_url

SIDECAR_BYTES = 1 << 20  # larger .json/.txt sidecars are skipped
_PART = re.compile(r"img_emb_(.+)\.npy")


def find_embeddings(folder: Path) -> Path | None:
    """The clip-retrieval output folder (`img_emb/` + `metadata/`): `folder` itself or a folder in it."""
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (candidate / "img_emb").is_dir() and (candidate / "metadata").is_dir():
            return candidate
    return None


def embedding_parts(folder: Path) -> list[tuple[Path, Path]]:
    """(img_emb_N.npy, metadata_N.parquet) pairs, in order of N; UserError for an array without its table."""
    pairs = []
    for npy in sorted((folder / "img_emb").glob("img_emb_*.npy")):
        part = _PART.fullmatch(npy.name).group(1)
        table = folder / "metadata" / f"metadata_{part}.parquet"
        if not table.is_file():
            raise UserError(f"{npy} has no {table.name} beside it in {table.parent}.",
                            "Import the whole output folder of clip-retrieval inference.")
        pairs.append((npy, table))
    return pairs


def has_images(folder: Path, skip: Path | None = None) -> bool:
    """Whether a folder holds image files or tar shards (outside `skip`)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and Path(dirpath, d) != skip]
        if any(is_image_name(f) or is_shard_name(f) for f in filenames):
            return True
    return False


def import_folder(paths: DatasetPaths, folder: str | os.PathLike, model: ImportModel,
                  images: str | os.PathLike | None = None, progress: Progress | None = None) -> ImportResult:
    """Import `folder` (img2dataset and/or clip-retrieval output) into a dataset; `images` names the
    image folder when it is not `folder` itself (clip-retrieval's output alone)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder.")
    embeddings = find_embeddings(folder)
    image_root = Path(images).expanduser() if images else folder
    if not image_root.is_dir() or not has_images(image_root, embeddings):
        raise UserError(f"{image_root} holds no images (image files or tar shards).",
                        "Name the folder of the images the embeddings were computed from (img2dataset's output).")
    parts = embedding_parts(embeddings) if embeddings else []
    with writer_lock(paths):
        link_images(paths, image_root)
        with open_catalog(paths, create=True) as catalog:
            result = ImportResult(os.path.realpath(image_root))
            scanned = scan(catalog)
            result.scanned, result.warnings = scanned.as_dict(), scanned.warnings
            result.described = describe_items(catalog)
            if parts:
                import_vectors(catalog, parts, model, image_root, result, or_null(progress))
    return result


def link_images(paths: DatasetPaths, image_root: Path) -> None:
    """Make the dataset's images/ a link to `image_root` (kept when it already is one)."""
    real = os.path.realpath(image_root)
    home = os.path.realpath(paths.home)
    if home == real or home.startswith(real.rstrip(os.sep) + os.sep):
        raise UserError(f"Dataset {paths.name!r} lies inside {image_root}: its own files would be scanned as images.",
                        "Keep the datasets folder outside the folder you import.")
    if paths.images.is_symlink() or paths.images.exists():
        if os.path.realpath(paths.images) == real:
            return
        if paths.images.is_symlink() or not paths.images.is_dir() or any(paths.images.iterdir()):
            raise UserError(f"Dataset {paths.name!r} already has images in {paths.images}.",
                            "Import into a new dataset.", dataset=paths.name)
        paths.images.rmdir()
    paths.images.symlink_to(real, target_is_directory=True)


def describe_items(catalog: Catalog) -> int:
    """Items not described yet: loose files get their `.json`/`.txt` sidecars as metadata (plus `key`) and
    caption; every item its metadata's http(s) `url` as source URL. Returns how many were described."""
    items = catalog.items("ok")
    metas = catalog.metadata(it.id for it in items)
    done = 0
    with catalog.transaction():
        for item in items:
            meta, fields, described = metas.get(item.id), {}, False
            if meta is None and "#" not in item.path:
                meta, caption = _sidecars(catalog.paths.item_file(item.path))
                if meta:
                    catalog.set_metadata(item.id, meta)
                    described = True
                if caption and not item.caption:
                    fields["caption"] = caption
            url = (meta or {}).get("url")
            if not item.source_url and isinstance(url, str) and is_http_url(url):
                fields["source_url"] = url
            if fields:
                catalog.upsert_item(item.path, **fields)
            done += described or bool(fields)
    return done


def _sidecars(image: Path) -> tuple[dict | None, str | None]:
    """(the JSON sidecar's object plus `key`, the text sidecar) of an image file; None where absent."""
    meta, caption = None, None
    text = _small_text(image.with_suffix(".json"))
    if text is not None:
        try:
            loaded = json.loads(text)
            meta = {**loaded, "key": image.stem} if isinstance(loaded, dict) else None
        except (ValueError, RecursionError):
            meta = None
    caption = (_small_text(image.with_suffix(".txt")) or "").strip() or None
    if caption is None and meta and isinstance(meta.get("caption"), str):
        caption = meta["caption"].strip() or None
    return meta, caption


def _small_text(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > SIDECAR_BYTES:
            return None
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
