"""Webdataset-style tar shards as image sources, read in place (no unpacking).

img2dataset and webdataset write `NNNNN.tar` files holding `key.jpg` (or .png/.webp) beside
`key.json` (metadata) and `key.txt` (caption). Each image member becomes a catalog item whose
path is `<shard path>#<member name>`, e.g. `shards/00000.tar#000000042.jpg`; its metadata is the
member's JSON plus its `key`, its caption the text file. A shard is read once to index its
members (offsets and sizes); members are then read directly by offset.

Member names are data, not paths: `safe_member_name` maps each one once to the name it is
catalogued under (a hostile name that climbs out, is absolute or has empty parts gets a name made
from its hash under `_renamed/`; a member that is not an image is no item). Members are read within
bounds: a link, a sparse member, one larger than MAX_MEMBER_BYTES or one whose header claims more
bytes than the shard holds is skipped as broken before any of its data is read, and a truncated
shard yields the members before the damage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .images import BadImage, is_image_name

SEPARATOR = "#"
SHARD_SUFFIXES = (".tar",)
MAX_MEMBER_BYTES = 256 << 20  # no image member larger than this is read
MAX_SIDECAR_BYTES = 4 << 20  # .json / .txt members
SIDECARS = (".json", ".txt")
RENAMED = "_renamed"


def is_shard_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(SHARD_SUFFIXES)


_MEMBER_PATH = re.compile(r"^(.*?\.tar)#(.+)$", re.I | re.S)


def split_member_path(item_path: str) -> tuple[str, str] | None:
    """(shard path, member name) of an item path naming a shard member (split after the first `.tar#`,
    so folders may contain '#'), else None."""
    m = _MEMBER_PATH.match(item_path)
    return (m.group(1), m.group(2)) if m and is_shard_name(os.path.basename(m.group(1))) else None


@dataclass(frozen=True)
class ShardMember:
    """An image inside a tar shard, readable like a file (read_bytes, stat, exists)."""

    shard: Path
    member: str

    def read_bytes(self) -> bytes:
        """The member's bytes (KeyError: no such member; OSError: the shard changed under us)."""
        offset, size = shard_index(str(self.shard), *self._stamp())[self.member]
        with open(self.shard, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise OSError(f"{self}: shard truncated")
        return data

    def _stamp(self) -> tuple[int, int]:
        st = self.shard.stat()
        return st.st_size, st.st_mtime_ns

    def stat(self) -> os.stat_result:
        return self.shard.stat()

    def exists(self) -> bool:
        try:
            return self.member in shard_index(str(self.shard), *self._stamp())
        except (OSError, tarfile.TarError):
            return False

    def absolute(self) -> "ShardMember":
        return ShardMember(self.shard.absolute(), self.member)

    def __str__(self) -> str:
        return f"{self.shard}{SEPARATOR}{self.member}"

    def __fspath__(self) -> str:  # for messages and logs; opening it as a file fails, use read_bytes
        return str(self)


def safe_member_name(name: str) -> str | None:
    """The name an image member is catalogued under, None for a member that is not an image.

    A plain relative name (printable parts, none empty, '.', '..' or hidden) is kept; any other name
    of an image becomes `_renamed/<hash of the name><extension>`, so no later step ever joins a
    hostile name to a folder."""
    base = name.rsplit("/", 1)[-1]
    if not is_image_name(base):
        return None
    parts = name.split("/")
    if all(p and p.isprintable() and not p.startswith(".") and "\\" not in p for p in parts):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{RENAMED}/{digest}{os.path.splitext(base)[1].lower()}"


@dataclass
class ShardReport:
    """What reading a shard skipped: broken members (sparse, oversized) and damage (a member that runs
    past the end, a bad header), after which the rest of the shard is unreadable."""

    broken: list[str] = field(default_factory=list)
    damaged: str | None = None


def _usable_members(tar: tarfile.TarFile, shard_size: int, report: ShardReport) -> Iterator[tarfile.TarInfo]:
    """The regular members of a tar within the size limits, in order, up to the first damage."""
    try:
        for info in tar:
            if not info.isfile():
                continue
            limit = MAX_SIDECAR_BYTES if info.name.lower().endswith(SIDECARS) else MAX_MEMBER_BYTES
            refused = info.issparse() or info.size > limit  # by its declared size: never read
            if refused:
                what = "a sparse member" if info.issparse() else f"over the {limit:,}-byte limit"
                report.broken.append(f"member {info.name!r}: declares {info.size:,} bytes, {what}; skipped")
            if not info.issparse() and info.offset_data + info.size > shard_size:
                report.damaged = f"member {info.name!r} declares {info.size:,} bytes but the shard ends first"
                return
            if not refused:
                yield info
    except (EOFError, tarfile.TarError) as exc:
        report.damaged = f"damaged after the members read so far ({exc})"


@functools.lru_cache(maxsize=64)
def shard_index(shard: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """catalogued member name -> (data offset, size) of a tar shard; cached per shard version (size, mtime)."""
    with tarfile.open(shard, "r:") as tar:
        return {name: (m.offset_data, m.size) for m in _usable_members(tar, size, ShardReport())
                if (name := safe_member_name(m.name))}


@dataclass(frozen=True)
class MemberRecord:
    """One image of a shard with what its sidecar files say about it."""

    member: str
    key: str
    data: bytes
    meta: dict
    caption: str | None


def read_shard(path: Path, report: ShardReport | None = None) -> Iterator[MemberRecord]:
    """The image members of a shard (under their safe names) with their JSON metadata and text caption,
    streamed: webdataset writes the files of one key next to each other, so only one key's files are
    held at a time. What was skipped is told in `report`."""
    key, files = None, {}
    with tarfile.open(path, "r:") as tar:
        for info in _usable_members(tar, os.fstat(tar.fileobj.fileno()).st_size, report or ShardReport()):
            stem, ext = os.path.splitext(info.name)
            name = safe_member_name(info.name) or (ext.lower() if ext.lower() in SIDECARS else None)
            if name is None:
                continue
            if stem != key:
                yield from _records(key, files)
                key, files = stem, {}
            files[name] = tar.extractfile(info).read()
    yield from _records(key, files)


def _records(key: str | None, files: dict[str, bytes]) -> Iterator[MemberRecord]:
    if key is None:
        return
    meta, caption = _sidecars(files)
    short = os.path.basename(key)
    for name, data in files.items():
        if not name.startswith("."):
            yield MemberRecord(name, short, data, {**meta, "key": short}, caption)


def _sidecars(files: dict[str, bytes]) -> tuple[dict, str | None]:
    meta: dict = {}
    if ".json" in files:
        try:
            loaded = json.loads(files[".json"].decode("utf-8", "replace"))
            meta = loaded if isinstance(loaded, dict) else {}
        except (json.JSONDecodeError, RecursionError, ValueError):
            meta = {}
    caption = files[".txt"].decode("utf-8", "replace").strip() if ".txt" in files else ""
    if not caption and isinstance(meta.get("caption"), str):
        caption = meta["caption"]
    return meta, caption or None


__all__ = ["BadImage", "MemberRecord", "ShardMember", "ShardReport", "is_shard_name", "read_shard", "safe_member_name",
           "split_member_path"]
