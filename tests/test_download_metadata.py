"""download keeps a list's extra columns as item metadata: typed, grouped, filterable, merged into
duplicates, kept and refreshed by reruns, written in the item's own transaction."""

from __future__ import annotations

import io
import json

import pytest

from stylesearch.ingest.download import DownloadOptions, download
from stylesearch.ingest.sources import Entry, parse_entries
from stylesearch.query.filters import parse_filters, to_sql
from stylesearch.store.catalog import Catalog, open_catalog
from stylesearch.store.paths import dataset_paths

from .test_download import Server

OPTIONS = DownloadOptions(workers=4, retries=0, timeout=5.0)


@pytest.fixture
def server():
    s = Server(count=8)
    yield s
    s.close()


def _feed(server, prices=("29.5", "120.0", "15")) -> str:
    urls = lambda *ns: json.dumps([f"{server.url}/img/{n}.jpg" for n in ns]).replace('"', '""')  # noqa: E731
    return ("id,title,category,price,images\n"
            f'p1,Summer dress,summer,{prices[0]},"{urls(0, 1)}"\n'
            f'p2,Wool coat,winter,{prices[1]},"{urls(2, 3)}"\n'
            f',Sun hat,Summer,{prices[2]},"{urls(4, 5)}"\n')


def _entries(text: str, fmt: str) -> list[Entry]:
    entries, malformed = parse_entries(io.StringIO(text), fmt)
    assert malformed == 0
    return entries


def _where(paths, *exprs: str) -> set[str]:
    """Paths of live items matching the filters."""
    with open_catalog(paths, readonly=True) as cat:
        ids = cat.live_ids_where(*to_sql(parse_filters(list(exprs))))
        return {item.path for item in cat.items() if item.id in ids}


def _state(paths) -> dict[str, tuple]:
    """path -> (group, metadata) of every item."""
    with open_catalog(paths, readonly=True) as cat:
        items = cat.items(status=None)
        meta = cat.metadata(i.id for i in items)
        return {i.path: (i.group_id, meta.get(i.id)) for i in items}


def test_product_feed_rows_give_one_item_per_image_with_shared_typed_metadata(tmp_path, server):
    paths = dataset_paths("feed", tmp_path)
    result = download(paths, _entries(_feed(server), "csv"), OPTIONS)
    assert result.ok == 6 and result.failed == 0
    state = _state(paths)
    assert state["p1-1.jpg"] == ("p1", {"category": "summer", "price": 29.5, "position": 1})
    assert state["p1-2.jpg"] == ("p1", {"category": "summer", "price": 29.5, "position": 2})
    assert state["p2-2.jpg"] == ("p2", {"category": "winter", "price": 120.0, "position": 2})
    assert isinstance(state["p1-1.jpg"][1]["price"], float)
    hats = {p: v for p, v in state.items() if not p.startswith(("p1-", "p2-"))}  # no id: named by content
    assert len(hats) == 2 and len({g for g, _ in hats.values()}) == 1
    assert next(iter(hats.values()))[0].startswith("row-")
    assert sorted(m["position"] for _, m in hats.values()) == [1, 2]
    with open_catalog(paths, readonly=True) as cat:
        assert {i.caption for i in cat.items()} == {"Summer dress", "Wool coat", "Sun hat"}  # title: the caption
        assert cat.metadata_fields() == {"category": 6, "position": 6, "price": 6}
    assert _where(paths, "price<50") == {"p1-1.jpg", "p1-2.jpg", *hats}
    assert _where(paths, "category=summer") == {"p1-1.jpg", "p1-2.jpg", *hats}  # text compares without case
    assert _where(paths, "group=p2") == {"p2-1.jpg", "p2-2.jpg"}
    assert _where(paths, "position=1", "price>=20") == {"p1-1.jpg", "p2-1.jpg"}


def test_jsonl_keeps_json_types_nested_objects_and_lists(tmp_path, server):
    paths = dataset_paths("jsonl", tmp_path)
    u = lambda n: f"{server.url}/img/{n}.jpg"  # noqa: E731
    lines = [
        {"url": u(0), "id": "a", "caption": "first", "tags": ["red", "dress"], "dims": {"w": 3, "h": {"cm": 40}},
         "on_sale": True, "stock": 0, "note": None, "empty": " "},
        {"image_urls": [u(1), u(2)], "sku": 7, "brand": {"name": "Acme"}},
        {"pictures": [u(3), u(4)], "kind": "by shape"},  # no URL column: the column of URL arrays is found
    ]
    entries = _entries("\n".join(json.dumps(line) for line in lines), "jsonl")
    assert [e.url for e in entries] == [u(n) for n in range(5)]
    assert download(paths, entries, OPTIONS).ok == 5
    state = _state(paths)
    assert state["a.jpg"] == (None, {"tags": ["red", "dress"], "dims": {"w": 3, "h": {"cm": 40}},
                                     "on_sale": True, "stock": 0})  # empty values left out
    grouped = {p: v for p, v in state.items() if p != "a.jpg"}
    assert sorted((m for _, m in grouped.values() if "sku" in m), key=lambda m: m["position"]) == [
        {"sku": 7, "brand": {"name": "Acme"}, "position": 1}, {"sku": 7, "brand": {"name": "Acme"}, "position": 2}]
    assert len({g for g, _ in grouped.values()}) == 2  # one group per row
    assert _where(paths, "tags=red") == _where(paths, "dims.h.cm>30") == _where(paths, "on_sale=true") == {"a.jpg"}
    assert len(_where(paths, "brand.name=acme")) == 2 and len(_where(paths, "kind='by shape'")) == 2
    assert _where(paths, "stock=0") == {"a.jpg"}


def test_duplicate_content_merges_metadata_into_the_existing_item(tmp_path, server):
    paths = dataset_paths("dups", tmp_path)
    same = lambda tag: f"{server.url}/img/0.jpg?{tag}"  # noqa: E731 -- other URLs of the same bytes
    download(paths, _entries(f'{{"url": "{server.url}/img/0.jpg", "id": "orig", "color": "red"}}', "jsonl"), OPTIONS)
    rows = [f'{{"url": "{same("a")}", "season": "summer", "color": "crimson"}}',
            f'{{"images": ["{server.url}/img/1.jpg", "{same("b")}"], "id": "g1", "size": "M"}}',
            f'{{"images": ["{same("c")}"], "id": "g2", "tag": "x"}}']  # the item keeps its first group
    for n, line in enumerate(rows):
        result = download(paths, _entries(line, "jsonl"), OPTIONS)
        assert result.duplicates == 1 and result.metadata_updated == 1, (n, result)
    state = _state(paths)
    assert set(state) == {"orig.jpg", "g1-1.jpg"}  # no second copy of the duplicated content
    assert state["orig.jpg"] == ("g1", {"color": "crimson", "season": "summer", "size": "M", "position": 2,
                                        "tag": "x"})
    # the same URL twice in one list: both rows' fields reach the one item
    twice = f'{{"url": "{server.url}/img/5.jpg", "a": 1}}\n{{"url": "{server.url}/img/5.jpg", "b": 2}}\n'
    assert download(paths, _entries(twice, "jsonl"), OPTIONS).ok == 1
    assert [m for p, (_, m) in _state(paths).items() if p not in state] == [{"a": 1, "b": 2}]


def test_rerun_keeps_metadata_adds_nothing_and_refreshes_changed_rows(tmp_path, server):
    paths = dataset_paths("rerun", tmp_path)
    entries = _entries(_feed(server), "csv")
    download(paths, entries, OPTIONS)
    before, hits = _state(paths), dict(server.hits)
    again = download(paths, entries, OPTIONS)
    assert (again.ok, again.duplicates, again.skipped_done, again.metadata_updated) == (0, 0, 6, 0)
    assert _state(paths) == before and server.hits == hits
    changed = download(paths, _entries(_feed(server, prices=("19.5", "99.0", "15")), "csv"), OPTIONS)
    assert (changed.ok, changed.skipped_done, changed.metadata_updated) == (0, 6, 4)
    after = _state(paths)
    assert after["p1-2.jpg"] == ("p1", {"category": "summer", "price": 19.5, "position": 2})
    assert after["p2-1.jpg"][1]["price"] == 99.0 and server.hits == hits  # nothing fetched again


def test_items_downloaded_without_metadata_get_it_from_a_later_list(tmp_path, server):
    paths = dataset_paths("later", tmp_path)
    download(paths, [Entry(f"{server.url}/img/{n}.jpg") for n in range(6)], OPTIONS)
    result = download(paths, _entries(_feed(server), "csv"), OPTIONS)
    assert result.skipped_done == 6 and result.metadata_updated == 6
    assert len(_where(paths, "group=p1", "category=summer")) == 2


@pytest.mark.parametrize("step", ["set_metadata", "record_download"])
def test_metadata_is_written_with_its_item_or_not_at_all(tmp_path, server, monkeypatch, step):
    paths = dataset_paths("atomic", tmp_path)
    entries = _entries(_feed(server), "csv")[:2]
    real = getattr(Catalog, step)

    def crash(self, *args, **kwargs):
        if step == "set_metadata" or args[1] == "ok":  # after the item row was written, before its commit
            raise OSError("disk gone")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Catalog, step, crash)
    with pytest.raises(OSError, match="disk gone"):
        download(paths, entries, DownloadOptions(workers=1, retries=0, timeout=5.0))
    monkeypatch.setattr(Catalog, step, real)
    with open_catalog(paths) as cat:
        assert cat.items(status=None) == [] and cat.conn.execute("SELECT COUNT(*) FROM item_meta").fetchone() == (0,)
    assert [p.name for p in paths.images.iterdir()] == []  # neither the image nor its temp file
    assert download(paths, entries, OPTIONS).ok == 2
    assert _state(paths)["p1-1.jpg"] == ("p1", {"category": "summer", "price": 29.5, "position": 1})


def test_cli_download_reports_metadata_updates(cli, server):
    out = cli.json("download", "feed", "-", "--json", "--list-format", "csv", input=_feed(server))
    assert out["ok"] == 6 and out["metadata_updated"] == 0
    again = cli.json("download", "feed", "-", "--json", input=_feed(server, prices=("1", "2", "3")))
    assert again["skipped_done"] == 6 and again["metadata_updated"] == 6
