"""Scan an image folder into the catalog: new, changed, unchanged, deleted, corrupt."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .catalog import Catalog
from .images import BadImage, file_sha256, image_size, is_image_name


@dataclass
class ScanResult:
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    corrupt: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("new", "changed", "unchanged", "deleted", "corrupt")}


def walk_images(folder: Path) -> list[Path]:
    """All image files below `folder`, sorted, hidden files and folders skipped."""
    found: list[Path] = []
    if not folder.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_name(f))
    return found


def relative_name(images_dir: Path, file: Path) -> str:
    """Catalog path of a file: relative to images/ when inside it, else absolute."""
    file = file.absolute()
    try:
        return file.relative_to(images_dir.absolute()).as_posix()
    except ValueError:
        return str(file)


def scan(catalog: Catalog, files: Iterable[Path] | None = None, prune: bool = True) -> ScanResult:
    """Bring the catalog up to date with the files on disk.

    Without `files` the dataset's images folder is walked. Unchanged files (same size
    and mtime) are not read; others are hashed and their header read. With `prune`,
    catalog items whose file disappeared are marked deleted (their vectors are kept).
    """
    images_dir = catalog.paths.images
    files = walk_images(images_dir) if files is None else [Path(f) for f in files]
    known = catalog.items_by_path()
    result = ScanResult()
    seen: set[str] = set()
    with catalog.transaction():
        for file in files:
            rel = relative_name(images_dir, file)
            if rel in seen:
                continue
            seen.add(rel)
            _scan_one(catalog, file, rel, known.get(rel), result)
        if prune:
            gone = [it.id for path, it in known.items() if path not in seen and it.status != "deleted"]
            catalog.set_status(gone, "deleted")
            result.deleted = len(gone)
    return result


def _scan_one(catalog: Catalog, file: Path, rel: str, old, result: ScanResult) -> None:
    try:
        st = file.stat()
    except OSError as exc:
        result.warnings.append(f"{rel}: {exc.strerror or exc}")
        return
    if old and old.status != "deleted" and old.size == st.st_size and old.mtime == st.st_mtime:
        result.unchanged += 1
        return
    fields = {"size": st.st_size, "mtime": st.st_mtime, "content_hash": file_sha256(file)}
    try:
        fields["width"], fields["height"] = image_size(file)
        fields["status"] = "ok"
    except BadImage as exc:
        fields["status"] = "corrupt"
        result.corrupt += 1
        result.warnings.append(f"{rel}: {exc.message}")
    catalog.upsert_item(rel, **fields)
    if old is None:
        result.new += 1
    else:
        result.changed += 1
