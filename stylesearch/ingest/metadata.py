"""Item metadata: typing values from catalogue files, and attaching metadata to existing items.

Values from CSV/TSV cells are typed (integers, decimals, true/false, JSON arrays/objects,
else text); JSONL values keep their JSON types. Metadata is stored per item in the catalog
(see Catalog.set_metadata) and filtered with the grammar of filters.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..store.catalog import open_catalog
from ..store.files import json_lines, writer_lock
from ..store.meta_values import storable_text
from ..store.paths import DatasetPaths

# How a metadata row names its item, by preference: an `id` column is the catalog's item id only when
# nothing else names the item (in a downloaded catalogue `id` is the source's own id, `url` names the item).
KEY_COLUMNS = ("path", "item_id", "url", "source_url", "id")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_LEADING_ZERO = re.compile(r"[+-]?0\d")  # 007, 02139: codes, kept as text


def typed_value(text: str):
    """A CSV cell as a JSON value: numbers, booleans, JSON arrays/objects, empty -> None, else text."""
    value = text.strip()
    if value == "":
        return None
    if _NUMBER.fullmatch(value) and not _LEADING_ZERO.match(value):
        if re.fullmatch(r"[+-]?\d+", value):  # beyond 2^53: exact only as text (int() refuses 4,300 digits)
            return int(value) if len(value.lstrip("+-")) < 17 and abs(int(value)) < 2**53 else value
        number = float(value)
        return number if math.isfinite(number) else value
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value[0] in "[{":
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError, ValueError):
            pass
    return value


@dataclass
class MetadataResult:
    updated: int = 0
    unknown_items: int = 0
    malformed_lines: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"updated": self.updated, "unknown_items": self.unknown_items,
                "malformed_lines": self.malformed_lines}


def read_metadata_rows(path: str | Path, text: str | None = None) -> tuple[list[dict], int]:
    """(rows, malformed line count) of a CSV, TSV or JSONL metadata file."""
    path = Path(path)
    if text is None:
        if not path.is_file():
            raise UserError(f"Metadata file {path} does not exist.")
        text = path.read_text(encoding="utf-8", errors="replace")
    text = text.lstrip("\ufeff")  # a byte order mark, as spreadsheet programs write
    if path.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{"):
        rows, bad = [], 0
        for record in json_lines(text.splitlines()):
            if isinstance(record, dict):
                rows.append(record)
            else:
                bad += 1
        return rows, bad
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in text.split("\n", 1)[0] else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [{k.strip(): typed_value(v if isinstance(v, str) else "") for k, v in row.items() if k}
                for row in reader]
    except csv.Error as exc:
        raise UserError(f"Cannot read {path.name} as CSV near line {reader.line_num}: {exc}.") from None
    return rows, 0


def _key_column(rows: list[dict]) -> str:
    columns = set().union(*(r.keys() for r in rows)) if rows else set()
    for key in KEY_COLUMNS:
        if key in columns:
            return key
    raise UserError(f"The metadata rows name no item: found columns {', '.join(sorted(columns)) or 'none'}.",
                    f"Add a column naming each item: one of {', '.join(KEY_COLUMNS)} "
                    "(path as in the catalog, the item's numeric id, or the URL it was downloaded from).")


def attach_metadata(paths: DatasetPaths, rows: list[dict], malformed: int = 0, replace: bool = False,
                    lock: bool = True) -> MetadataResult:
    """Merge each row's fields into the metadata of the item it names (by path, id or URL)."""
    result = MetadataResult(malformed_lines=malformed)
    key = _key_column(rows)
    skipped: Counter = Counter()
    guard = writer_lock(paths) if lock else contextlib.nullcontext()
    with guard, open_catalog(paths) as catalog, catalog.transaction():
        lookup = _item_lookup(catalog, key)
        for row in rows:
            item_id = lookup(row.get(key))
            if item_id is None:
                result.unknown_items += 1
                result.warnings.append(f"no item with {key} {row.get(key)!r}")
                continue
            catalog.set_metadata(item_id, _valid_text({k: v for k, v in row.items() if k != key}, skipped),
                                 replace=replace)
            result.updated += 1
    result.warnings += [f"skipped field {name!r} in {n} row{'s' if n > 1 else ''}: its name is not valid Unicode "
                        "text" for name, n in skipped.items()]
    return result


def _valid_text(value, skipped: Counter, prefix: str = ""):
    """The value with fields whose names are not valid Unicode (lone surrogates from JSON escapes)
    left out and counted in `skipped`, and such text in values made valid ('?' in their place)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if storable_text(k) != k:
                skipped[prefix + k] += 1
            else:
                out[k] = _valid_text(v, skipped, f"{prefix}{k}.")
        return out
    if isinstance(value, list):
        return [_valid_text(v, skipped, prefix) for v in value]
    return storable_text(value) if isinstance(value, str) else value


def _item_lookup(catalog, key: str):
    items = catalog.items(status=None)
    if key == "path":
        table = {it.path: it.id for it in items}
    elif key in ("url", "source_url"):
        table = {it.source_url: it.id for it in items if it.source_url}
    else:
        table = {str(it.id): it.id for it in items}
    return lambda value: table.get(str(value)) if value is not None else None
