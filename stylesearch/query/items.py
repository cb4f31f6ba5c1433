"""Which item a user means (`--like`, `like:`, the server's item routes): the names people have.

In order: the integer id, the catalog path, the file name without its extension (`photo-042`, what
a URL list's `id` column becomes), the source URL, and a metadata `id`/`key` (a shard's key). A
name matching several items, or none, is an error listing them, or the closest names.
"""

from __future__ import annotations

import difflib
from pathlib import PurePosixPath

from ..errors import ItemNotFound
from ..store.catalog import Catalog, Item, shown_ref
from ..store.meta_values import storable_text

SUGGESTIONS = 3
SUGGEST_FROM = 100_000  # names compared for suggestions (the first items by id)


def _like_pattern(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def stem(path: str) -> str:
    name = PurePosixPath(path.split("#", 1)[-1]).name
    return name.rsplit(".", 1)[0] if "." in name else name


def _by_stem(catalog: Catalog, text: str) -> list[Item]:
    escaped = _like_pattern(text)
    found = catalog.items_where("status='ok' AND (path LIKE ? ESCAPE '\\' OR path LIKE ? ESCAPE '\\')",
                                (f"{escaped}.%", f"%/{escaped}.%"), limit=1000)
    return [it for it in found if stem(it.path) == text]


def _by_source(catalog: Catalog, text: str) -> list[Item]:
    found = catalog.items_where("status='ok' AND source_url=?", (text,))
    if found or not catalog.has_metadata:
        return found
    return catalog.items_where("status='ok' AND id IN (SELECT item_id FROM item_meta WHERE key IN ('id', 'key') "
                               "AND value_text=?)", (text,))


def resolve_item(catalog: Catalog, ref: str | int) -> Item:
    """The item `ref` names: id, path, file stem, source URL or metadata id/key (see the module)."""
    try:
        return catalog.item(ref)
    except ItemNotFound:
        if not isinstance(ref, str) or not ref or not ref.isprintable() or storable_text(ref) != ref:
            raise
    for finder in (_by_stem, _by_source):
        found = finder(catalog, ref)
        if len(found) == 1:
            return found[0]
        if found:
            listed = ", ".join(f"{it.path} (id {it.id})" for it in found[:5])
            raise ItemNotFound(f"{ref!r} names {len(found)} items in dataset {catalog.paths.name!r}: {listed}"
                               f"{', ...' if len(found) > 5 else ''}.", "Name one by its id or path.",
                               dataset=catalog.paths.name)
    raise ItemNotFound(f"No item {shown_ref(ref)} in dataset {catalog.paths.name!r}.", _suggestion(catalog, ref),
                       dataset=catalog.paths.name)


def _suggestion(catalog: Catalog, ref: str) -> str:
    items = catalog.items_where("status='ok'", limit=SUGGEST_FROM)
    names: dict[str, Item] = {}
    for it in items:
        names.setdefault(stem(it.path), it)
        names.setdefault(it.path, it)
    started = sorted(name for name in names if name.startswith(ref))[:20]
    close = difflib.get_close_matches(ref[:200], list(names), n=50, cutoff=0.6)
    close.sort(key=lambda name: (-difflib.SequenceMatcher(None, ref[:200], name).ratio(), name))
    by_item = {}
    for name in started + close:  # one name per item
        by_item.setdefault(names[name].id, name)
    close = list(by_item.values())[:SUGGESTIONS]
    known = "Name an item by its id, its path, its file name without extension, or its source URL."
    if not close:
        return known
    return "Did you mean " + ", ".join(f"{name} (id {names[name].id})" for name in close) + "? " + known
