"""embed (incremental, corrupt input), index (kinds, incremental, atomic), search, reindex."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stylesearch.embed.run import EmbedOptions, embed_dataset
from stylesearch.errors import ItemNotFound, UserError
from stylesearch.index.build import build_index
from stylesearch.index.load import check_recall, load_index
from stylesearch.query.search import Searcher, SearchRequest, Term, parse_terms, search
from stylesearch.store.catalog import open_catalog

from .conftest import TINY, make_dataset, unit_rows, vector_catalog

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def _embed(paths, spec, model, **kw):
    return embed_dataset(paths, spec, options=EmbedOptions(workers=0, backend="torch", export_onnx=False), model=model,
                         **kw)


def test_embed_is_incremental_and_reuses_vectors(tmp_path, tiny_spec, tiny_model):
    paths = make_dataset(tmp_path, "inc", 12)
    first = _embed(paths, tiny_spec, tiny_model)
    assert (first.scanned["new"], first.embedded) == (12, 12)
    again = _embed(paths, tiny_spec, None)  # model=None: must not need to load a model
    assert (again.embedded, again.already_embedded, again.scanned["unchanged"]) == (0, 12, 12)

    files = sorted(paths.images.rglob("*.jpg"))
    shutil.move(files[0], paths.images / "renamed.jpg")  # rename: vector reused
    shutil.copy(files[1], paths.images / "copy.jpg")  # duplicate content: vector reused
    files[2].unlink()  # deleted
    from stylesearch.ingest.samples import render

    render("dots", "mono", 999).save(files[3])  # changed content
    third = _embed(paths, tiny_spec, tiny_model)
    assert third.scanned == {"new": 2, "changed": 1, "unchanged": 9, "deleted": 2, "corrupt": 0, "unreadable": 0,
                             "broken": 0}
    assert third.embedded == 1  # only the changed file is new content
    with open_catalog(paths) as cat:
        assert cat.status_counts() == {"ok": 12, "deleted": 2}
        ids, vectors = cat.vectors.load(tiny_spec.key)
    assert len(ids) == 12 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)


def test_corrupt_and_truncated_images_are_counted_and_skipped(tmp_path, tiny_spec, tiny_model):
    paths = make_dataset(tmp_path, "bad", 4)
    (paths.images / "garbage.jpg").write_bytes(b"this is not an image")
    good = next(paths.images.rglob("warm/*.jpg")).read_bytes()
    (paths.images / "truncated.jpg").write_bytes(good[: len(good) // 3])
    result = _embed(paths, tiny_spec, tiny_model)
    assert result.scanned["corrupt"] == 1  # header unreadable
    assert result.failed == 1  # header fine, pixels truncated
    assert result.embedded == 4
    with open_catalog(paths) as cat:
        assert cat.status_counts() == {"ok": 4, "corrupt": 2}


def test_float16_storage(tmp_path, tiny_spec, tiny_model):
    paths = make_dataset(tmp_path, "half", 4)
    embed_dataset(paths, tiny_spec, options=EmbedOptions(workers=0, storage_dtype="float16", export_onnx=False), model=tiny_model)
    with open_catalog(paths) as cat:
        assert cat.vectors.model(tiny_spec.key)["dtype"] == "float16"
        _, vectors = cat.vectors.load(tiny_spec.key)
    assert vectors.dtype == np.float32 and vectors.shape == (4, 64)


def test_embed_paths_from_stdin_through_cli(cli, root, tiny_weights, tmp_path):
    outside = tmp_path / "elsewhere"
    from stylesearch.ingest.samples import write_samples

    files = write_samples(outside, 3)
    make_dataset(root, "stdin", 0)
    out = cli.json("embed", "stdin", "-", "-m", TINY, "-p", str(tiny_weights), "--workers", "0", "--json",
                   input="\n".join(map(str, files)) + "\n")
    assert out["new"] == 3 and out["embedded"] == 3


def _fake_dataset(tmp_path, n, dim=32, name="vec"):
    """A catalog with n random unit vectors (no images needed for index tests)."""
    vectors = unit_rows(n, dim)
    return vector_catalog(tmp_path, name, vectors), vectors


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", pytest.param("ivfpq", marks=pytest.mark.slow)])
def test_index_kinds_have_reasonable_recall(tmp_path, kind):
    paths, _ = _fake_dataset(tmp_path, 3000)
    meta = build_index(paths, "m", kind)
    assert meta["kind"] == kind and meta["count"] == 3000
    recall = check_recall(paths, "m", sample=100)
    assert recall >= {"flat": 1.0, "hnsw": 0.9, "ivf": 0.6, "ivfpq": 0.15}[kind]


def test_auto_kind_and_incremental_add_and_removal(tmp_path):
    paths, _ = _fake_dataset(tmp_path, 200)
    first = build_index(paths, "m")
    assert first["kind"] == "flat" and first["mode"] == "full"
    with open_catalog(paths) as cat, cat.transaction():
        cat.upsert_item("new.jpg", content_hash="f" * 64, status="ok")
        cat.vectors.put("m", ["f" * 64], unit_rows(1, 32, seed=9), "float32")
        cat.set_status([1], "deleted")
    second = build_index(paths, "m")
    assert second["mode"] == "incremental (+1)" and second["count"] == 200
    assert sorted(p.name for p in paths.index_dir("m").iterdir()) == sorted(
        ["index.json", second["file"], second["members"]])  # old files cleaned up


def test_search_by_item_needs_no_model_and_excludes_deleted(tmp_path):
    paths, vectors = _fake_dataset(tmp_path, 50)
    build_index(paths, "m")
    rows = search(paths, SearchRequest([Term(1.0, "like", "1")], k=5))
    assert rows[0]["id"] != 1 and len(rows) == 5
    expected = (np.argsort(-(vectors @ vectors[0]))[1:6] + 1).tolist()
    assert [r["id"] for r in rows] == expected
    with open_catalog(paths) as cat:
        cat.set_status([expected[0]], "deleted")
    assert expected[0] not in [r["id"] for r in search(paths, SearchRequest([Term(1.0, "like", "1")], k=5))]


def test_cold_search_by_id_does_not_import_torch(tmp_path):
    paths, _ = _fake_dataset(tmp_path, 30)
    build_index(paths, "m")
    script = ("import sys\nfrom stylesearch.query.search import SearchRequest, search, Term\n"
              "from stylesearch.store.paths import dataset_paths\n"
              f"rows = search(dataset_paths('vec', {str(tmp_path)!r}), SearchRequest([Term(1.0, 'like', '3')], k=3))\n"
              "print(len(rows), 'torch' in sys.modules, 'open_clip' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["3", "False", "False"]


def test_parse_terms_grammar():
    terms = parse_terms(["red dress", "-blue", "+0.5*image:ref.jpg", "-like:7"], ["q.png"], ["3"])
    assert terms == [Term(1.0, "text", "red dress"), Term(-1.0, "text", "blue"),
                     Term(0.5, "image", "ref.jpg"), Term(-1.0, "like", "7"),
                     Term(1.0, "image", "q.png"), Term(1.0, "like", "3")]
    with pytest.raises(UserError):
        parse_terms([])


def test_query_arithmetic_moves_results(embedded, tiny_spec):
    s = Searcher(embedded, tiny_spec)
    try:
        like = s.search([Term(1.0, "like", "1")], k=35)
        minus = s.search([Term(1.0, "like", "1"), Term(-1.0, "like", "2")], k=35)
        q = s.query_vector([Term(1.0, "like", "1"), Term(-1.0, "like", "2")])
        v1, v2 = (s.catalog.vectors.of_item(s.model_key, s.catalog.item(i)) for i in ("1", "2"))
        assert np.allclose(q, (v1 - v2) / np.linalg.norm(v1 - v2), atol=1e-5)
        assert [r["id"] for r in like] != [r["id"] for r in minus]
        text = s.search([Term(1.0, "text", "warm orange stripes")], k=3)
        assert len(text) == 3 and all(-1.0 <= r["score"] <= 1.0 for r in text)
        with pytest.raises(ItemNotFound):
            s.search([Term(1.0, "like", "no/such.jpg")])
    finally:
        s.close()


def test_search_cli_formats_and_image_query(cli, embedded, tiny_weights, tiny_spec):
    cli.env["STYLESEARCH_HOME"] = str(embedded.home.parent)
    tsv = cli("search", "shared", "--like", "warm/stripes-0000.jpg", "-k", "3", "--format", "tsv").stdout
    golden = os.path.join(GOLDEN, "search_like.tsv")
    if os.environ.get("STYLESEARCH_UPDATE_GOLDEN"):
        with open(golden, "w") as fh:
            fh.write(tsv)
    with open(golden) as fh:
        assert tsv == fh.read()
    paths_out = cli("search", "shared", "--like", "1", "-k", "2", "--format", "paths").stdout.splitlines()
    assert len(paths_out) == 2
    for p in paths_out:
        assert os.path.isabs(p) and os.path.exists(p)
    nul = cli("search", "shared", "--like", "1", "-k", "2", "--format", "paths0").stdout
    assert nul.endswith("\0") and nul.split("\0")[:-1] == paths_out
    img = next(embedded.images.rglob("*.jpg"))
    rows = [json.loads(line) for line in cli(
        "search", "shared", "--image", str(img), "-k", "2", "--format", "jsonl", "-p", str(tiny_weights),
        "-m", TINY).stdout.splitlines()]
    assert rows[0]["file"] == str(img.absolute()) and rows[0]["score"] > 0.999
    neg = cli("search", "shared", "-k", "2", "--format", "json", "--", "like:1", "-like:2").stdout
    with open_catalog(embedded) as cat:
        ids, vectors = cat.vectors.load(tiny_spec.key)
    by_id = dict(zip(ids.tolist(), vectors))
    query = by_id[1] - by_id[2]  # the negative term is subtracted, not added
    order = [int(ids[i]) for i in np.argsort(-(vectors @ query)) if ids[i] not in (1, 2)]
    assert [r["id"] for r in json.loads(neg)] == order[:2]


def test_reindex_embeds_and_indexes_quietly(cli, root, tiny_weights):
    paths = make_dataset(root, "cron", 8)
    proc = cli("reindex", "cron", "-m", TINY, "-p", str(tiny_weights))
    assert proc.stdout == "" and proc.stderr == ""
    assert load_index(paths, cli.json("info", "cron", "--json")["models"][0]["model_key"]) is not None
    info = cli.json("info", "cron", "--json")
    assert info["models"][0]["index"]["count"] == 8
    (paths.images / "warm" / "stripes-0000.jpg").unlink()
    again = cli.json("reindex", "cron", "--json")  # no --model: keeps using the dataset's model
    assert again["model"] == info["models"][0]["model_key"] and again["deleted"] == 1 and again["embedded"] == 0


def test_search_by_image_url(embedded, tiny_spec):
    from .test_download import Server

    server = Server()
    try:
        rows = search(embedded, SearchRequest([Term(1.0, "image", f"{server.url}/img/0.jpg")], k=3), tiny_spec)
        assert len(rows) == 3 and server.hits["/img/0.jpg"] == 1
        with pytest.raises(UserError, match="HTTP 404"):
            search(embedded, SearchRequest([Term(1.0, "image", f"{server.url}/missing")], k=3), tiny_spec)
    finally:
        server.close()


def test_table_title_shows_terms_as_typed():
    from stylesearch.cli.search_cmd import describe_terms

    terms = parse_terms(["red dress", "-blue", "0.5*image:a.jpg", "like:3"])
    assert describe_terms(terms) == '"red dress" -blue 0.5*image:a.jpg like:3'


def test_search_effort_trades_latency_for_recall(tmp_path):
    paths, vectors = _fake_dataset(tmp_path, 3000, dim=64)
    build_index(paths, "m", "hnsw")
    low, high = load_index(paths, "m", effort=1), load_index(paths, "m", effort=400)
    with open_catalog(paths) as cat:
        ids, vecs = cat.vectors.load("m")
    from stylesearch.index.load import recall_at_k

    assert recall_at_k(high, ids, vecs, 100) > recall_at_k(low, ids, vecs, 100)
    assert len(search(paths, SearchRequest([Term(1.0, "like", "5")], k=4, effort=64))) == 4


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_stored_vectors_come_back_by_item_id(tmp_path, kind):
    paths, vectors = _fake_dataset(tmp_path, 2000)
    build_index(paths, "m", kind)
    loaded = load_index(paths, "m")
    ids = np.array([5, 1, 2000, 17])
    assert np.allclose(loaded.vectors(ids), vectors[ids - 1], atol=1e-6)
