"""The labeller at the sizes people have (80x24, 160x48), what it confirms, and undo (issue 24)."""

from __future__ import annotations

import pytest

from .test_label_tui import labelled_dataset, lines, make_app


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_label_screen_snapshot_at_common_sizes(tmp_path, snap_compare, size):
    paths = labelled_dataset(tmp_path)
    assert snap_compare(make_app(paths), terminal_size=size, press=["a"])


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
async def test_every_key_of_the_legend_fits_on_screen(tmp_path, size):
    from textual.widgets._footer import FooterKey

    paths = labelled_dataset(tmp_path)
    app = make_app(paths)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        keys = [(k.key_display, k.description, k.region) for k in app.query(FooterKey)]
    assert [(shown, words) for shown, words, _ in keys] == [
        ("A/←", "left"), ("B/→", "right"), ("S", "similar"), ("D", "different"), ("Space", "don't know"),
        ("U", "undo"), ("Q", "quit")]
    for shown, words, region in keys:
        assert region.right <= size[0] and region.width >= len(shown) + len(words) + 1, (shown, region)


async def test_each_answer_is_confirmed_in_words(tmp_path):
    paths = labelled_dataset(tmp_path)
    app = make_app(paths)
    said = []
    async with app.run_test(size=(80, 24)) as pilot:
        for key in ("left", "b", "s", "d", "space", "u"):
            await pilot.press(key)
            said.append(str(app.query_one("#message").render()))
    assert said == ["Recorded: left is more similar (U undoes it).", "Recorded: right is more similar (U undoes it).",
                    "Recorded: too similar to tell (U undoes it).",
                    "Recorded: anchor too different from both (U undoes it).", "Recorded: don't know (U undoes it).",
                    "Undone: don't know; judge this one again."]


async def test_undo_withdraws_the_last_of_several_judgments(tmp_path):
    paths = labelled_dataset(tmp_path)
    app = make_app(paths)
    async with app.run_test(size=(80, 24)) as pilot:
        shown = []
        for key in ("a", "b", "s"):
            shown.append(app.session.current)
            await pilot.press(key)
        await pilot.press("u")
        after_one = app.session.current
        await pilot.press("u")
        after_two = app.session.current
        status = str(app.query_one("#status").render())
    assert after_one == shown[2] and after_two == shown[1]
    records = lines(paths)
    ids = [r["id"] for r in records if "choice" in r]
    assert [r["undo"] for r in records if "undo" in r] == [ids[2], ids[1]]
    assert [j["choice"] for j in app.session.log.judgments] == ["left"]
    assert status.startswith("1 judged now, 1 in all (left 1, right 0,")


async def test_undo_after_a_background_retrain_brings_back_the_same_marks(tmp_path):
    paths = labelled_dataset(tmp_path)
    app = make_app(paths, retrain_every=4)
    async with app.run_test(size=(120, 36)) as pilot:
        for key in "ababababa":
            await pilot.press(key)
        assert app.session.loop.fit is None
        before = _marks(app)
        await pilot.press("b")  # the tenth judgment: a retrain starts in the background
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.session.loop.fit is not None
        refitted = app.session.loop.guess, _scores_now(app)
        await pilot.press("u")
        await pilot.pause()
        after = _marks(app)
    assert after == before
    assert refitted != (before["guess"], before["scores"])  # the refit metric would have shown other marks


def _marks(app) -> dict:
    return {"triplet": app.session.current, "guess": app.session.guess(),
            "scores": app.session.marks().scores,
            "captions": [str(app.query_one(f"#{side} .caption").render()) for side in ("left", "right")],
            "titles": [str(app.query_one(f"#{side} .title").render()) for side in ("left", "right")]}


def _scores_now(app):
    anchor, left, right = app.session.current
    return app.session.similarity(anchor, left), app.session.similarity(anchor, right)
