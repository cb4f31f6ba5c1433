"""Tests written for mutants that survived `tools/mutation.sh` (issue 27): exact counts, stored fields
and warning lines where the suite checked only that something happened."""

from __future__ import annotations

import hashlib
import os

from stylesearch.ingest.scan import _under_any, scan
from stylesearch.store.catalog import open_catalog
from stylesearch.store.datasets import create_dataset
from stylesearch.store.paths import dataset_paths

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
