"""Scan an image folder into the catalog: new, changed, unchanged, deleted, corrupt."""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..store.catalog import Catalog
from ..store.images import BadImage, file_sha256, image_size, is_image_name
from ..store.shards import SEPARATOR, ShardReport, is_shard_name, read_shard


@dataclass
class ScanResult:
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    corrupt: int = 0
    unreadable: int = 0  # files or folders that could not be read (kept as they were in the catalog)
    broken: int = 0  # shard members skipped: oversized, sparse, past the shard's end, or after damage
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("new", "changed", "unchanged", "deleted", "corrupt", "unreadable",
                                             "broken")}


@dataclass
class Walk:
    """Image files found below a folder, and the folders that could not be read."""

    files: list[Path] = field(default_factory=list)
    unreadable_dirs: list[Path] = field(default_factory=list)


def walk_images(folder: Path) -> list[Path]:
    """All image files below `folder`, sorted (see walk_image_folder)."""
    return walk_image_folder(folder).files


def walk_image_folder(folder: Path) -> Walk:
    """All image files below `folder`, sorted; hidden files and folders skipped.

    Symlinked folders are followed (each real folder once, so link loops end); folders that
    cannot be read are reported instead of silently looking empty.
    """
    walk = Walk()
    if not folder.is_dir():
        return walk
    visited: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True,
                                                 onerror=lambda e: walk.unreadable_dirs.append(Path(e.filename))):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in visited:
            dirnames[:] = []
            continue
        visited.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        walk.files.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_name(f) or is_shard_name(f))
    return walk


def relative_name(images_dir: Path, file: Path) -> str:
    """Catalog path of a file: relative to images/ when inside it, else absolute."""
    file = Path(os.path.normpath(file.absolute()))  # no '..' in catalog paths
    try:
        return file.relative_to(os.path.normpath(images_dir.absolute())).as_posix()
    except ValueError:
        return str(file)


def scan(catalog: Catalog, files: Iterable[Path] | None = None, prune: bool = True) -> ScanResult:
    """Bring the catalog up to date with the files on disk.

    Without `files` the dataset's images folder is walked. Unchanged files (same size
    and mtime) are not read; others are hashed and their header read. With `prune`,
    catalog items whose file disappeared are marked deleted (their vectors are kept);
    items under folders that could not be read are kept as they are. One bad file (a name
    that is not UTF-8, no permission to read) is counted and skipped, never fatal.
    """
    images_dir = catalog.paths.images
    result = ScanResult()
    if files is None:
        walk = walk_image_folder(images_dir)
        files, blocked = walk.files, [relative_name(images_dir, d) for d in walk.unreadable_dirs]
        for rel in blocked:
            result.unreadable += 1
            result.warnings.append(f"{rel}: folder cannot be read; its items are kept as they were")
    else:
        files, blocked = [Path(f) for f in files], []
    known = catalog.items_by_path()
    seen: set[str] = set()
    with catalog.transaction():
        for file in files:
            rel = relative_name(images_dir, file)
            if not _utf8(rel):
                result.unreadable += 1
                result.warnings.append(f"{rel.encode('utf-8', 'backslashreplace').decode()}: file name is not "
                                       "valid UTF-8; rename the file to include it")
                continue
            if rel in seen:
                continue
            seen.add(rel)
            if is_shard_name(file.name):
                _scan_shard(catalog, file, rel, known, seen, result)
            else:
                _scan_one(catalog, file, rel, known.get(rel), result)
        if prune:
            gone = [it.id for path, it in known.items()
                    if path not in seen and it.status != "deleted" and not _under_any(path, blocked)]
            catalog.set_status(gone, "deleted")
            result.deleted = len(gone)
    return result


def _scan_shard(catalog: Catalog, shard: Path, rel: str, known: dict, seen: set[str], result: ScanResult) -> None:
    """Catalog the images of a tar shard as items `<shard>#<member>` with their metadata and caption.

    A shard whose size and mtime match its catalogued members is not read again."""
    prefix = f"{rel}{SEPARATOR}"
    members = {path: it for path, it in known.items() if path.startswith(prefix)}
    try:
        st = shard.stat()
        if members and all(it.mtime == st.st_mtime and it.status != "deleted" for it in members.values()):
            seen.update(members)
            result.unchanged += len(members)
            return
        report = ShardReport()
        for record in read_shard(shard, report):
            path = prefix + record.member
            seen.add(path)
            _scan_member(catalog, path, record, st.st_mtime, members.get(path), result)
        result.broken += len(report.broken)
        result.warnings += [f"{rel}: {problem}" for problem in report.broken]
        if report.damaged:
            raise tarfile.ReadError(report.damaged)
    except (OSError, EOFError, tarfile.TarError) as exc:
        seen.update(members)  # keep what was catalogued from it
        result.unreadable += 1
        result.warnings.append(f"{rel}: shard cannot be read past a point ({exc}); its other items are kept "
                               "as they were")


def _scan_member(catalog: Catalog, path: str, record, mtime: float, old, result: ScanResult) -> None:
    fields = {"size": len(record.data), "mtime": mtime, "content_hash": hashlib.sha256(record.data).hexdigest(),
              "caption": record.caption}
    item_id = _record_item(catalog, path, record.data, fields, old, result)
    catalog.set_metadata(item_id, record.meta)


def _record_item(catalog: Catalog, path: str, source, fields: dict, old, result: ScanResult) -> int:
    """Store an item found new or changed: its size from the image (`source`, a file or bytes),
    status ok or corrupt (counted with a warning). Returns the item id."""
    try:
        fields["width"], fields["height"] = image_size(source)
        fields["status"] = "ok"
    except BadImage as exc:
        fields["status"] = "corrupt"
        result.corrupt += 1
        result.warnings.append(f"{path}: {exc.message}")
    item_id = catalog.upsert_item(path, **fields)
    if old is None:
        result.new += 1
    else:
        result.changed += 1
    return item_id


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _under_any(path: str, folders: list[str]) -> bool:
    return any(folder in (".", "") or path == folder or path.startswith(folder.rstrip("/") + "/")
               for folder in folders)


def _scan_one(catalog: Catalog, file: Path, rel: str, old, result: ScanResult) -> None:
    try:
        st = file.stat()
        if old and old.status != "deleted" and old.size == st.st_size and old.mtime == st.st_mtime:
            result.unchanged += 1
            return
        fields = {"size": st.st_size, "mtime": st.st_mtime, "content_hash": file_sha256(file)}
    except OSError as exc:
        result.unreadable += 1
        result.warnings.append(f"{rel}: cannot be read ({exc.strerror or exc}); skipped")
        return
    _record_item(catalog, rel, file, fields, old, result)
