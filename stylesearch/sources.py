"""Where download URLs come from: txt/csv/tsv/jsonl lists (file or stdin) or a sample source.

Parsing never fails on odd input: unusable lines are counted as malformed and skipped. The one
error is a table whose header names no URL column (rather than guessing a column of non-URLs).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .errors import UserError

URL_KEYS = ("url", "image_url", "link", "src")
ID_KEYS = ("id", "key", "name")
CAPTION_KEYS = ("caption", "text", "title", "alt")
SAMPLE_SOURCES = {"picsum": "https://picsum.photos"}
_URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # a cell or line that starts as a URL


@dataclass(frozen=True)
class Entry:
    url: str
    id: str | None = None
    caption: str | None = None


def _pick(row: dict, keys, types=(str,)) -> str | None:
    """The first non-empty value under one of `keys` (case-insensitive) that has one of `types`."""
    lowered = {str(k).lower().strip(): v for k, v in row.items() if k is not None}
    for key in keys:
        value = lowered.get(key)
        if isinstance(value, types) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return None


def _entry(record: dict) -> Entry | None:
    url = _pick(record, URL_KEYS)
    if url is None:
        return None
    return Entry(url, _pick(record, ID_KEYS, (str, int)), _pick(record, CAPTION_KEYS))


def guess_format(name: str | None, first_line: str) -> str:
    suffix = Path(name).suffix.lower() if name else ""
    if suffix in (".txt", ".csv", ".tsv", ".jsonl"):
        return suffix[1:]
    line = first_line.strip().lstrip("\ufeff")
    if suffix == ".json" or line.startswith("{"):
        return "jsonl"
    if "\t" in line:
        return "tsv"
    if "," in line and not line.startswith("#") and not _URL_LIKE.match(line):
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
    header = [h.lower().strip() for h in rows[0]]
    if not any(k in header for k in URL_KEYS):
        if not _URL_LIKE.match(rows[0][0].strip()):
            raise _no_url_column(rows[0])
        return [Entry(r[0].strip()) for r in rows if r[0].strip()], bad + sum(not r[0].strip() for r in rows)
    entries = []
    for row in rows[1:]:
        entry = _entry(dict(zip(header, row)))
        bad += entry is None
        entries += [entry] if entry else []
    return entries, bad


def _no_url_column(header: list[str]) -> UserError:
    found = ", ".join(repr(h.strip()[:40]) for h in header[:20]) + (", ..." if len(header) > 20 else "")
    return UserError(f"The URL list has no URL column (columns found: {found}).",
                     f"Name the column of image URLs one of {', '.join(URL_KEYS)}, or give a list "
                     "whose first line is a URL (no header).")


def _parse_jsonl(text: str) -> tuple[list[Entry], int]:
    entries, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # bad JSON, absurdly long numbers or deep nesting
            bad += 1
            continue
        if isinstance(record, str):
            record = {"url": record}
        entry = _entry(record) if isinstance(record, dict) else None
        bad += entry is None
        entries += [entry] if entry else []
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
