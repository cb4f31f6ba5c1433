"""Hostile input (issue #20, items 10 and 11): ids beyond SQLite's integers, huge numbers and long lists in
filters, odd metadata files, and metadata fields named like result fields. Bad input is a UserError (exit 2,
a 4xx) or is handled; never an OverflowError, a SQLite error or a traceback."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stylesearch.query.filters import parse_filters, to_sql
from stylesearch.query.search import SearchRequest, Term, search
from stylesearch.store.catalog import open_catalog

from .test_metadata_search import feed_dataset

HUGE_IDS = ("9223372036854775808", "99999999999999999999999", "-1", "-99999999999999999999999", "1" * 5000)


def _ids(paths, *where):
    with open_catalog(paths, readonly=True) as cat:
        return sorted(cat.live_ids_where(*to_sql(parse_filters(list(where)))))


# ---------------------------------------------------------------- item ids beyond SQLite's integers

def test_out_of_range_item_ids_are_no_such_item_on_the_command_line(cli, root):
    feed_dataset(root, "a", n=12)
    for ref in HUGE_IDS:
        for args in (("--like", ref), ("--", f"like:{ref}"), ("like:1", f"0.5*like:{ref}")):
            proc = cli("search", "a", *args, "-f", "json", check=False)
            first = proc.stderr.splitlines()[0] if proc.stderr else ""
            assert proc.returncode == 2 and first.startswith("error: No item "), (ref[:30], args[0], proc.stderr[:300])
            assert "unexpected" not in proc.stderr and len(first) < 200 and proc.stdout == ""


def test_any_item_reference_is_an_item_or_no_such_item(tmp_path):
    from stylesearch.errors import ItemNotFound

    paths, _ = feed_dataset(tmp_path, "refs", n=5)
    with open_catalog(paths, readonly=True) as cat:
        @settings(max_examples=300, deadline=None)
        @given(st.one_of(st.integers(-10**40, 10**40).map(str), st.text(max_size=30),
                         st.sampled_from(["²", "٣", "1e3", "0x1", " 1", "+1", "01", "\ud800", "1\x00"])))
        def check(ref):
            try:
                item = cat.item(ref)
            except ItemNotFound as exc:
                assert exc.message.startswith("No item ")
                return
            assert ref in (str(item.id), item.path) or ref.lstrip("0") == str(item.id)

        check()
        assert cat.item("3").path == "2.jpg" and cat.item(3).id == 3 and cat.item("4.jpg").id == 5


def test_out_of_range_item_ids_are_404_on_every_server_route(root):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    feed_dataset(root, "a", n=12)
    c = TestClient(create_app(ServerConfig(root=str(root), preload=False)), base_url="http://127.0.0.1")
    assert c.get("/api/datasets/a/items/3").status_code == 200
    for ref in HUGE_IDS:
        for route in ("items/{}", "items/{}/image", "items/{}/thumb", "similar/{}", "distances/{}"):
            r = c.get(f"/api/datasets/a/{route.format(ref)}")
            assert r.status_code == 404 and r.json()["kind"] == "ItemNotFound", (route, ref[:30], r.text[:300])
            assert r.json()["error"].startswith("No item ") and len(r.json()["error"]) < 200
        for role in ("anchor", "left", "right"):
            body = {"dataset": "a", "anchor": "1", "left": "2", "right": "3", "choice": "left", role: ref}
            r = c.post("/api/triplets", json=body)
            assert r.status_code == 404 and r.json()["kind"] == "ItemNotFound", (role, ref[:30], r.text[:300])
    r = c.post("/api/triplets", headers={"content-type": "application/json"},
               content=b'{"dataset": "a", "anchor": "\\ud800", "left": "2", "right": "3", "choice": "left"}')
    assert r.status_code in (400, 404), r.text[:300]
    assert c.get("/api/triplets?dataset=a").json()["total"] == 0


# ---------------------------------------------------------------- numbers and lists in filters

def test_filter_numbers_beyond_sqlite_integers_compare_as_numbers(cli, root):
    paths, _ = feed_dataset(root, "a", n=12)  # price 0.0 .. 11.0
    everything = list(range(1, 13))
    assert _ids(paths, "price<99999999999999999999999") == everything
    assert _ids(paths, "price>99999999999999999999999") == []
    assert _ids(paths, "price>-99999999999999999999999", "price<1e400") == everything
    assert _ids(paths, "price>=1e400") == [] and _ids(paths, "price>-1e400") == everything
    assert _ids(paths, "price<=" + "9" * 5000) == everything
    assert _ids(paths, "price in (99999999999999999999999, 3, 1e400)") == [4]
    assert _ids(paths, "price not in (99999999999999999999999, 3)") == [i for i in everything if i != 4]
    assert _ids(paths, "width<99999999999999999999999") == []  # these items have no width
    proc = cli("search", "a", "--like", "1", "-w", "price<99999999999999999999999", "-k", "20", "-f", "json",
               check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["id"] for r in json.loads(proc.stdout)) == everything[1:]
    proc = cli("search", "a", "--like", "1", "-w", "category=\udcff", check=False)  # undecodable bytes in argv
    assert proc.returncode == 2 and proc.stderr.startswith("error: Cannot read filter"), proc.stderr


def test_in_lists_of_any_length(tmp_path):
    paths, _ = feed_dataset(tmp_path, "long", n=40)
    for count in (500, 5000, 50_000):
        _check_long_lists(paths, count)


def test_any_number_of_filters(tmp_path):
    paths, _ = feed_dataset(tmp_path, "many", n=12)
    assert _ids(paths, *["price<100", "category!=winter"] * 1500, "price>=3") == [4, 5, 7, 8, 9, 11, 12]


def _check_long_lists(paths, count):
    words = ", ".join(f"w{n}" for n in range(count - 1))
    assert _ids(paths, f"category in ({words}, SUMMER)") == list(range(1, 41, 4))
    assert _ids(paths, f"category not in ({words}, summer, winter)") == [i for i in range(1, 41) if i % 4 in (3, 0)]
    numbers = ", ".join(str(n + 100) for n in range(count - 1))
    assert _ids(paths, f"price in ({numbers}, 5)") == [6]
    assert _ids(paths, f"path in ({words}, 7.jpg)") == [8]
    clauses = parse_filters([f"price in ({numbers}, 5, 6)"])
    rows = search(paths, SearchRequest([Term(1.0, "like", "1")], k=3, filters=clauses))
    assert sorted(r["id"] for r in rows) == [6, 7]


def test_in_list_matches_the_union_of_its_equalities(tmp_path):
    paths, _ = feed_dataset(tmp_path, "eq", n=16)
    with open_catalog(paths) as cat, cat.transaction():
        cat.set_metadata(1, {"sku": "007", "version": "1.10"})
        cat.set_metadata(2, {"sku": 7, "version": 1.1})
        cat.set_metadata(3, {"sku": "Summer", "version": "9223372036854775808"})
        for n in range(8):
            cat.upsert_item(f"{n}.jpg", width=n * 3)
    written = st.one_of(
        st.integers(-10**30, 10**30).map(str), st.integers(0, 20).map(str),
        st.floats(allow_nan=False).map(repr),
        st.sampled_from(["summer", "SUMMER", "winter", "007", "7", "1.10", "1.1", "1e400", "-1e400", "nan",
                         "9223372036854775808", "6", "'6'", "red", "'7'", "3.0"]))

    with open_catalog(paths, readonly=True) as cat:
        def ids(*where):
            return cat.live_ids_where(*to_sql(parse_filters(list(where))))

        everything = set(range(1, 17))

        @settings(max_examples=150, deadline=None)
        @given(st.lists(written, min_size=1, max_size=6),
               st.sampled_from(["price", "category", "sku", "version", "width", "tags", "meta.price", "path"]))
        def check(values, field):
            listed = ids(f"{field} in ({', '.join(values)})")
            assert listed == set().union(*(ids(f"{field}={v}") for v in values))
            assert ids(f"{field} not in ({', '.join(values)})") == everything - listed

        check()


# ---------------------------------------------------------------- metadata files

def _meta(paths, item_id):
    with open_catalog(paths, readonly=True) as cat:
        return cat.metadata([item_id]).get(item_id, {})


def test_metadata_files_with_huge_numbers_surrogates_and_byte_order_marks(cli, root, tmp_path):
    paths, _ = feed_dataset(root, "m", n=6)
    digits = "7" * 5000
    huge = tmp_path / "huge.csv"
    huge.write_text(f"path,code,brand\n1.jpg,{digits},A\n")
    out = cli("meta", "m", str(huge), "--json")
    assert json.loads(out.stdout)["updated"] == 1
    assert _meta(paths, 2)["code"] == digits and _meta(paths, 2)["brand"] == "A"

    surrogate = tmp_path / "odd.jsonl"
    surrogate.write_text('{"path": "2.jpg", "\\ud800": 1, "brand": "B", "deep": {"\\udfff": 2, "ok": 3}}\n'
                         '{"path": "3.jpg", "\\ud800": 5, "brand": "C"}\n')
    proc = cli("meta", "m", str(surrogate), "--json", check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout)["updated"] == 2, proc.stderr
    assert "\\ud800" in proc.stderr and "skipped" in proc.stderr and "2 rows" in proc.stderr
    assert _meta(paths, 3) == {**_meta(paths, 3), "brand": "B", "deep": {"ok": 3}} and _meta(paths, 4)["brand"] == "C"
    assert not any("\ud800" in key for key in _meta(paths, 3))

    for name, text in (("bom.csv", "\ufeffpath,brand\n0.jpg,D\n"), ("bom.tsv", "\ufeffpath\tbrand\n4.jpg\tE\n"),
                       ("bom.jsonl", '\ufeff{"path": "5.jpg", "brand": "F"}\n')):
        (tmp_path / name).write_text(text, encoding="utf-8")
        proc = cli("meta", "m", str(tmp_path / name), "--json", check=False)
        assert proc.returncode == 0 and json.loads(proc.stdout)["updated"] == 1, (name, proc.stderr)
    assert [_meta(paths, i)["brand"] for i in (1, 5, 6)] == ["D", "E", "F"]

    proc = cli("meta", "m", "-", "--json", input=b"\xef\xbb\xbfpath,brand\n0.jpg,G\xff\n", check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout)["updated"] == 1, proc.stderr
    assert _meta(paths, 1)["brand"].startswith("G")


# ---------------------------------------------------------------- metadata named like result fields

COLLIDING = {"id": "SKU-1", "rank": "gold", "score": 5, "file": "f.txt", "path": "p/q.jpg", "group": "G",
             "meta": {"a": 1}, "x": 11, "y": 12, "width": 9, "dataset": "other", "brand": "Acme"}


def _colliding_dataset(root, name="c"):
    paths, _ = feed_dataset(root, name, n=12)
    with open_catalog(paths) as cat, cat.transaction():
        for item_id in range(1, 13):
            cat.set_metadata(item_id, {**COLLIDING, "id": f"SKU-{item_id}"}, replace=True)
    return paths


def test_search_shows_metadata_named_like_result_fields_under_meta_names(cli, root):
    _colliding_dataset(root)
    tsv = cli("search", "c", "--like", "2", "-k", "3", "-f", "tsv").stdout.splitlines()
    header = tsv[0].split("\t")
    assert header == ["rank", "score", "id", "path", "brand", "meta.dataset", "meta.file", "meta.group", "meta.id",
                      "meta.meta", "meta.path", "meta.rank", "meta.score", "meta.width", "meta.x", "meta.y"]
    first = dict(zip(header, tsv[1].split("\t")))
    assert first["rank"] == "1" and first["id"] != first["meta.id"] == f"SKU-{first['id']}"
    assert first["path"] == f"{int(first['id']) - 1}.jpg" and first["meta.path"] == "p/q.jpg"
    assert first["meta.meta"] == '{"a": 1}' and first["meta.rank"] == "gold" and first["meta.x"] == "11"
    many = cli("search", "-d", "c", "like:2", "-k", "2", "-f", "tsv").stdout.splitlines()
    row = dict(zip(many[0].split("\t"), many[1].split("\t")))
    assert row["dataset"] == "c" and row["meta.dataset"] == "other"
    rows = json.loads(cli("search", "c", "--like", "2", "-k", "3", "-f", "json").stdout)
    assert rows[0]["meta"]["id"] == f"SKU-{rows[0]['id']}" and rows[0]["meta"]["rank"] == "gold"
    assert rows[0]["rank"] == 1 and "meta.id" not in rows[0]


def test_umap_export_keeps_metadata_named_like_its_columns(monkeypatch, cli, root, tmp_path):
    _colliding_dataset(root, "u")
    monkeypatch.setattr("stylesearch.maps.projection.umap_2d", lambda vectors, opt: vectors[:, :2] + 100)
    text = cli("umap-export", "u", "--format", "csv").stdout
    records = list(csv.DictReader(io.StringIO(text)))
    assert list(records[0]) == ["id", "path", "x", "y", "brand", "meta.dataset", "meta.file", "meta.group", "meta.id",
                                "meta.meta", "meta.path", "meta.rank", "meta.score", "meta.width", "meta.x",
                                "meta.y"]
    assert records[0]["meta.id"] == f"SKU-{records[0]['id']}" and records[0]["meta.x"] == "11"
    assert float(records[0]["x"]) > 90 and records[0]["path"] == "0.jpg" and records[0]["meta.path"] == "p/q.jpg"
    rows = json.loads(cli("umap-export", "u", "--format", "json").stdout)
    assert rows[0]["meta.y"] == 12 and rows[0]["y"] > 90 and rows[0]["meta.meta"] == '{"a": 1}'
    pq = pytest.importorskip("pyarrow.parquet")
    cli("umap-export", "u", "-o", str(tmp_path / "c.parquet"))
    table = pq.read_table(tmp_path / "c.parquet")
    assert "meta.id" in table.column_names and table.column("meta.width").to_pylist()[0] == 9


def test_where_names_metadata_fields_plainly_or_with_meta_prefix(cli, root):
    paths = _colliding_dataset(root, "w")
    with open_catalog(paths) as cat, cat.transaction():
        cat.upsert_item("4.jpg", width=9)
    assert _ids(paths, "id=SKU-3") == _ids(paths, "meta.id=SKU-3") == [3]
    assert _ids(paths, "meta.width=9") == list(range(1, 13))  # the metadata field
    assert _ids(paths, "width=9") == [5]  # the item's own width
    assert _ids(paths, "meta.path=p/q.jpg") == list(range(1, 13)) and _ids(paths, "path=p/q.jpg") == []
    assert _ids(paths, "meta.meta.a=1") == list(range(1, 13)) and _ids(paths, "meta.a exists") == []
    rows = json.loads(cli("search", "w", "--like", "1", "-w", "meta.id in (SKU-3, SKU-5)", "-f", "json").stdout)
    assert sorted(r["id"] for r in rows) == [3, 5]
    proc = cli("search", "w", "--like", "1", "-w", "meta.nope=1", check=False)
    assert proc.returncode == 2 and "Unknown field 'meta.nope'" in proc.stderr and "meta.id" in proc.stderr
    assert "meta.FIELD" in cli("search", "--help").stdout
