"""Tests written for mutants that survived `tools/mutation.sh` (issue 27): exact counts, stored fields
and warning lines where the suite checked only that something happened."""

from __future__ import annotations

import hashlib
import math
import os
import sqlite3

import numpy as np
import pytest

from stylesearch.embed.models import ModelSpec
from stylesearch.errors import UserError
from stylesearch.ingest.scan import _under_any, scan
from stylesearch.query.filters import parse_filters
from stylesearch.query.search import SearchRequest, Term, search
from stylesearch.store.catalog import open_catalog
from stylesearch.store.datasets import create_dataset
from stylesearch.store.paths import dataset_paths

from .conftest import unit_rows
from .test_metadata_search import feed_dataset
from .test_shards import jpeg, write_shard


def _dataset(tmp_path, name="scan"):
    paths = dataset_paths(name, tmp_path)
    paths.images.mkdir(parents=True)
    create_dataset(paths)
    return paths


def test_scan_stores_every_field_and_counts_each_kind_exactly(tmp_path):
    paths = _dataset(tmp_path)
    for n in range(3):
        (paths.images / f"good-{n}.jpg").write_bytes(jpeg(n))
    (paths.images / "bad-0.jpg").write_bytes(b"not an image")
    (paths.images / "bad-1.jpg").write_bytes(b"nor this")
    os.symlink(paths.images / "gone.jpg", paths.images / "dangling.jpg")  # listed, cannot be read
    os.symlink(paths.images / "gone2.jpg", paths.images / "dangling2.jpg")
    with open(os.path.join(os.fsencode(paths.images), b"name-\xff.jpg"), "wb") as fh:  # not UTF-8
        fh.write(jpeg(9))
    (paths.images / "zz-after.jpg").write_bytes(jpeg(5))  # files after a refused name are still scanned
    (paths.images / ".hidden").mkdir()
    (paths.images / ".hidden" / "h.jpg").write_bytes(jpeg(6))  # hidden folders are skipped
    os.symlink(paths.images, paths.images / "a-loop")  # a link back up: its folder is walked once
    (paths.images / "sub").mkdir()
    (paths.images / "sub" / "s.jpg").write_bytes(jpeg(7))  # walked after the loop was met
    with open_catalog(paths) as cat:
        first = scan(cat)
        items = {it.path: it for it in cat.items(status=None)}
    assert sorted(items) == ["bad-0.jpg", "bad-1.jpg", "good-0.jpg", "good-1.jpg", "good-2.jpg", "sub/s.jpg",
                             "zz-after.jpg"]
    assert first.as_dict() == {"new": 7, "changed": 0, "unchanged": 0, "deleted": 0, "corrupt": 2,
                               "unreadable": 3, "broken": 0}
    st = (paths.images / "good-1.jpg").stat()
    good = items["good-1.jpg"]
    assert (good.size, good.mtime, good.status, good.width, good.height) == (st.st_size, st.st_mtime, "ok", 64, 48)
    assert len(good.content_hash) == 64
    assert items["bad-0.jpg"].status == "corrupt" and items["bad-0.jpg"].size == len(b"not an image")
    assert "name-\\udcff.jpg: file name is not valid UTF-8; rename the file to include it" in first.warnings
    assert any(w.startswith("bad-0.jpg: ") for w in first.warnings)
    assert any(w.startswith("dangling.jpg: cannot be read (No such file or directory); skipped") for w in first.warnings)
    assert len(first.warnings) == 5

    for n in range(2):  # two changed files: counted one by one
        (paths.images / f"good-{n}.jpg").write_bytes(jpeg(10 + n) + b"\0" * 7)
    (paths.images / "bad-0.jpg").write_bytes(jpeg(20))  # a corrupt file mended
    with open_catalog(paths) as cat:
        second = scan(cat)
        assert cat.item("bad-0.jpg").status == "ok"
    assert (second.new, second.changed, second.unchanged, second.corrupt, second.unreadable) == (0, 3, 4, 0, 3)


def test_a_deleted_item_whose_file_returns_is_scanned_again(tmp_path):
    paths = _dataset(tmp_path, "back")
    file = paths.images / "a.jpg"
    file.write_bytes(jpeg(1))
    kept = file.read_bytes()
    with open_catalog(paths) as cat:
        scan(cat)
        file.unlink()
        assert scan(cat).deleted == 1
        assert scan(cat).deleted == 0  # an item already deleted is not counted again
        file.write_bytes(kept)
        os.utime(file, (cat.item("a.jpg").mtime,) * 2)  # same size and mtime as catalogued
        again = scan(cat)
        assert (again.changed, again.unchanged) == (1, 0) and cat.item("a.jpg").status == "ok"


def test_unchanged_shards_count_every_member(tmp_path):
    paths = _dataset(tmp_path, "tars")
    write_shard(paths.images / "00000.tar", ["a", "b", "c"])
    write_shard(paths.images / "00001.tar", ["d", "e"])
    with open_catalog(paths) as cat:
        assert scan(cat).new == 5
        again = scan(cat)
        assert (again.unchanged, again.new, again.changed) == (5, 0, 0)
        shard = paths.images / "00001.tar"
        write_shard(shard, ["d", "e", "f"])  # rewritten with one more member
        os.utime(shard, (shard.stat().st_mtime + 5,) * 2)
        third = scan(cat)
        assert (third.unchanged, third.new, third.changed, third.deleted) == (3, 1, 2, 0)
        items = {it.path: it for it in cat.items("ok")}
        first = paths.images / "00000.tar"
        stamp = first.stat().st_mtime
        first.rename(tmp_path / "away.tar")
        assert scan(cat).deleted == 3
        (tmp_path / "away.tar").rename(first)  # back with its old mtime: its members are read again
        os.utime(first, (stamp, stamp))
        back = scan(cat)
        assert (back.changed, back.unchanged) == (3, 3) and len(cat.items("ok")) == 6
        (paths.images / "99999.tar").write_bytes(b"\0" * 10 + b"garbage" * 100)  # not a tar
        os.symlink(paths.images / "nowhere.tar", paths.images / "link.tar")
        damaged = scan(cat)
        assert damaged.unreadable == 2, damaged.warnings
        assert any(w.startswith("99999.tar: shard cannot be read past a point (") and
                   w.endswith("); its other items are kept as they were") for w in damaged.warnings)
    member = items["00001.tar#f.jpg"]
    assert member.size == len(jpeg(2)) and member.mtime == shard.stat().st_mtime and member.status == "ok"
    assert member.caption == "caption of f" and member.content_hash == hashlib.sha256(jpeg(2)).hexdigest()


def test_under_any_blocked_folder():
    assert _under_any("a/b.jpg", ["a"]) and _under_any("a/b.jpg", ["a/"]) and _under_any("a", ["a"])
    assert _under_any("x.jpg", ["."]) and _under_any("x.jpg", [""]) and _under_any("dirX/b.jpg", ["dirX"])
    assert not _under_any("ab/c.jpg", ["a"]) and not _under_any("b/a.jpg", ["a"]) and not _under_any("x.jpg", [])


def _label_client(root):
    from fastapi.testclient import TestClient

    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    from .test_server import picture_dataset

    paths = picture_dataset(root, count=12)
    return paths, TestClient(create_app(ServerConfig(root=str(root), preload=False)), base_url="http://127.0.0.1")


def test_labelling_api_replies_have_their_documented_shape(root):
    from stylesearch.learn.judgments import read_log

    paths, c = _label_client(root)
    with open_catalog(paths) as cat:
        ids = {it.path: it.id for it in cat.items("ok")}
    view = c.get("/api/datasets/pics/label?session=s1&strategy=uncertain").json()
    assert set(view) >= {"dataset", "session", "triplet", "status"} and (view["dataset"], view["session"]) == ("pics", "s1")
    t = view["triplet"]
    assert set(t) >= {"anchor", "left", "right"} and set(t["anchor"]) >= {"id", "path"}
    for side in ("left", "right"):
        assert set(t[side]) >= {"id", "path", "score"} and t[side]["id"] == ids[t[side]["path"]]
        assert isinstance(t[side]["score"], float) and round(t[side]["score"], 4) == t[side]["score"]
    assert t["anchor"]["id"] == ids[t["anchor"]["path"]]
    server = c.app.state.server
    session = server.label_sessions[("pics", "s1")][1]
    assert session.loop.sampler.strategy == "uncertain"
    from stylesearch.learn.labelling import option_scores

    left, right = option_scores(session)
    assert (t["left"]["score"], t["right"]["score"]) == (round(left, 4), round(right, 4))

    items = sorted(ids)
    record = c.post("/api/triplets", json={"dataset": "pics", "anchor": items[0], "left": items[1],
                                           "right": items[2], "choice": "right"}).json()["record"]
    assert (record["dataset"], record["model"], record["session"], record["choice"]) == ("pics", "m", "api", "right")
    (paths.triplets).open("a").write("not json\n")
    c.post("/api/triplets", json={"dataset": "pics", "anchor": items[3], "left": items[4], "right": items[5],
                                  "choice": "left", "session": "s9"})
    c.post("/api/triplets/undo", json={"dataset": "pics", "session": "s9"})
    listing = c.get("/api/triplets?dataset=pics&limit=5").json()
    assert listing == {"dataset": "pics", "total": 1, "counts": {**dict.fromkeys(listing["counts"], 0), "right": 1},
                       "malformed": 1, "undone": 1, "judgments": read_log(paths.triplets).judgments}
    undone = c.post("/api/triplets/undo", json={"dataset": "pics", "session": "s1"}).json()
    assert undone["undone"] is None and undone["next"]["session"] == "s1"
    bad = c.get("/api/datasets/pics/label?session=a%20b")
    assert bad.status_code == 400 and bad.json()["error"] == "A labelling session id is 1-64 letters, digits, '_' or '-'."


def test_warm_labelling_sessions_are_capped_oldest_first(root):
    from stylesearch.server.state import LABEL_SESSIONS

    _, c = _label_client(root)
    for n in range(LABEL_SESSIONS + 1):
        assert c.get(f"/api/datasets/pics/label?session=s{n}").status_code == 200
    c.get("/api/datasets/pics/label?session=s1")  # used again: now the newest
    kept = list(c.app.state.server.label_sessions)
    assert len(kept) == LABEL_SESSIONS and ("pics", "s0") not in kept and kept[-1] == ("pics", "s1")
    first = c.app.state.server.label_sessions[("pics", "s1")][1]
    c.get("/api/datasets/pics/label?session=s1")
    assert c.app.state.server.label_sessions[("pics", "s1")][1] is first  # kept warm, not remade
    paths = c.app.state.server.dataset("pics").paths
    with open_catalog(paths) as cat, cat.transaction():  # the catalog changes: the session is made anew
        cat.set_status([cat.items("ok")[-1].id], "deleted")
    c.get("/api/datasets/pics/label?session=s1")
    assert c.app.state.server.label_sessions[("pics", "s1")][1] is not first


def test_judgment_log_undo_forgets_the_triplet_and_invalid_records_say_why(tmp_path):
    import pytest

    from stylesearch.errors import UserError
    from stylesearch.learn.judgments import JudgmentLog, new_judgment, record_judgment, triplet_key

    log = JudgmentLog(tmp_path / "t.jsonl")
    log.append(new_judgment("d", "a", "b", "c", "left", "m", "s"))
    log.append(new_judgment("d", "a", "d", "e", "left", "m", "s"))
    assert log.undo("s")["left"] == "d"
    assert triplet_key("a", "d", "e") not in log.seen and triplet_key("a", "b", "c") in log.seen
    with pytest.raises(UserError) as exc:
        log.append(new_judgment("d", "a", "a", "c", "left", "m", "s"))
    assert (exc.value.message, exc.value.hint) == ("Not a valid judgment.",
                                                   "A judgment names a known choice and three distinct items.")
    paths = dataset_paths("rj", tmp_path)
    with open_catalog(paths, create=True) as cat:
        for name in ("x.jpg", "y.jpg", "z.jpg"):
            cat.upsert_item(name, status="ok")
        record = record_judgment(paths, cat, "1", "2", "3", "left", "m")
        with pytest.raises(UserError) as exc:
            record_judgment(paths, cat, "1", "1", "3", "left", "m")
    assert (record["dataset"], record["model"], record["session"]) == ("rj", "m", "api")
    assert (record["anchor"], record["left"], record["right"]) == ("x.jpg", "y.jpg", "z.jpg")
    assert (exc.value.message, exc.value.hint) == ("Not a valid judgment.",
                                                   "A judgment names a known choice and three distinct items.")


def test_judgment_records_log_state_counts_and_undo_accounting(tmp_path):
    import json

    import pytest

    from stylesearch.errors import UserError
    from stylesearch.learn.judgments import CHOICES, JudgmentLog, new_judgment, parse_log_lines, read_log, triplet_key

    record = new_judgment("d", "a", "b", "c", "too_similar", "m", "s")
    assert set(record) == {"id", "dataset", "anchor", "left", "right", "choice", "model", "session", "timestamp"}
    assert (record["dataset"], record["model"], record["session"]) == ("d", "m", "s") and record["timestamp"]
    with pytest.raises(UserError) as exc:
        new_judgment("d", "a", "b", "c", "maybe", "m", "s")
    assert (exc.value.message, exc.value.hint) == ("Unknown choice 'maybe'.", f"Choose one of: {', '.join(CHOICES)}.")

    path = tmp_path / "t.jsonl"
    lines = [json.dumps(new_judgment("d", "a", x, y, choice, "m", "s"))
             for x, y, choice in (("b", "c", "left"), ("d", "e", "left"), ("f", "g", "right"))]
    ids = [json.loads(line)["id"] for line in lines]
    path.write_bytes(("\n".join(lines) + "\n{broken\n").encode() + b"\xff\xfe not text\n")
    log = JudgmentLog(path)
    assert log.malformed == 2 and log.seen == {triplet_key("a", "b", "c"), triplet_key("a", "d", "e"),
                                               triplet_key("a", "f", "g")}
    assert log.counts() == {**dict.fromkeys(CHOICES, 0), "left": 2, "right": 1}
    log.append(new_judgment("d", "x", "y", "z", "left", "m", "s"))
    assert triplet_key("x", "y", "z") in log.seen and log.counts()["left"] == 3
    contents = parse_log_lines(lines + [json.dumps({"undo": ids[0]}), json.dumps({"undo": ids[2]}),
                                        json.dumps({"undo": "nobody"})])
    assert contents.undone == 2 and [j["id"] for j in contents.judgments] == [ids[1]]
    assert read_log(path).malformed == 2 and len(read_log(path).judgments) == 4


# --- query: several datasets, the datasets a query covers, query images, filters on item columns ---

def test_a_search_over_several_datasets_applies_filters_min_score_and_groups_in_each(tmp_path):
    from stylesearch.query.filters import parse_filters
    from stylesearch.query.search import Searcher, SearchRequest, search_datasets

    from .test_metadata_search import feed_dataset

    a, _ = feed_dataset(tmp_path, "a", n=60, seed=1)
    b, _ = feed_dataset(tmp_path, "b", n=60, seed=2)
    terms = [Term(1.0, "like", "3")]
    request = SearchRequest(terms, k=12, filters=parse_filters(["category in (summer, winter)"]), min_score=0.05,
                            group=True)
    rows = search_datasets([a, b], request)
    first, second = Searcher(a), Searcher(b)
    try:
        query = first.query_vector(terms)
        expected = [{**r, "dataset": "a"} for r in first.search_vector(query, 12, 0.05, {3}, request.filters, True)]
        expected += [{**r, "dataset": "b"} for r in second.search_vector(query, 12, 0.05, set(), request.filters,
                                                                          True)]
    finally:
        first.close(), second.close()
    expected.sort(key=lambda r: -r["score"])
    assert [(r["dataset"], r["id"], r["rank"]) for r in rows] == [
        (r["dataset"], r["id"], n + 1) for n, r in enumerate(expected[:12])]
    assert all(r["meta"]["category"] in ("summer", "winter") and r["score"] >= 0.05 for r in rows)
    assert len({(r["dataset"], r["group"]) for r in rows}) == len(rows)  # one row per group in each dataset
    assert ("a", 3) not in {(r["dataset"], r["id"]) for r in rows} and {r["dataset"] for r in rows} == {"a", "b"}


def test_the_datasets_a_query_covers():
    from stylesearch.query.search import datasets_covered

    assert datasets_covered(["b", "a", "b"], False, ["a", "b", "c"]) == ["b", "a"]
    assert datasets_covered(["b"], True, ["a", "b", "c"]) == ["a", "b", "c"]
    with pytest.raises(UserError) as none:
        datasets_covered([], True, [])
    assert none.value.message == "There are no datasets to search."
    with pytest.raises(UserError) as unnamed:
        datasets_covered([], False, ["a"])
    assert unnamed.value.message == "Name the datasets to search."


def test_datasets_of_different_models_are_refused_naming_each_model(tmp_path):
    from stylesearch.embed.models import ModelSpec
    from stylesearch.query.search import check_same_model

    one, two = dataset_paths("one", tmp_path), dataset_paths("two", tmp_path)
    same = ModelSpec("ViT-B-32", "openai")
    check_same_model([one, two], [same, same])
    with pytest.raises(UserError) as refused:
        check_same_model([one, two], [same, ModelSpec("RN50", "openai")])
    assert refused.value.message == ("These datasets are embedded with different models "
                                     f"(one: {same.key}, two: {ModelSpec('RN50', 'openai').key}).")
    assert refused.value.hint == "Search datasets of one model together, or choose the model they share."


def test_query_image_bytes_from_a_file_or_a_url_and_a_missing_file_named(tmp_path, monkeypatch):
    from stylesearch.query import search as search_module

    image = tmp_path / "q.jpg"
    image.write_bytes(b"bytes of q")
    assert search_module._image_bytes(str(image)) == b"bytes of q"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert search_module._image_bytes("~/q.jpg") == b"bytes of q"
    monkeypatch.setattr("stylesearch.ingest.fetch.fetch_bytes", lambda url: f"fetched {url}".encode())
    assert search_module._image_bytes("https://example.com/q.jpg") == b"fetched https://example.com/q.jpg"
    with pytest.raises(UserError) as missing:
        search_module._image_bytes(str(tmp_path / "nope.jpg"))
    assert missing.value.message == f"Query image {tmp_path / 'nope.jpg'} does not exist."


def test_item_column_filters_ignore_case_on_text_and_compare_sizes_as_numbers(tmp_path):
    from stylesearch.query.filters import matching_ids, parse_filters

    paths = dataset_paths("cols", tmp_path)
    with open_catalog(paths, create=True) as cat, cat.transaction():
        ids = [cat.upsert_item(name, content_hash=f"{n:064d}", status="ok", width=w, height=h)
               for n, (name, w, h) in enumerate([("Red/A.jpg", 900, 40), ("red/b.jpg", 80, 1000), ("blue.jpg", 100, 100)])]
        cat.set_group(ids[0], "Pair")
        cat.set_group(ids[1], "pair")
        assert matching_ids(cat, parse_filters(["path = RED/A.JPG"])) == {ids[0]}
        assert matching_ids(cat, parse_filters(["group = PAIR"])) == {ids[0], ids[1]}
        assert matching_ids(cat, parse_filters(["width > 100"])) == {ids[0]}
        assert matching_ids(cat, parse_filters(["height >= 100"])) == {ids[1], ids[2]}
        assert matching_ids(cat, parse_filters(["width < 90"])) == {ids[1]}


def test_metadata_shown_beside_result_fields_and_lists_as_json():
    from stylesearch.query.filters import flat_meta, meta_column

    assert [meta_column(k) for k in ("path", "score", "meta.x", "colour", "x")] == [
        "meta.path", "meta.score", "meta.meta.x", "colour", "meta.x"]
    assert flat_meta({"path": "p", "tags": ["rød", "b"], "dims": {"w": 1}, "n": 2}) == {
        "meta.path": "p", "tags": '["rød", "b"]', "dims": '{"w": 1}', "n": 2}


def test_a_filter_error_points_at_its_position():
    from stylesearch.query.filters import GRAMMAR_HINT, parse_clause

    with pytest.raises(UserError) as bad:
        parse_clause("price<<50")
    assert bad.value.message == "Cannot read filter 'price<<50': unexpected '<' (quote a value that starts with it) at position 7.\n  price<<50\n        ^"
    assert bad.value.hint == GRAMMAR_HINT


# --- index: memory sizes, PQ code bits, gathering stored vectors by id ---

def test_memory_sizes_in_every_unit_and_the_refusals_worded():
    from stylesearch.index.plan import parse_bytes

    cases = {"2000000": 2_000_000, "3k": 3 << 10, "3KB": 3 << 10, "2m": 2 << 20, "1.5GiB": int(1.5 * (1 << 30)),
             "2t": 2 << 40, "2TiB": 2 << 40, " 7b ": 7, "1": 1, "0.5k": 512}
    assert {text: parse_bytes(text) for text in cases} == cases
    with pytest.raises(UserError) as unreadable:
        parse_bytes("lots")
    assert (unreadable.value.message, unreadable.value.hint) == (
        "Cannot read the memory size 'lots'.", "Write it like 4G, 512M or 1.5GiB.")
    with pytest.raises(UserError) as negative:
        parse_bytes("-1G")
    assert negative.value.message == "Memory size '-1G' must be positive."


def test_pq_code_bits_grow_with_the_training_points():
    from stylesearch.index.plan import pq_bits

    assert [pq_bits(n) for n in (0, 39 * 15, 39 * 16, 39 * 31, 39 * 32, 39 * 128, 39 * 255, 39 * 256, 10**9)] == [
        4, 4, 4, 4, 5, 7, 7, 8, 8]


def test_gather_returns_the_ids_present_and_their_stored_vectors(tmp_path):
    import numpy as np

    from stylesearch.index.build import build_index
    from stylesearch.index.load import load_index

    from .test_metadata_search import feed_dataset

    paths, vectors = feed_dataset(tmp_path, "g", n=50, seed=3)
    build_index(paths, "m", "flat")
    loaded = load_index(paths, "m")
    with open_catalog(paths) as cat:
        stored = {it.id: n for n, it in enumerate(sorted(cat.items("ok"), key=lambda it: it.id))}
    wanted = np.array([7, 999, 1, 50, 23, 0], dtype=np.int64)
    present, rows = loaded.gather(wanted)
    assert present.tolist() == [7, 1, 50, 23]
    assert np.allclose(rows, vectors[[stored[i] for i in present.tolist()]], atol=1e-6)
    assert loaded.gather(np.array([], dtype=np.int64))[0].tolist() == []


# --- learn: the training verdict, its numbers and the saved metadata ---

def test_judgments_to_beat_is_the_held_out_size_for_the_gain_less_what_was_judged():
    from stylesearch.learn.train import judgments_to_beat

    report = {"agreement_after": 0.8, "agreement_before": 0.7, "train_triplets": 40, "val_triplets": 10}
    held_out = math.ceil(1.96 ** 2 * 0.8 * 0.2 / 0.1 ** 2)  # 62
    assert judgments_to_beat(report, 0.2) == math.ceil(held_out / 0.2) - 50 == 260
    assert judgments_to_beat({**report, "agreement_after": 0.999}, 0.25) == max(
        1, math.ceil(math.ceil(1.96 ** 2 * 0.01 / 0.299 ** 2) / 0.25) - 50)  # variance floored at 0.01
    assert judgments_to_beat({**report, "agreement_after": 0.7}, 0.2) is None
    assert judgments_to_beat({**report, "train_triplets": 10_000}, 0.2) == 1


def test_the_verdict_in_words_for_each_outcome():
    from stylesearch.learn.train import verdict

    base = {"agreement_after": 0.8, "agreement_before": 0.7, "val_triplets": 50, "agreement_ci": (0.68, 0.89)}
    words = ("The learned metric agrees with 80% of your 50 held-out judgments (95% interval 68%-89%); "
             "the raw embedding: 70%.")
    assert verdict({**base, "more_judgments": 120, "saved": False}) == (
        f"{words} That is no reliable gain over the raw embedding yet (judge ~120 more to tell); "
        "it was not saved (the previous metric stays).")
    assert verdict({**base, "more_judgments": None, "saved": True}) == (
        f"{words} That is no reliable gain over the raw embedding yet (judging more, or more consistently, may "
        "change that); it was saved anyway, as asked.")
    assert verdict({**base, "agreement_ci": (0.72, 0.86)}) == (
        "The learned metric agrees with 80% of your 50 held-out judgments (95% interval 72%-86%); "
        "the raw embedding: 70%. It was saved.")


def test_saved_metric_metadata_names_its_size_options_and_rank(tmp_path):
    import json

    from stylesearch.learn.train import TrainOptions, train_metric

    from .test_metric import planted_dataset, simulate

    paths, vectors, hidden = planted_dataset(tmp_path, n=120, dim=16, name="meta")
    simulate(paths, vectors, hidden, 300)
    meta = train_metric(paths, "m", TrainOptions(kind="lowrank", rank=5, seed=3, val_fraction=0.25), force=True)
    assert (meta["dim"], meta["val_fraction"], meta["seed"], meta["model_key"]) == (16, 0.25, 3, "m")
    assert meta["regularisation"]["rank"] == 5 and meta["regularisation"]["pull"] > 0
    saved = json.loads(paths.metric_meta("m").read_text())
    assert (saved["dim"], saved["val_fraction"], saved["regularisation"]["rank"]) == (16, 0.25, 5)


def test_a_label_session_names_itself_counts_its_judgments_and_needs_three_items(tmp_path):
    from stylesearch.errors import NotReady
    from stylesearch.learn.labelling import LabelSession

    from .test_metric import planted_dataset, simulate

    paths, vectors, hidden = planted_dataset(tmp_path, n=40, dim=8, name="lab")
    simulate(paths, vectors, hidden, 5)
    named = LabelSession(paths, seed=1, session_id="mine")
    assert named.session == "mine"
    named.judge("left"), named.judge("right")
    status = named.status()
    assert (status["session"], status["total"]) == (2, 7)
    assert [j["session"] for j in named.log.judgments[-2:]] == ["mine", "mine"]
    fresh = LabelSession(paths, seed=1)
    assert len(fresh.session) == 12 and int(fresh.session, 16) >= 0 and fresh.session != "mine"
    assert fresh.status()["session"] == 0
    few, _, _ = planted_dataset(tmp_path, n=2, dim=8, name="few")
    with pytest.raises(NotReady) as refused:
        LabelSession(few)
    assert (refused.value.step, refused.value.dataset) == ("embed", "few")
    assert refused.value.message == "Labelling needs at least 3 embedded items; 'few' has 2."


# ---------------------------------------------------------------- query: filters and search (mutation survivors)


def _refusal(call, *args, **kwargs) -> UserError:
    with pytest.raises(UserError) as refused:
        call(*args, **kwargs)
    return refused.value


def test_filter_refusals_say_what_and_where_with_the_grammar():
    from stylesearch.query.filters import GRAMMAR_HINT, parse_clause

    cases = {"  = 3": "expected a field name at position 3", "a in ('x' y)": "expected ',' or ')' at position 11",
             "a = 'b' c": "unexpected text at position 9", "a = \ud800": "it is not valid Unicode text"}
    for expr, what in cases.items():
        error = _refusal(parse_clause, expr)
        assert what in error.message and error.hint == GRAMMAR_HINT, (expr, error.message)


def test_quoted_values_unescape_backslashes(tmp_path):
    from stylesearch.query.filters import parse_clause

    assert parse_clause(r'title = "say \"hi\" \\ now"').values == ('say "hi" \\ now',)
    paths, _ = feed_dataset(tmp_path)
    with open_catalog(paths) as cat, cat.transaction():
        cat.set_metadata(7, {"title": 'say "hi"'})
    rows = search(paths, SearchRequest.parse(likes=["1"], where=[r'title = "say \"hi\""']))
    assert [r["id"] for r in rows] == [7]


def test_in_lists_on_item_columns_compare_numbers_and_text(tmp_path):
    from stylesearch.query.filters import matching_ids, parse_filters

    paths, _ = feed_dataset(tmp_path, n=12)
    with open_catalog(paths) as cat, cat.transaction():
        for item_id, (w, h) in {1: (64, 48), 2: (96, 64), 3: (64, 64)}.items():
            cat.conn.execute("UPDATE items SET width=?, height=? WHERE id=?", (w, h, item_id))
    with open_catalog(paths, readonly=True) as cat:
        def ids(*where):
            return sorted(matching_ids(cat, parse_filters(list(where))))
        assert ids("width in (64, 1000)") == [1, 3] and ids("height in (64)") == [2, 3]
        assert ids("width not in (64)") == [2, *range(4, 13)]  # the complement: items without a width too
        assert ids("path in ('3.JPG', 5.jpg)") == [4, 6]  # text columns: case-insensitive, as `=`


def test_references_to_list_values_become_in_and_not_in_beside_plain_values(tmp_path):
    paths, _ = feed_dataset(tmp_path, n=20)
    query = Term(1.0, "like", "1")  # item 1 (0.jpg): tags ["red", "dress"], category summer
    same = search(paths, SearchRequest([query], k=20, filters=parse_filters(["tags = @tags"])))
    assert sorted(r["id"] for r in same) == [6, 11, 16]  # items sharing a tag; the query item is left out
    other = search(paths, SearchRequest([query], k=20, filters=parse_filters(["tags != @tags"])))
    assert sorted(r["id"] for r in other) == [i for i in range(2, 21) if (i - 1) % 5]
    mixed = search(paths, SearchRequest([query], k=20, filters=parse_filters(["category in (winter, @category)"])))
    assert sorted(r["id"] for r in mixed) == [i for i in range(2, 21) if (i - 1) % 4 in (0, 1)]


def test_object_values_cannot_be_compared_and_say_how_to(tmp_path):
    paths, _ = feed_dataset(tmp_path, n=8)
    error = _refusal(search, paths, SearchRequest([Term(1.0, "like", "1")], filters=parse_filters(["dims = @dims"])))
    assert "is an object, which does not compare" in error.message
    assert error.hint == "Compare with one of its fields, e.g. @FIELD.NAME."


def test_search_refusals_name_the_problem_and_the_fix(tmp_path):
    from stylesearch.errors import NotReady
    from stylesearch.query.search import Searcher, parse_terms

    error = _refusal(parse_terms, [])
    assert (error.message, error.hint) == ("Nothing to search for.",
                                           "Give a text query, a query image (file or URL) or an item.")
    paths, vectors = feed_dataset(tmp_path, n=8)
    searcher = Searcher(paths)
    try:
        error = _refusal(searcher.query_vector, [Term(1.0, "like", "2"), Term(-1.0, "like", "2")])
        assert (error.message, error.hint) == ("The query terms cancel out to nothing.", "Change the weights or the terms.")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # a search never writes the catalog
            searcher.catalog.conn.execute("DELETE FROM items")
    finally:
        searcher.close()
    with pytest.raises(NotReady) as missing:
        Searcher(paths, ModelSpec("other", "x", stored_key="other"))
    assert missing.value.message == f"Dataset {paths.name!r} has no embeddings of other."
    assert (missing.value.hint, missing.value.step) == ("Embed it with that model first.", "embed")
    with open_catalog(paths) as cat, cat.transaction():
        cat.conn.execute("DELETE FROM vectors")
    searcher = Searcher(paths)
    try:
        with pytest.raises(NotReady) as empty:
            searcher._all_vectors()
        assert (empty.value.message, empty.value.hint) == ("No embedded items to search.", "Embed the dataset first.")
    finally:
        searcher.close()


def test_query_vector_is_the_normalised_weighted_sum(tmp_path):
    from stylesearch.query.search import Searcher

    paths, vectors = feed_dataset(tmp_path, n=8)
    searcher = Searcher(paths)
    try:
        q = searcher.query_vector([Term(2.0, "like", "2"), Term(-0.5, "like", "5")])
        expected = 2 * vectors[1] - 0.5 * vectors[4]
        np.testing.assert_allclose(q, expected / np.linalg.norm(expected), atol=1e-6)
        assert len(searcher.search_vector(q)) == 8 and len(feed_dataset(tmp_path, "more", n=30)[1]) == 30
        bigger = Searcher(dataset_paths("more", tmp_path))
        assert len(bigger.search_vector(bigger.query_vector([Term(1.0, "like", "1")]))) == 10  # k's default
        bigger.close()
    finally:
        searcher.close()


def test_grouped_search_keeps_ungrouped_items_apart(tmp_path):
    paths, _ = feed_dataset(tmp_path, n=12)
    with open_catalog(paths) as cat, cat.transaction():
        cat.conn.execute("UPDATE items SET group_id=NULL")
    rows = search(paths, SearchRequest([Term(1.0, "like", "1")], k=5, group=True))
    assert len(rows) == 5 and len({r["id"] for r in rows}) == 5


def test_the_request_chooses_weights_effort_and_raw_scores(tmp_path):
    """Two embeddings of one model name: the request's `pretrained` picks one (alone it is ambiguous);
    its effort reaches the index, `raw` ignores a learned metric."""
    import faiss

    from stylesearch.index.build import build_index
    from stylesearch.query.search import Searcher, search_datasets

    paths, vectors = feed_dataset(tmp_path, n=300)
    other = unit_rows(300, 16, seed=9)
    with open_catalog(paths) as cat, cat.transaction():
        cat.vectors.ensure_model("m-u", "m", "u", 16, "float32")
        cat.vectors.put("m-u", [f"0{i:063d}" for i in range(300)], other, "float32")
    like = [Term(1.0, "like", "1")]
    expected = (np.argsort(-(other @ other[0]), kind="stable")[1:4] + 1).tolist()
    for run in (lambda r: search(paths, r), lambda r: search_datasets([paths], r)):
        assert [row["id"] for row in run(SearchRequest(like, k=3, pretrained="u"))] == expected
    build_index(paths, "m-u", "ivf")
    searcher = Searcher(paths, ModelSpec("m", "u", stored_key="m-u"), effort=3)
    try:
        assert faiss.extract_index_ivf(searcher.index.index).nprobe == 3
    finally:
        searcher.close()


def test_one_shot_searches_pass_effort_raw_and_device_on(tmp_path, monkeypatch):
    """search() and search_datasets() hand the request's effort, raw and device to their searchers."""
    from stylesearch.embed.encoders.query import TorchQueryEncoder
    from stylesearch.index.build import build_index
    from stylesearch.learn.metric import DiagonalMetric, save_metric
    from stylesearch.query.search import search_datasets

    from .onnx_text import write_text_export

    paths, vectors = feed_dataset(tmp_path, n=400)
    build_index(paths, "m", "ivf")
    exact = {q: (np.argsort(-(vectors @ vectors[q - 1]), kind="stable")[1:4] + 1).tolist() for q in range(1, 41)}
    for run in (lambda r: search(paths, r), lambda r: search_datasets([paths], r)):
        def found(effort):
            return {q: [row["id"] for row in run(SearchRequest([Term(1.0, "like", str(q))], k=3, effort=effort))]
                    for q in exact}
        assert found(1) != exact and found(4096) == exact  # one list probed misses some neighbours; all lists none
    weights = np.linspace(0.1, 3.0, 16)
    save_metric(paths, "m", DiagonalMetric(weights))
    raw = [row["id"] for row in search(paths, SearchRequest([Term(1.0, "like", "3")], k=5, raw=True, effort=4096))]
    assert raw == (np.argsort(-(vectors @ vectors[2]), kind="stable")[1:6] + 1).tolist()
    learned = [row["id"] for row in search(paths, SearchRequest([Term(1.0, "like", "3")], k=5))]
    assert learned != raw
    tower = write_text_export(paths.onnx_dir("m"), "m", 16)
    monkeypatch.setattr(TorchQueryEncoder, "encode_text", lambda self, texts: pytest.fail("torch was asked"))
    rows = search(paths, SearchRequest([Term(1.0, "text", "red dress")], k=3, raw=True, device="cpu", effort=4096))
    text = tower.expected_vectors(["red dress"])[0]
    assert [row["id"] for row in rows] == (np.argsort(-(vectors @ text), kind="stable")[:3] + 1).tolist()


def test_a_searcher_remembers_sixteen_filter_sets_and_shares_an_encoder(tmp_path):
    from stylesearch.query.search import Searcher

    paths, _ = feed_dataset(tmp_path, n=40)
    searcher = Searcher(paths)
    try:
        query = searcher.query_vector([Term(1.0, "like", "1")])
        for price in range(20):  # more filter sets than remembered: the oldest make room
            rows = searcher.search_vector(query, k=50, filters=parse_filters([f"price < {price}"]))
            assert sorted(r["id"] for r in rows) == list(range(1, price + 1))
        assert len(searcher._allowed_cache) == 16
        shared = object()
        searcher.use_encoder(shared)
        assert searcher.encoder is shared and searcher.loaded_encoder is shared
    finally:
        searcher.close()
