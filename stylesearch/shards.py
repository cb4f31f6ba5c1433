"""Webdataset-style tar shards as image sources, read in place (no unpacking).

img2dataset and webdataset write `NNNNN.tar` files holding `key.jpg` (or .png/.webp) beside
`key.json` (metadata) and `key.txt` (caption). Each image member becomes a catalog item whose
path is `<shard path>#<member name>`, e.g. `shards/00000.tar#000000042.jpg`; its metadata is the
member's JSON plus its `key`, its caption the text file. A shard is read once to index its
members (offsets and sizes); members are then read directly by offset.
"""

from __future__ import annotations

import functools
import json
import re
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .images import BadImage, is_image_name

SEPARATOR = "#"
SHARD_SUFFIXES = (".tar",)


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
        offset, size = shard_index(str(self.shard), *self._stamp())[self.member]
        with open(self.shard, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)

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


@functools.lru_cache(maxsize=64)
def shard_index(shard: str, size: int, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) of a tar shard; cached per shard version (size, mtime)."""
    with tarfile.open(shard, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}


@dataclass(frozen=True)
class MemberRecord:
    """One image of a shard with what its sidecar files say about it."""

    member: str
    key: str
    data: bytes
    meta: dict
    caption: str | None


def read_shard(path: Path) -> Iterator[MemberRecord]:
    """The image members of a shard with their JSON metadata and text caption, streamed: webdataset
    writes the files of one key next to each other, so only one key's files are held at a time."""
    key, files = None, {}
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            stem, ext = os.path.splitext(info.name)
            if stem != key:
                yield from _records(key, files)
                key, files = stem, {}
            name = info.name if is_image_name(os.path.basename(info.name)) else ext.lower()
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


__all__ = ["BadImage", "MemberRecord", "ShardMember", "is_shard_name", "read_shard", "split_member_path"]
