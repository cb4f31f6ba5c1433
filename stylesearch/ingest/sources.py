"""Where download URLs come from: txt/csv/tsv/jsonl lists (file or stdin) or a sample source.

Parsing never fails on odd input: unusable lines are counted as malformed and skipped. The one
error is a table whose header names no URL column (rather than guessing a column of non-URLs).

Rows of csv/tsv/jsonl lists (see `row_entries`):
- the URL comes from the first non-empty column named url, image_url, link or src; the id from
  id, key or name; the caption from caption, text, title or alt (names in any case);
- a column of several URLs (a JSON array: a list value in JSONL, a cell like ["u1", "u2"] in
  csv/tsv) is one named images, image_urls or urls, else, in a row with no URL column, the first
  column whose value is a non-empty array of URL-like strings. Such a row gives one entry per URL
  (a URL column's value first), in one group: its id if it has one, else "row-" and a hash of its
  URLs; each entry has its 1-based position in the group;
- every other column is the row's metadata, shared by its entries: csv/tsv cells typed by
  metadata.typed_value, JSONL values as they are; empty values are left out, as are values nested
  deeper than MAX_META_DEPTH; text is made storable (lone surrogates replaced).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..errors import UserError
from ..store.files import json_lines
from .metadata import typed_value
from .urls import looks_like_url

URL_KEYS = ("url", "image_url", "link", "src")
LIST_KEYS = ("images", "image_urls", "urls")  # columns holding a JSON array of image URLs
ID_KEYS = ("id", "key", "name")
CAPTION_KEYS = ("caption", "text", "title", "alt")
SAMPLE_SOURCES = {"picsum": "https://picsum.photos"}
MAX_META_DEPTH = 16
_TOO_DEEP = object()


@dataclass(frozen=True)
class Entry:
    """One URL to download. Entries of one multi-URL row share `meta` (read-only) and `group`,
    and have their 1-based `position` in the group."""

    url: str
    id: str | None = None
    caption: str | None = None
    meta: dict = field(default_factory=dict, hash=False)
    group: str | None = None
    position: int | None = None


def _text(value: str) -> str:
    """Text SQLite can store: lone surrogates (from JSON escapes) replaced."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")


def _find(lowered: dict, keys, accept) -> str | None:
    """The first of `keys` present in `lowered` (lower-case name -> value) whose value `accept`s."""
    return next((key for key in keys if key in lowered and accept(lowered[key])), None)


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_id(value) -> bool:
    return _is_text(value) or (isinstance(value, int) and not isinstance(value, bool))


def _url_list(value, single: bool = False) -> list | None:
    """A JSON array (a list, or text holding one: a csv cell), or with `single` one URL as text."""
    if isinstance(value, str):
        text = value.strip()
        if single and looks_like_url(text):
            return [text]
        try:
            value = json.loads(text) if text.startswith("[") else None
        except (ValueError, RecursionError):
            return None
    return value if isinstance(value, list) else None


def _looks_like_urls(value) -> bool:
    urls = _url_list(value)
    return bool(urls) and all(isinstance(u, str) and looks_like_url(u.strip()) for u in urls)


def _list_urls(urls: list) -> list[str]:
    """Non-blank elements as URLs; others as a short text (then counted as bad URLs by download)."""
    out = [u.strip() if isinstance(u, str) else f"<{type(u).__name__}>" if isinstance(u, (list, dict))
           else str(u)[:200] for u in urls]
    return [u for u in out if u]


def row_entries(row: dict, cell=None) -> list[Entry] | None:
    """The entries of one table or JSONL row (see the module docstring); None when it has no URL.

    `cell` turns a metadata value into JSON (csv cells: typed); JSONL values are kept as they are.
    """
    lowered = {str(k).strip().lower(): (k, v) for k, v in row.items() if k is not None}
    values = {name: v for name, (_, v) in lowered.items()}
    url_key = _find(values, URL_KEYS, lambda v: _is_text(v) or _url_list(v) is not None)
    list_key = _find(values, LIST_KEYS, lambda v: _url_list(v, single=True) is not None)
    if url_key and _url_list(values[url_key]) is not None:
        url_key, list_key = None, list_key or url_key
    if not url_key and not list_key:
        list_key = next((name for name, v in values.items() if _looks_like_urls(v)), None)
    id_key, caption_key = _find(values, ID_KEYS, _is_id), _find(values, CAPTION_KEYS, _is_text)
    urls = [values[url_key].strip()] if url_key else []
    urls = list(dict.fromkeys(urls + _list_urls(_url_list(values[list_key], single=True) if list_key else [])))
    if not urls:
        return None
    used = {url_key, list_key, id_key, caption_key}
    meta = _metadata({k: v for name, (k, v) in lowered.items() if name not in used}, cell)
    row_id = _text(str(values[id_key]).strip()) if id_key else None
    caption = _text(values[caption_key].strip()) if caption_key else None
    if list_key is None:
        return [Entry(urls[0], row_id, caption, meta)]
    group = row_id or "row-" + hashlib.sha256(json.dumps(urls).encode()).hexdigest()[:16]
    return [Entry(url, f"{row_id}-{n}" if row_id else None, caption, dict(meta), group, n)
            for n, url in enumerate(urls, 1)]


def _metadata(columns: dict, cell) -> dict:
    """Storable metadata from the row's other columns: empty or too deeply nested values left out."""
    meta = {}
    for key, value in columns.items():
        name, value = _text(str(key)).strip(), _clean(cell(value) if cell else value)
        blank = value is None or value is _TOO_DEEP or (isinstance(value, str) and not value.strip())
        if name and not blank:
            meta[name] = value
    return meta


def _clean(value, depth: int = 0):
    """A JSON value SQLite and the metadata index can store; _TOO_DEEP past MAX_META_DEPTH."""
    if depth > MAX_META_DEPTH:
        return _TOO_DEEP
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value if abs(value) < 1 << 1000 else str(value)  # beyond any float: as text
    if isinstance(value, (list, dict)):
        pairs = [(k, _clean(v, depth + 1)) for k, v in (value.items() if isinstance(value, dict) else enumerate(value))]
        if any(v is _TOO_DEEP for _, v in pairs):
            return _TOO_DEEP
        return {_text(str(k)): v for k, v in pairs} if isinstance(value, dict) else [v for _, v in pairs]
    return value if value is None or isinstance(value, bool) else _text(str(value))


def typed_cell(text: str):
    """A csv/tsv cell as a metadata value (metadata.typed_value); text where that gives no finite value."""
    try:
        value = typed_value(text)
    except (ValueError, RecursionError):  # JSON-looking text nested too deeply or with huge numbers
        return text.strip()
    return text.strip() if isinstance(value, float) and not math.isfinite(value) else value


def guess_format(name: str | None, first_line: str) -> str:
    suffix = Path(name).suffix.lower() if name else ""
    if suffix in (".txt", ".csv", ".tsv", ".jsonl"):
        return suffix[1:]
    line = first_line.strip().lstrip("\ufeff")
    if suffix == ".json" or line.startswith("{"):
        return "jsonl"
    if "\t" in line:
        return "tsv"
    if "," in line and not line.startswith("#") and not looks_like_url(line):
        return "csv"  # a header (or a row without URLs: reported as such)
    return "txt"


def parse_entries(stream: TextIO, fmt: str) -> tuple[list[Entry], int]:
    """(entries, malformed line count) from a URL list in the given format."""
    text = stream.read().lstrip("\ufeff")
    if fmt == "txt":
        lines = [ln.strip() for ln in text.splitlines()]
        return [Entry(ln) for ln in lines if ln and not ln.startswith("#")], 0
    if fmt in ("csv", "tsv"):
        return _parse_table(text, "\t" if fmt == "tsv" else ",")
    if fmt == "jsonl":
        return _parse_jsonl(text)
    raise UserError(f"Unknown list format {fmt!r}.", "Use txt, csv, tsv or jsonl.")


def _read_rows(text: str, delimiter: str) -> tuple[list[list[str]], int]:
    """Non-blank rows, and how many rows the csv module could not read."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows, bad = [], 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return rows, bad
        except csv.Error:  # e.g. a field over the size limit; the reader goes on with the next line
            bad += 1
            continue
        if any(cell.strip() for cell in row):
            rows.append(row)


def _parse_table(text: str, delimiter: str) -> tuple[list[Entry], int]:
    rows, bad = _read_rows(text, delimiter)
    if not rows:
        return [], bad
    header = [h.strip() for h in rows[0]]
    if not {h.lower() for h in header} & {*URL_KEYS, *LIST_KEYS}:
        if looks_like_url(rows[0][0].strip()):  # no header: URLs in the first column
            return [Entry(r[0].strip()) for r in rows if r[0].strip()], bad + sum(not r[0].strip() for r in rows)
        if not any(_looks_like_urls(c) for r in rows[1:] for c in r):  # nor a column of URL arrays
            raise _no_url_column(rows[0])
    entries = []
    for row in rows[1:]:
        found = row_entries(dict(zip(header, row)), typed_cell)
        bad += found is None
        entries += found or []
    return entries, bad


def _no_url_column(header: list[str]) -> UserError:
    found = ", ".join(repr(h.strip()[:40]) for h in header[:20]) + (", ..." if len(header) > 20 else "")
    return UserError(f"The URL list has no URL column (columns found: {found}).",
                     f"Name the column of image URLs one of {', '.join(URL_KEYS)} (or a column of JSON "
                     f"arrays of URLs one of {', '.join(LIST_KEYS)}), or give a list whose first line is a "
                     "URL (no header).")


def _parse_jsonl(text: str) -> tuple[list[Entry], int]:
    entries, bad = [], 0
    for record in json_lines(text.splitlines()):
        if isinstance(record, str):
            record = {"url": record}
        found = row_entries(record) if isinstance(record, dict) else None
        bad += found is None
        entries += found or []
    return entries, bad


def read_source(source: str, fmt: str | None = None, stdin: TextIO | None = None) -> tuple[list[Entry], int]:
    """Read a URL list from a file path or '-' (stdin)."""
    if source == "-":
        text, name = _read_stdin(stdin), None
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"URL list {source} does not exist.")
        try:
            text, name = path.read_text(encoding="utf-8", errors="replace"), path.name
        except OSError as exc:
            raise UserError(f"Cannot read URL list {source}: {exc.strerror or exc}.") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return parse_entries(io.StringIO(text, newline=""), fmt or guess_format(name, first))


def _read_stdin(stdin: TextIO | None) -> str:
    """The given stream's text, or standard input's bytes decoded as UTF-8 (bad bytes replaced)."""
    if stdin is not None:
        return stdin.read()
    import sys

    buffer = getattr(sys.stdin, "buffer", None)
    return buffer.read().decode("utf-8", errors="replace") if buffer else sys.stdin.read()


def sample_entries(source: str, count: int, seed: int = 0, width: int = 640, height: int = 480,
                   base_url: str | None = None) -> list[Entry]:
    """URLs of a public sample image source (needs internet), reproducible by seed."""
    if source not in SAMPLE_SOURCES:
        raise UserError(f"Unknown sample source {source!r}.", f"Known: {', '.join(SAMPLE_SOURCES)}.")
    base = (base_url or SAMPLE_SOURCES[source]).rstrip("/")
    return [Entry(f"{base}/seed/stylesearch-{seed}-{n}/{width}/{height}", f"{source}-{seed}-{n:05d}")
            for n in range(count)]
