"""Where download URLs come from: txt/csv/tsv/jsonl lists (file or stdin) or a sample source."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .errors import UserError

URL_KEYS = ("url", "image_url", "link", "src")
ID_KEYS = ("id", "key", "name")
CAPTION_KEYS = ("caption", "text", "title", "alt")
SAMPLE_SOURCES = {"picsum": "https://picsum.photos"}


@dataclass(frozen=True)
class Entry:
    url: str
    id: str | None = None
    caption: str | None = None


def _pick(row: dict, keys) -> str | None:
    lowered = {str(k).lower().strip(): v for k, v in row.items() if k is not None}
    for key in keys:
        value = lowered.get(key)
        if value not in (None, ""):
            return str(value).strip()
    return None


def guess_format(name: str | None, first_line: str) -> str:
    suffix = Path(name).suffix.lower() if name else ""
    if suffix in (".txt", ".csv", ".tsv", ".jsonl"):
        return suffix[1:]
    if suffix == ".json" or first_line.lstrip().startswith("{"):
        return "jsonl"
    if "\t" in first_line:
        return "tsv"
    if "," in first_line and any(k in first_line.lower() for k in URL_KEYS):
        return "csv"
    return "txt"


def parse_entries(stream: TextIO, fmt: str) -> tuple[list[Entry], int]:
    """(entries, malformed line count) from a URL list in the given format."""
    text = stream.read()
    if fmt == "txt":
        lines = [ln.strip() for ln in text.splitlines()]
        return [Entry(ln) for ln in lines if ln and not ln.startswith("#")], 0
    if fmt in ("csv", "tsv"):
        return _parse_table(text, "\t" if fmt == "tsv" else ",")
    if fmt == "jsonl":
        return _parse_jsonl(text)
    raise UserError(f"Unknown list format {fmt!r}.", "Use txt, csv, tsv or jsonl.")


def _parse_table(text: str, delimiter: str) -> tuple[list[Entry], int]:
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    if not rows:
        return [], 0
    header = [h.lower().strip() for h in rows[0]]
    if not any(k in header for k in URL_KEYS):  # no header: first column is the URL
        return [Entry(r[0].strip()) for r in rows if r and r[0].strip()], 0
    entries, bad = [], 0
    for row in rows[1:]:
        record = dict(zip(header, row))
        url = _pick(record, URL_KEYS)
        if url is None:
            bad += bool(any(cell.strip() for cell in row))
            continue
        entries.append(Entry(url, _pick(record, ID_KEYS), _pick(record, CAPTION_KEYS)))
    return entries, bad


def _parse_jsonl(text: str) -> tuple[list[Entry], int]:
    entries, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        url = _pick(record, URL_KEYS) if isinstance(record, dict) else None
        if url is None:
            bad += 1
            continue
        entries.append(Entry(url, _pick(record, ID_KEYS), _pick(record, CAPTION_KEYS)))
    return entries, bad


def read_source(source: str, fmt: str | None = None, stdin: TextIO | None = None) -> tuple[list[Entry], int]:
    """Read a URL list from a file path or '-' (stdin)."""
    if source == "-":
        import sys

        text = (stdin or sys.stdin).read()
        name = None
    else:
        path = Path(source)
        if not path.is_file():
            raise UserError(f"URL list {source} does not exist.")
        text, name = path.read_text(encoding="utf-8", errors="replace"), path.name
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return parse_entries(io.StringIO(text), fmt or guess_format(name, first))


def sample_entries(source: str, count: int, seed: int = 0, width: int = 640, height: int = 480,
                   base_url: str | None = None) -> list[Entry]:
    """URLs of a public sample image source (needs internet), reproducible by seed."""
    if source not in SAMPLE_SOURCES:
        raise UserError(f"Unknown sample source {source!r}.", f"Known: {', '.join(SAMPLE_SOURCES)}.")
    base = (base_url or SAMPLE_SOURCES[source]).rstrip("/")
    return [Entry(f"{base}/seed/stylesearch-{seed}-{n}/{width}/{height}", f"{source}-{seed}-{n:05d}")
            for n in range(count)]
