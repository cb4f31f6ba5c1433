"""Item metadata as values: the value a filter key names (dotted paths into nested objects) and the
(key, text, number) rows the catalog indexes for filters."""

from __future__ import annotations

import math


def meta_value(meta: dict, key: str):
    """The value a filter key names in an item's metadata (see meta_rows): the key itself, else a dotted
    path into nested objects; None when there is none."""
    if key in meta:
        return meta[key]
    value = meta
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def meta_rows(meta: dict, prefix: str = "") -> list[tuple[str, str | None, float | None]]:
    """(key, text, number) rows that filters match: nested objects as dotted keys, lists one row per element."""
    rows = []
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += meta_rows(value, name + ".")
            continue
        for element in value if isinstance(value, list) else [value]:
            if isinstance(element, bool):
                rows.append((name, "true" if element else "false", None))
            elif isinstance(element, (int, float)):
                number = _finite(element)
                rows.append((name, storable_text(repr(element) if isinstance(element, float) else str(element)), number))
            elif isinstance(element, str):
                rows.append((name, storable_text(element), None))
    return rows


def _finite(value: int | float) -> float | None:
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def storable_text(text: str) -> str:
    """Text SQLite can store: lone surrogates (from odd JSON) become '?'."""
    return text.encode("utf-8", "replace").decode("utf-8")
