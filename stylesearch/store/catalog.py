"""SQLite catalog (WAL) of a dataset: items, metadata, groups, download records; its models and
per-model vectors are `Catalog.vectors` (store/vectors.py), over the same connection."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import quote

from ..errors import CatalogError, ItemNotFound, StyleSearchError
from .files import full_disk_as_error, is_disk_full, now_iso
from .meta_values import meta_rows, storable_text
from .paths import DatasetPaths
from .vectors import Vectors, in_chunks

SCHEMA_VERSION = 2
MAX_ID = 2**63 - 1  # SQLite's largest integer
_ID = re.compile(r"-?[0-9]+")
PAGE_SIZE = 16384  # for new catalogs (see benchmarks/catalog_size.py)

_MIGRATIONS: list[str] = [
    # 0 -> 1
    """
    CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
    CREATE TABLE items(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,
        size INTEGER, mtime REAL, content_hash TEXT,
        width INTEGER, height INTEGER,
        status TEXT NOT NULL DEFAULT 'ok',
        source_url TEXT, caption TEXT,
        added_at TEXT, updated_at TEXT);
    CREATE INDEX items_hash ON items(content_hash);
    CREATE INDEX items_status ON items(status);
    CREATE TABLE models(
        model_key TEXT PRIMARY KEY, model_name TEXT, pretrained TEXT,
        dim INTEGER, dtype TEXT, created_at TEXT);
    CREATE TABLE vectors(
        model_key TEXT NOT NULL, content_hash TEXT NOT NULL, vector BLOB NOT NULL,
        PRIMARY KEY(model_key, content_hash)) WITHOUT ROWID;
    CREATE TABLE downloads(
        url TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT,
        item_path TEXT, content_hash TEXT, attempts INTEGER NOT NULL DEFAULT 0,
        updated_at TEXT);
    """,
    # 1 -> 2: item metadata (JSON per item for display, key/value rows for filtering) and groups
    """
    ALTER TABLE items ADD COLUMN meta TEXT;
    ALTER TABLE items ADD COLUMN group_id TEXT;
    CREATE INDEX items_group ON items(group_id);
    CREATE TABLE item_meta(item_id INTEGER NOT NULL, key TEXT NOT NULL, value_text TEXT, value_num REAL);
    CREATE INDEX item_meta_text ON item_meta(key, value_text COLLATE NOCASE);
    CREATE INDEX item_meta_num ON item_meta(key, value_num);
    CREATE INDEX item_meta_item ON item_meta(item_id);
    """,
]


@dataclass(frozen=True)
class Item:
    id: int
    path: str
    size: int | None
    mtime: float | None
    content_hash: str | None
    width: int | None
    height: int | None
    status: str
    source_url: str | None = None
    caption: str | None = None
    group_id: str | None = None


_ITEM_COLS = "id, path, size, mtime, content_hash, width, height, status, source_url, caption, group_id"
_V1_ITEM_COLS = _ITEM_COLS.replace("group_id", "NULL")  # readers of a catalog not upgraded yet


class Catalog:
    """A connection to one dataset's catalog.

    Writers (`readonly=False`) create and migrate it and use WAL. Readers open it read-only
    and change nothing, so searching works on a read-only mount, a backup or another user's
    dataset; where even WAL's shared-memory file cannot be made, the file is read as immutable.
    """

    def __init__(self, paths: DatasetPaths, create: bool = False, readonly: bool = False):
        self.paths = paths
        self.readonly = readonly and not create
        if not create and not paths.catalog.exists():
            raise CatalogError(f"Catalog missing: {paths.catalog}")
        try:
            self.conn = self._connect_readonly() if self.readonly else self._connect_writer()
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"Catalog {paths.catalog} cannot be opened ({exc}).",
                               "Restore it from a backup, or move it away and embed the images again.",
                               dataset=paths.name) from None
        self.vectors = Vectors(self.conn, paths)  # models and vectors (store/vectors.py)

    def _connect_writer(self) -> sqlite3.Connection:
        self.paths.home.mkdir(parents=True, exist_ok=True)
        new = not self.paths.catalog.exists() or self.paths.catalog.stat().st_size == 0
        self.conn = sqlite3.connect(str(self.paths.catalog), timeout=30, isolation_level=None)
        if new:  # 16 KiB pages hold a 2 KiB vector in ~2.3 KiB; 4 KiB pages spill each into ~4.7 KiB
            self.conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        if self.conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        return self.conn

    def _connect_readonly(self) -> sqlite3.Connection:
        uri = "file:" + quote(str(Path(self.paths.catalog).absolute()))
        for flags in ("?mode=ro", "?mode=ro&immutable=1"):
            conn = sqlite3.connect(uri + flags, uri=True, timeout=30, isolation_level=None)
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                break
            except sqlite3.OperationalError:
                conn.close()
                if "immutable" in flags:
                    raise
        self._check_version(version)
        self.version = version  # an older catalog is read as it is (no metadata before version 2)
        return conn
    # -- lifecycle
    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"Catalog {self.paths.catalog} has schema version {version}, newer than this "
                f"stylesearch understands ({SCHEMA_VERSION}).",
                "Upgrade stylesearch to open this dataset.", dataset=self.paths.name,
            )

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        self._check_version(version)
        for target in range(version, SCHEMA_VERSION):
            with self.transaction():
                for statement in _MIGRATIONS[target].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={target + 1}")
        self.version = SCHEMA_VERSION

    @property
    def has_metadata(self) -> bool:
        return self.version >= 2

    @property
    def _cols(self) -> str:
        return _ITEM_COLS if self.has_metadata else _V1_ITEM_COLS

    def transaction(self):
        return _Transaction(self.conn, self.paths.catalog)

    # -- items
    def upsert_item(self, path: str, **fields) -> int:
        """Insert or update an item by relative path; returns its id."""
        fields = {k: v for k, v in fields.items() if k in _ITEM_COLS.split(", ") and k != "id"}
        row = self.conn.execute("SELECT id FROM items WHERE path=?", (path,)).fetchone()
        stamp = now_iso()
        if row:
            sets = ", ".join(f"{k}=?" for k in fields) + (", " if fields else "") + "updated_at=?"
            self.conn.execute(f"UPDATE items SET {sets} WHERE id=?", (*fields.values(), stamp, row[0]))
            return row[0]
        cols = ["path", *fields, "added_at", "updated_at"]
        marks = ", ".join("?" for _ in cols)
        cur = self.conn.execute(
            f"INSERT INTO items({', '.join(cols)}) VALUES({marks})", (path, *fields.values(), stamp, stamp)
        )
        return int(cur.lastrowid)

    def items(self, status: str | None = "ok") -> list[Item]:
        sql = f"SELECT {self._cols} FROM items"
        args: tuple = ()
        if status:
            sql, args = sql + " WHERE status=?", (status,)
        return [Item(*row) for row in self.conn.execute(sql + " ORDER BY id", args)]

    def items_by_path(self) -> dict[str, Item]:
        return {item.path: item for item in self.items(status=None)}

    def set_status(self, item_ids: Iterable[int], status: str) -> None:
        stamp = now_iso()
        self.conn.executemany(
            "UPDATE items SET status=?, updated_at=? WHERE id=?", [(status, stamp, i) for i in item_ids]
        )

    def item(self, ref: str | int) -> Item:
        """Find an item by numeric id or relative path. An id SQLite cannot hold (negative, beyond 2^63)
        or text that is not valid Unicode names no item."""
        text = ref if isinstance(ref, str) else str(int(ref))
        row = None
        if _ID.fullmatch(text):
            if len(text) <= 19 and 0 <= int(text) <= MAX_ID:
                row = self.conn.execute(f"SELECT {self._cols} FROM items WHERE id=?", (int(text),)).fetchone()
        elif storable_text(text) == text:
            row = self.conn.execute(f"SELECT {self._cols} FROM items WHERE path=?", (text,)).fetchone()
        if not row:
            raise ItemNotFound(f"No item {shown_ref(text)} in dataset {self.paths.name!r}.",
                               "Use an item id or catalog path, as search results show them.", dataset=self.paths.name)
        return Item(*row)

    def items_where(self, where_sql: str, args: Sequence = (), limit: int = 50) -> list[Item]:
        """Items matching an SQL condition on the items table (by id, at most `limit`)."""
        rows = self.conn.execute(f"SELECT {self._cols} FROM items WHERE {where_sql} ORDER BY id LIMIT ?",
                                 (*args, limit))
        return [Item(*r) for r in rows]

    def items_with_hash(self, content_hash: str) -> list[Item]:
        rows = self.conn.execute(f"SELECT {self._cols} FROM items WHERE content_hash=?", (content_hash,))
        return [Item(*r) for r in rows]

    def status_counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())

    # -- metadata
    def set_metadata(self, item_id: int, meta: dict, replace: bool = False) -> None:
        """Merge (or with `replace`, set) an item's metadata; a None value removes that field."""
        row = self.conn.execute("SELECT meta FROM items WHERE id=?", (item_id,)).fetchone()
        current = {} if replace or row is None or not row[0] else json.loads(row[0])
        merged = {k: v for k, v in {**current, **meta}.items() if v is not None}
        self.conn.execute("UPDATE items SET meta=?, updated_at=? WHERE id=?",
                          (json.dumps(merged, sort_keys=True) if merged else None, now_iso(),
                           item_id))
        self.conn.execute("DELETE FROM item_meta WHERE item_id=?", (item_id,))
        self.conn.executemany("INSERT INTO item_meta VALUES(?,?,?,?)",
                              [(item_id, k, text, num) for k, text, num in meta_rows(merged)])

    def merge_metadata_many(self, updates: dict[int, dict]) -> None:
        """set_metadata (merging) for many items at once, in a few statements (bulk imports)."""
        current, stamp = self.metadata(updates), now_iso()
        merged = {i: {k: v for k, v in {**current.get(i, {}), **meta}.items() if v is not None}
                  for i, meta in updates.items()}
        self.conn.executemany("UPDATE items SET meta=?, updated_at=? WHERE id=?",
                              [(json.dumps(m, sort_keys=True) if m else None, stamp, i) for i, m in merged.items()])
        for marks, chunk in in_chunks(merged):
            self.conn.execute(f"DELETE FROM item_meta WHERE item_id IN ({marks})", chunk)
        self.conn.executemany("INSERT INTO item_meta VALUES(?,?,?,?)",
                              [(i, k, text, num) for i, m in merged.items() for k, text, num in meta_rows(m)])

    def set_group(self, item_id: int, group_id: str | None) -> None:
        self.conn.execute("UPDATE items SET group_id=? WHERE id=?", (group_id, item_id))

    def metadata(self, ids: Iterable[int]) -> dict[int, dict]:
        """Metadata of the given items (items without any are left out)."""
        ids = [int(i) for i in ids]
        if not self.has_metadata or not ids:
            return {}
        out = {}
        for marks, chunk in in_chunks(ids):
            for item_id, meta in self.conn.execute(
                    f"SELECT id, meta FROM items WHERE meta IS NOT NULL AND id IN ({marks})", chunk):
                out[item_id] = json.loads(meta)
        return out

    def paths_and_groups(self, ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
        """(path, group) of the live items among ids."""
        cols = "id, path, group_id" if self.has_metadata else "id, path, NULL"
        out = {}
        for marks, chunk in in_chunks(ids):
            out.update({r[0]: (r[1], r[2]) for r in self.conn.execute(
                f"SELECT {cols} FROM items WHERE status='ok' AND id IN ({marks})", chunk)})
        return out

    def captions(self, ids: Iterable[int]) -> dict[int, str]:
        """Captions of the given items (items without one are left out)."""
        out = {}
        for marks, chunk in in_chunks(ids):
            out.update(self.conn.execute(
                f"SELECT id, caption FROM items WHERE caption IS NOT NULL AND id IN ({marks})", chunk).fetchall())
        return out

    def metadata_fields(self) -> dict[str, int]:
        """Every metadata field with the number of live items that have it."""
        if not self.has_metadata:
            return {}
        rows = self.conn.execute("SELECT m.key, COUNT(DISTINCT m.item_id) FROM item_meta m JOIN items i "
                                 "ON i.id=m.item_id WHERE i.status='ok' GROUP BY m.key ORDER BY m.key")
        return dict(rows.fetchall())

    def live_ids_where(self, where_sql: str, args: Sequence) -> set[int]:
        """Ids of live items matching an SQL condition on `items` (see filters.py)."""
        return {r[0] for r in self.conn.execute(f"SELECT id FROM items WHERE status='ok' AND {where_sql}", args)}

    def live_count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM items WHERE status='ok'").fetchone()[0]

    # -- downloads
    def download_record(self, url: str) -> dict | None:
        row = self.conn.execute(
            "SELECT url, status, reason, item_path, content_hash, attempts FROM downloads WHERE url=?", (url,)
        ).fetchone()
        keys = ["url", "status", "reason", "item_path", "content_hash", "attempts"]
        return dict(zip(keys, row)) if row else None

    def record_download(self, url: str, status: str, reason: str | None = None,
                        item_path: str | None = None, content_hash: str | None = None) -> None:
        self.conn.execute(
            "INSERT INTO downloads(url, status, reason, item_path, content_hash, attempts, updated_at) "
            "VALUES(?,?,?,?,?,1,?) ON CONFLICT(url) DO UPDATE SET status=excluded.status, "
            "reason=excluded.reason, item_path=excluded.item_path, content_hash=excluded.content_hash, "
            "attempts=downloads.attempts+1, updated_at=excluded.updated_at",
            (url, status, reason, item_path, content_hash, now_iso()),
        )

    def downloaded_item_id(self, url: str) -> int | None:
        """Id of the item a finished download of `url` was stored as (or found a duplicate of)."""
        row = self.conn.execute("SELECT i.id FROM downloads d JOIN items i ON i.path=d.item_path "
                                "WHERE d.url=? AND d.status='ok'", (url,)).fetchone()
        return row[0] if row else None

    def download_counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT status, COUNT(*) FROM downloads GROUP BY status").fetchall())

    def item_paths(self) -> set[str]:
        """The path of every catalogued item, whatever its status (to find files no item names)."""
        return {row[0] for row in self.conn.execute("SELECT path FROM items")}


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error; a full disk becomes DiskFull naming the catalog
    (the catalog keeps its state before the transaction)."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn, self.path = conn, path

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, _tb):
        with full_disk_as_error(self.path):
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                except sqlite3.Error:
                    self._rollback()
                    raise
                return False
            self._rollback()
            if is_disk_full(exc) and not isinstance(exc, StyleSearchError):
                raise exc
        return False

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # none is active when SQLite already rolled it back
            self.conn.execute("ROLLBACK")


def shown_ref(text: str) -> str:
    """An item reference as messages show it: quoted, and cut short when it is long."""
    return repr(text) if len(text) <= 80 else f"{text[:40]!r}... ({len(text)} characters)"


def open_catalog(paths: DatasetPaths, create: bool = False, readonly: bool = False) -> Catalog:
    """A writer connection (creating and migrating the catalog), or with `readonly` a reader's.

    A reader refuses a catalog without tables (emptied to 0 bytes, say); a writer makes them anew."""
    catalog = Catalog(paths, create=create, readonly=readonly)
    if catalog.readonly and catalog.version == 0:
        catalog.close()
        raise CatalogError(f"Catalog {paths.catalog} is empty: its items and vectors are lost.",
                           "Restore it from a backup, or embed the images again to rebuild it.",
                           dataset=paths.name, step="embed")
    return catalog
