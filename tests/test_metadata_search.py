"""Item metadata, the filter grammar, filtered / grouped / cross-dataset search, meta and tag."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stylesearch.errors import UserError
from stylesearch.index.build import build_index
from stylesearch.maps.tags import parse_attribute, tag_dataset, zero_shot
from stylesearch.query.filters import parse_clause, parse_filters
from stylesearch.query.search import SearchRequest, Term, search, search_datasets
from stylesearch.store.catalog import open_catalog
from stylesearch.store.paths import dataset_paths

from .conftest import unit_rows

CATEGORIES = ("summer", "winter", "spring", "autumn")


def feed_dataset(root, name="feed", n=200, dim=16, seed=0, key="m"):
    """Items with vectors and product metadata: category, price, tags list, nested object, groups of 2."""
    paths = dataset_paths(name, root)
    vectors = unit_rows(n, dim, seed)
    with open_catalog(paths, create=True) as cat, cat.transaction():
        cat.vectors.ensure_model(key, "m", "t", dim, "float32")
        for i in range(n):
            item_id = cat.upsert_item(f"{i}.jpg", content_hash=f"{seed}{i:063d}", status="ok")
            cat.set_metadata(item_id, {"category": CATEGORIES[i % 4], "price": float(i), "title": f"Item {i}",
                                       "tags": ["red", "dress"] if i % 5 == 0 else ["blue"],
                                       "dims": {"w": i % 7}})
            cat.set_group(item_id, f"g{i // 2}")
        cat.vectors.put(key, [f"{seed}{i:063d}" for i in range(n)], vectors, "float32")
    return paths, vectors


def ids_of(rows):
    return [r["id"] for r in rows]


def test_filter_grammar_and_positions():
    assert str(parse_clause("category = summer")) == "category=summer"
    assert parse_clause("price<50").values == (50,) and parse_clause("price <= 2.5").op == "<="
    assert parse_clause("style in (photo, 'oil, paint', \"3d render\")").values == ("photo", "oil, paint", "3d render")
    assert parse_clause("style NOT IN (a)").op == "not in" and parse_clause("brand exists").op == "exists"
    for bad, pos in (("price<<50", 7), ("=x", 1), ("style in photo", 10), ("a = 'open", 5), ("a in (x,", 9),
                     ("a = b c d'", 10)):
        with pytest.raises(UserError) as info:
            parse_clause(bad)
        assert f"position {pos}" in info.value.message, (bad, info.value.message)


def test_filtered_search_is_exact_and_unknown_fields_are_listed(tmp_path):
    paths, vectors = feed_dataset(tmp_path)
    query = Term(1.0, "like", "1")
    for where, keep in ((["category=summer"], lambda i: i % 4 == 0),
                        (["price<50", "category in (winter, spring)"], lambda i: i < 50 and i % 4 in (1, 2)),
                        (["tags=red"], lambda i: i % 5 == 0),
                        (["dims.w>=5"], lambda i: i % 7 >= 5),
                        (["category!=summer", "category not in (winter)"], lambda i: i % 4 in (2, 3)),
                        (["title exists", "width exists"], lambda i: False)):
        rows = search(paths, SearchRequest([query], k=5, filters=parse_filters(where)))
        allowed = np.array([keep(i) and i != 0 for i in range(len(vectors))])
        scores = np.where(allowed, vectors @ vectors[0], -np.inf)
        expected = [int(i) + 1 for i in np.argsort(-scores)[: min(5, allowed.sum())]]
        assert ids_of(rows) == expected, where
        assert all(keep(r["id"] - 1) for r in rows)
    with pytest.raises(UserError, match="Unknown field 'colour'") as info:
        search(paths, SearchRequest([query], filters=parse_filters(["colour=red"])))
    assert "category" in info.value.hint and "price" in info.value.hint


def test_unselective_filter_widens_through_the_index_until_k(tmp_path, monkeypatch):
    paths, vectors = feed_dataset(tmp_path, n=400)
    build_index(paths, "m", "flat")
    monkeypatch.setattr("stylesearch.query.search.EXACT_SUBSET_LIMIT", 10)  # force the oversample-and-filter path
    rows = search(paths, SearchRequest([Term(1.0, "like", "1")], k=20, filters=parse_filters(["category=summer"])))
    allowed = np.array([i % 4 == 0 and i != 0 for i in range(400)])
    expected = [int(i) + 1 for i in np.argsort(-np.where(allowed, vectors @ vectors[0], -np.inf))[:20]]
    assert ids_of(rows) == expected
    rare = search(paths, SearchRequest([Term(1.0, "like", "1")], k=5, filters=parse_filters(["price>=398"])))
    assert ids_of(rare) == sorted([399, 400], key=lambda i: -(vectors[i - 1] @ vectors[0]))


def test_group_returns_the_best_item_of_each_group(tmp_path):
    paths, vectors = feed_dataset(tmp_path)
    rows = search(paths, SearchRequest([Term(1.0, "like", "3")], k=8, group=True))
    groups = [r["group"] for r in rows]
    assert len(groups) == 8 and len(set(groups)) == 8
    scores = vectors @ vectors[2]
    for row in rows:  # the best of its group: its partner scores no higher
        partner = (row["id"] - 1) ^ 1
        assert partner == 2 or scores[row["id"] - 1] >= scores[partner]
    assert rows[0]["meta"]["category"] in CATEGORIES and isinstance(rows[0]["meta"]["price"], float)


def test_cross_dataset_search_merges_and_names_datasets(tmp_path):
    a, va = feed_dataset(tmp_path, "a", n=50, seed=1)
    b, vb = feed_dataset(tmp_path, "b", n=50, seed=2)
    rows = search_datasets([a, b], SearchRequest([Term(1.0, "like", "1")], k=10))
    assert {r["dataset"] for r in rows} == {"a", "b"} and [r["rank"] for r in rows] == list(range(1, 11))
    merged = sorted([(float(va[i] @ va[0]), "a", i + 1) for i in range(1, 50)] +
                    [(float(vb[i] @ va[0]), "b", i + 1) for i in range(50)], reverse=True)[:10]
    assert [(r["dataset"], r["id"]) for r in rows] == [(d, i) for _, d, i in merged]
    other, _ = feed_dataset(tmp_path, "other", n=10, key="other-model")
    with pytest.raises(UserError, match="different models") as info:
        search_datasets([a, other], SearchRequest([Term(1.0, "like", "1")]))
    assert "other: other-model" in info.value.message


def test_cli_where_group_formats_and_all(cli, root):
    feed_dataset(root, "a", n=60, seed=1)
    feed_dataset(root, "b", n=60, seed=2)
    rows = json.loads(cli("search", "a", "--like", "1", "--where", "category=winter", "-k", "3", "-f", "json").stdout)
    assert len(rows) == 3 and {r["meta"]["category"] for r in rows} == {"winter"}
    tsv = cli("search", "a", "--like", "1", "-w", "price<10", "-k", "2", "-f", "tsv").stdout.splitlines()
    assert tsv[0].split("\t") == ["rank", "score", "id", "path", "category", "dims", "price", "tags", "title"]
    assert len(tsv) == 3
    both = json.loads(cli("search", "--all", "like:1", "-k", "6", "-f", "json").stdout)
    assert {r["dataset"] for r in both} == {"a", "b"}
    proc = cli("search", "a", "--like", "1", "--where", "price<<3", check=False)
    assert proc.returncode == 2 and "position 7" in proc.stderr
    proc = cli("search", "a", "--like", "1", "--where", "size=3", check=False)
    assert proc.returncode == 2 and "Known fields:" in proc.stderr
    info = cli.json("info", "a", "--json")
    assert info["metadata"]["category"] == 60 and info["metadata"]["dims.w"] == 60


def test_meta_command_attaches_by_path_id_or_url_and_counts_unknown(cli, root, tmp_path):
    paths, _ = feed_dataset(root, "m", n=10)
    csv_file = tmp_path / "meta.csv"
    csv_file.write_text("path,brand,price,on_sale\n1.jpg,Acme,12.5,true\nnope.jpg,X,1,false\n3.jpg,,7,false\n")
    out = cli.json("meta", "m", str(csv_file), "--json")
    assert out == {"updated": 2, "unknown_items": 1, "malformed_lines": 0}
    with open_catalog(paths, readonly=True) as cat:
        meta = cat.metadata([2, 4])
    assert meta[2]["brand"] == "Acme" and meta[2]["price"] == 12.5 and meta[2]["on_sale"] is True
    assert meta[2]["category"] == "winter"  # merged, not replaced
    assert "brand" not in meta[4] and meta[4]["price"] == 7
    jsonl = '{"item_id": 5, "colour": ["red", "green"]}\n{bad\n'
    out = cli.json("meta", "m", "-", "--json", "--replace", input=jsonl)
    assert out == {"updated": 1, "unknown_items": 0, "malformed_lines": 1}
    with open_catalog(paths, readonly=True) as cat:
        assert cat.metadata([5])[5] == {"colour": ["red", "green"]}
    nokey = tmp_path / "nokey.csv"
    nokey.write_text("brand,price\nAcme,1\n")
    proc = cli("meta", "m", str(nokey), check=False)
    assert proc.returncode == 2 and "brand, price" in proc.stderr


def test_umap_coordinates_carry_metadata(monkeypatch, cli, root):
    feed_dataset(root, "u", n=30)
    monkeypatch.setattr("stylesearch.maps.projection.umap_2d", lambda vectors, opt: vectors[:, :2])
    rows = json.loads(cli("umap-export", "u", "--format", "json").stdout)
    assert len(rows) == 30 and rows[0]["category"] == "summer" and rows[0]["price"] == 0.0
    header = cli("umap-export", "u", "--format", "csv").stdout.splitlines()[0]
    assert header == "id,path,x,y,category,dims,price,tags,title"


class FakeEncoder:
    """Text vectors along fixed axes, so which label wins is known."""

    def __init__(self, axis_of: dict[str, int], dim: int):
        self.axis_of, self.dim = axis_of, dim

    def encode_text(self, prompts):
        out = np.zeros((len(prompts), self.dim), dtype=np.float32)
        for n, prompt in enumerate(prompts):
            axis = next(a for label, a in self.axis_of.items() if label in prompt)
            out[n, axis] = 1.0
        return out


def test_zero_shot_tagging_is_incremental(tmp_path):
    paths, vectors = feed_dataset(tmp_path, n=40)
    encoder = FakeEncoder({"photo": 0, "illustration": 1, "3d render": 2}, vectors.shape[1])
    attrs = dict([parse_attribute('style=photo,illustration,"3d render"')])
    from stylesearch.embed.models import ModelSpec

    spec = ModelSpec("m", "t", stored_key="m")
    first = tag_dataset(paths, spec, attrs, encoder=encoder)
    assert first.attributes["style"]["tagged"] == 40 and sum(first.attributes["style"]["labels"].values()) == 40
    with open_catalog(paths, readonly=True) as cat:
        meta = cat.metadata(range(1, 41))
    expected = np.argmax(vectors[:, :3], axis=1)
    labels = ["photo", "illustration", "3d render"]
    assert [meta[i + 1]["style"] for i in range(40)] == [labels[e] for e in expected]
    assert all(0.33 < meta[i]["style_prob"] <= 1.0 for i in range(1, 41))
    again = tag_dataset(paths, spec, attrs, encoder=encoder)
    assert again.attributes["style"] == {"tagged": 0, "already_tagged": 40, "labels": {l: 0 for l in labels}}
    best, prob = zero_shot(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32))
    assert best.tolist() == [0, 1, 2] and np.all(prob > 0.99)
    for bad in ("style", "=a,b", "style=onlyone", "bad name=a,b"):
        with pytest.raises(UserError):
            parse_attribute(bad)


def test_typed_values_keep_what_numbers_would_lose():
    from stylesearch.ingest.metadata import typed_value

    assert [typed_value(v) for v in ("12", "2.50", "-3", "1e3", "true", '["a"]', "")] == [12, 2.5, -3, 1000.0, True,
                                                                                             ["a"], None]
    for text in ("02139", "007", "12345678901234567890", "1e400", "0x1F", "1,5"):
        assert typed_value(text) == text


def test_filter_values_match_as_written_and_as_numbers(tmp_path):
    paths, _ = feed_dataset(tmp_path, "lit", n=4)
    with open_catalog(paths) as cat, cat.transaction():
        cat.set_metadata(1, {"sku": "007", "version": "1.10"})
        cat.set_metadata(2, {"sku": 7, "version": 1.1})
    rows = lambda where: sorted(r["id"] for r in search(paths, SearchRequest([Term(1.0, "like", "3")], k=5,
                                                        filters=parse_filters([where]))))
    assert rows("sku=007") == [1, 2] and rows("sku='007'") == [1] and rows("version=1.10") == [1, 2]


def test_meta_prefers_the_url_over_a_source_id(tmp_path):
    from stylesearch.ingest.metadata import attach_metadata

    paths, _ = feed_dataset(tmp_path, "urls", n=4)
    with open_catalog(paths) as cat, cat.transaction():
        cat.upsert_item("0.jpg", source_url="http://x/a.jpg")
        cat.upsert_item("2.jpg", source_url="http://x/b.jpg")
    result = attach_metadata(paths, [{"url": "http://x/a.jpg", "id": 3, "brand": "A"},
                                     {"url": "http://x/b.jpg", "id": 1, "brand": "B"}])
    assert result.updated == 2
    with open_catalog(paths, readonly=True) as cat:
        meta = cat.metadata([1, 3])
    assert meta[1]["brand"] == "A" and meta[3]["brand"] == "B" and meta[1]["id"] == 3
