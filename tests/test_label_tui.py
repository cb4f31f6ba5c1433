"""The Textual labeller driven by the pilot: keys -> JSONL lines, undo, resume, and a snapshot."""

from __future__ import annotations

import json

from stylesearch.ingest.scan import scan
from stylesearch.learn.judgments import triplet_key
from stylesearch.learn.labelling import LabelSession
from stylesearch.store.catalog import open_catalog

from .conftest import make_dataset, unit_rows


def labelled_dataset(tmp_path, count=12):
    """Real image files with stand-in vectors (labelling needs no model)."""
    paths = make_dataset(tmp_path, "lab", count)
    with open_catalog(paths) as cat:
        scan(cat)
        items = cat.items("ok")
        with cat.transaction():
            cat.vectors.ensure_model("m", "m", "t", 16, "float32")
            cat.vectors.put("m", [it.content_hash for it in items], unit_rows(len(items), 16, 3), "float32")
    return paths


def lines(paths):
    return [json.loads(line) for line in paths.triplets.read_text().splitlines()]


def make_app(paths, seed=7, strategy="random", retrain_every=25):
    from textual_image.widget import HalfcellImage

    from stylesearch.tui.label_app import LabelApp

    session = LabelSession(paths, strategy, seed=seed, retrain_every=retrain_every)
    return LabelApp(session, image_widget=HalfcellImage, strategy=strategy)


async def test_keys_append_the_right_judgments(tmp_path):
    paths = labelled_dataset(tmp_path)
    app = make_app(paths)
    shown = []
    async with app.run_test(size=(120, 36)) as pilot:
        for key in ("a", "right", "b", "left", "s", "d", "space"):
            shown.append(app.session.current)
            await pilot.press(key)
        status = str(app.query_one("#status").render())
    records = lines(paths)
    assert [r["choice"] for r in records] == ["left", "right", "right", "left", "too_similar",
                                              "anchor_different", "unknown"]
    for record, (anchor, left, right) in zip(records, shown):
        assert (record["anchor"], record["left"], record["right"]) == (anchor, left, right)
        assert record["dataset"] == "lab" and record["model"] == "m"
        assert set(record) == {"id", "dataset", "anchor", "left", "right", "choice", "model", "timestamp",
                               "session"}
    assert status.startswith("7 judged now, 7 in all (left 2, right 2, similar 1, different 1, don't know 1)")


async def test_undo_withdraws_last_judgment_and_shows_it_again(tmp_path):
    paths = labelled_dataset(tmp_path)
    app = make_app(paths)
    async with app.run_test() as pilot:
        first = app.session.current
        await pilot.press("a")
        await pilot.press("u")
        assert app.session.current == first
        await pilot.press("b")
    records = lines(paths)
    assert [("undo" in r, r.get("choice")) for r in records] == [(False, "left"), (True, None), (False, "right")]
    assert records[1]["undo"] == records[0]["id"]
    session = LabelSession(paths)
    assert [j["choice"] for j in session.log.judgments] == ["right"]


async def test_rerun_resumes_without_repeating_triplets(tmp_path):
    paths = labelled_dataset(tmp_path, count=6)
    app = make_app(paths, seed=1)
    async with app.run_test() as pilot:
        for _ in range(10):
            await pilot.press("a")
    judged = {triplet_key(r["anchor"], r["left"], r["right"]) for r in lines(paths)}
    assert len(judged) == 10  # never the same triplet twice within a session
    again = LabelSession(paths, seed=1)
    for _ in range(20):
        assert triplet_key(*again.current) not in judged
        judged.add(triplet_key(*again.current))
        again.judge("right")


async def test_quit_key_exits_and_keeps_everything(tmp_path):
    paths = labelled_dataset(tmp_path)
    app = make_app(paths)
    async with app.run_test() as pilot:
        await pilot.press("a")
        await pilot.press("q")
    assert len(lines(paths)) == 1 and app.return_code == 0


def test_label_screen_snapshot(tmp_path, snap_compare):
    paths = labelled_dataset(tmp_path)
    assert snap_compare(make_app(paths), terminal_size=(120, 36), press=["a"])


async def test_metric_retrains_in_the_background_and_its_pick_is_shown(tmp_path):
    paths = labelled_dataset(tmp_path)
    app = make_app(paths, strategy="uncertain", retrain_every=4)
    async with app.run_test(size=(120, 36)) as pilot:
        assert app.session.loop.fit is None
        for key in "abab" * 3:
            await pilot.press(key)
        await app.workers.wait_for_complete()
        await pilot.pause()
        fit = app.session.loop.fit
        guess = str(app.query_one("#guess").render())
        pick, _ = app.session.guess()
        titles = {side: str(app.query_one(f"#{side} .title").render()) for side in ("left", "right")}
    assert fit is not None and app.session.metric is fit.metric and fit.kind == "diagonal"
    assert "retrained on" in guess and f"metric picks {pick}" in guess
    assert "metric's pick" in titles[pick] and "metric's pick" not in titles[{"left": "right"}.get(pick, "left")]
    assert app.session.status()["agreement"] == fit.cv_agreement
