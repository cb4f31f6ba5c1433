"""Tests for bugs the rest of the suite let through (issue 27): each was checked by planting the bug
in the source and seeing the test fail.

- a file rewritten with the same size (new mtime) is scanned again, so `embed` re-embeds it;
- `--min-score` keeps exactly the rows at or above it, in score order (expected rows from numpy);
- `check_recall` is the share of the exact k nearest that the index finds among its own k (a
  value computed here, not a lower bound);
- undo over the API withdraws the session's *last* judgment when it holds several;
- the labeller's Q exits with code 0.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from stylesearch.index.build import build_index
from stylesearch.index.load import check_recall, load_index
from stylesearch.ingest.scan import scan
from stylesearch.store.catalog import open_catalog
from stylesearch.store.datasets import create_dataset
from stylesearch.store.paths import dataset_paths

from .conftest import unit_rows, vector_catalog


def _bmp(path, colour) -> None:
    """An uncompressed image: every colour gives a file of the same size."""
    from PIL import Image

    Image.new("RGB", (8, 8), colour).save(path, format="BMP")


def test_a_same_size_rewrite_is_scanned_again(tmp_path):
    paths = dataset_paths("same", tmp_path)
    paths.images.mkdir(parents=True)
    create_dataset(paths)
    file = paths.images / "a.bmp"
    _bmp(file, (255, 0, 0))
    with open_catalog(paths) as cat:
        assert scan(cat).new == 1
        before = cat.item("a.bmp")
    size, mtime = file.stat().st_size, file.stat().st_mtime
    _bmp(file, (0, 0, 255))  # other pixels, same size
    os.utime(file, (mtime + 5, mtime + 5))  # a later mtime even on a coarse-grained file system
    assert file.stat().st_size == size
    with open_catalog(paths) as cat:
        result = scan(cat)
        after = cat.item("a.bmp")
    assert (result.new, result.changed, result.unchanged) == (0, 1, 0)
    assert after.id == before.id and after.content_hash != before.content_hash  # embed sees new content
    assert after.mtime == mtime + 5
    assert result.as_dict() == {"new": 0, "changed": 1, "unchanged": 0, "deleted": 0, "corrupt": 0,
                                "unreadable": 0, "broken": 0}
    with open_catalog(paths) as cat:  # and nothing changed since: not read again
        assert (scan(cat).changed, scan(cat).unchanged) == (0, 1)


def test_scan_of_given_files_counts_them_and_prunes_the_rest(tmp_path):
    """`embed DS -`: only the files given are scanned (outside images/ too, by absolute path)."""
    paths = dataset_paths("given", tmp_path)
    paths.images.mkdir(parents=True)
    create_dataset(paths)
    inside, outside = paths.images / "in.bmp", tmp_path / "out.bmp"
    _bmp(inside, (1, 2, 3))
    _bmp(outside, (4, 5, 6))
    with open_catalog(paths) as cat:
        first = scan(cat, files=[str(inside), inside, outside])  # a file given twice is scanned once
        assert first.as_dict()["new"] == 2 and first.warnings == []
        assert sorted(it.path for it in cat.items("ok")) == sorted(["in.bmp", str(outside.resolve())])
        kept = scan(cat, files=[inside], prune=False)
        assert (kept.unchanged, kept.deleted) == (1, 0)
        pruned = scan(cat, files=[inside])
        assert (pruned.unchanged, pruned.deleted) == (1, 1) and [it.path for it in cat.items("ok")] == ["in.bmp"]


@pytest.mark.parametrize("min_score, k", [(0.3, 100), (0.1, 5), (-0.2, 200), (0.99, 10)])
@pytest.mark.parametrize("indexed", [False, True])
def test_min_score_keeps_exactly_the_rows_at_or_above_it(cli, root, min_score, k, indexed):
    vectors = unit_rows(150, 8, seed=4)
    paths = vector_catalog(root, "vec", vectors)
    if indexed:
        build_index(paths, "m", "flat")
    scores = vectors @ vectors[0]
    expected = [int(i) + 1 for i in np.argsort(-scores) if i != 0 and scores[i] >= min_score][:k]
    rows = cli.json("search", "vec", "--like", "1", "--min-score", str(min_score), "-k", str(k), "-f", "json")
    assert [r["id"] for r in rows] == expected
    assert np.allclose([r["score"] for r in rows], scores[np.array(expected, dtype=int) - 1], atol=1e-4)
    if min_score > -0.2:  # the threshold really drops rows here
        assert len(expected) < min(k, 149) or k <= 10


@pytest.mark.parametrize("terms, weights", [(["like:1", "-like:2"], {1: 1.0, 2: -1.0}),
                                            (["-0.5*like:3", "like:1"], {3: -0.5, 1: 1.0}),
                                            (["like:4", "-like:5", "2*like:6"], {4: 1.0, 5: -1.0, 6: 2.0})])
def test_negative_terms_through_the_cli_give_the_expected_rows_in_order(cli, root, terms, weights):
    vectors = unit_rows(120, 8, seed=6)
    vector_catalog(root, "neg", vectors)
    query = sum(w * vectors[i - 1] for i, w in weights.items())
    order = [int(i) + 1 for i in np.argsort(-(vectors @ query)) if int(i) + 1 not in weights]
    rows = cli.json("search", "neg", "-k", "6", "-f", "json", "--", *terms)
    assert [r["id"] for r in rows] == order[:6]


def test_check_recall_is_the_exact_share_found_at_k(tmp_path, monkeypatch):
    monkeypatch.setattr("stylesearch.index.build.REFINED_KINDS", ())  # no re-rank: the codes' approximate order
    vectors = unit_rows(3000, 32, seed=2)
    paths = vector_catalog(tmp_path, "rec", vectors)
    build_index(paths, "m", "ivfsq")  # approximate distances: more than k candidates would find more
    k = 10
    recall = check_recall(paths, "m", sample=3000, k=k)  # every item is a query
    loaded = load_index(paths, "m")
    exact = np.argsort(-(vectors @ vectors.T), axis=1)[:, :k] + 1  # item ids are rows + 1

    def share_found(n: int) -> float:
        _, found = loaded.search(vectors, n)
        return sum(len(set(e) & set(f)) for e, f in zip(exact.tolist(), found.tolist())) / exact.size

    expected = share_found(k)
    assert 0.3 < expected < 0.99 and share_found(2 * k) > expected  # this index tells k from 2k
    assert recall == pytest.approx(expected, abs=1e-9)


def _judge_current(c, session: str, view: dict, choice: str) -> dict:
    t = view["triplet"]
    r = c.post("/api/triplets", json={"dataset": "pics", "session": session, "anchor": t["anchor"]["path"],
                                      "left": t["left"]["path"], "right": t["right"]["path"], "choice": choice})
    assert r.status_code == 200, r.text
    return r.json()


def test_api_undo_withdraws_the_last_of_several_judgments(root):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from stylesearch.learn.judgments import read_log
    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    from .test_server import picture_dataset

    paths = picture_dataset(root, count=12)
    c = TestClient(create_app(ServerConfig(root=str(root), preload=False)), base_url="http://127.0.0.1")
    view = c.get("/api/datasets/pics/label?session=web-1").json()
    shown, records = [], []
    for choice in ("left", "right", "too_similar"):
        shown.append(view["triplet"])
        answer = _judge_current(c, "web-1", view, choice)
        records.append(answer["record"])
        view = answer["next"]
    undo = {"dataset": "pics", "session": "web-1"}
    first = c.post("/api/triplets/undo", json=undo).json()
    assert first["undone"]["id"] == records[2]["id"] and first["next"]["triplet"] == shown[2]
    assert [j["id"] for j in read_log(paths.triplets).judgments] == [records[0]["id"], records[1]["id"]]
    second = c.post("/api/triplets/undo", json=undo).json()
    assert second["undone"]["id"] == records[1]["id"] and second["next"]["triplet"] == shown[1]
    assert [j["id"] for j in read_log(paths.triplets).judgments] == [records[0]["id"]]


def test_api_undo_of_judgments_made_outside_the_page_session_withdraws_the_last(root):
    """Judgments posted for a session whose warm LabelSession never saw them (recorded directly):
    undo reads the log and withdraws that session's last one, not another session's."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from stylesearch.learn.judgments import read_log
    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    from .test_server import picture_dataset

    paths = picture_dataset(root, count=12)
    c = TestClient(create_app(ServerConfig(root=str(root), preload=False)), base_url="http://127.0.0.1")
    c.get("/api/datasets/pics/label?session=web-2")  # the warm session exists before the judgments
    items = [it["path"] for it in c.get("/api/datasets/pics/items").json()["items"]]
    ids = []
    for n, session in enumerate(["web-2", "web-2", "other", "web-2", "other"]):
        body = {"dataset": "pics", "anchor": items[n], "left": items[n + 1], "right": items[n + 2],
                "choice": "left", "session": session}
        ids.append(c.post("/api/triplets", json=body).json()["record"]["id"])
    undone = c.post("/api/triplets/undo", json={"dataset": "pics", "session": "web-2"}).json()["undone"]
    assert undone["id"] == ids[3]
    assert [j["id"] for j in read_log(paths.triplets).judgments] == [ids[0], ids[1], ids[2], ids[4]]


async def test_label_quit_key_exits_with_code_zero(tmp_path):
    from .test_label_tui import labelled_dataset, lines, make_app

    paths = labelled_dataset(tmp_path)
    app = make_app(paths)
    async with app.run_test() as pilot:
        await pilot.press("a")
        await pilot.press("q")
        await pilot.pause()
        assert app.return_code == 0  # None would mean the app never exited
    assert len(lines(paths)) == 1
    assert json.loads(paths.triplets.read_text().splitlines()[0])["choice"] == "left"
