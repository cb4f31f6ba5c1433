"""Learned attribute heads (`tag --learn`): fitting, refusals, calibration, incremental predictions, never
overwriting user values, `info`; and `@FIELD` filters (mix and match) through the CLI, the API and the server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stylesearch.errors import StyleSearchError, UserError
from stylesearch.learn.attributes import apply_heads, learn_fields
from stylesearch.learn.heads import expected_calibration_error, fit_head, load_head
from stylesearch.store.catalog import open_catalog

from .conftest import vector_catalog

CLASSES = ["bag", "dress", "shoe"]
SEASONS = ["summer", "winter"]


def planted(n: int, dim: int = 32, seed: int = 0, spread: float = 0.5):
    """Unit vectors around one centre per class (with overlap) and the true class of each."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(len(CLASSES), dim))
    truth = rng.choice(len(CLASSES), n, p=[0.5, 0.3, 0.2])
    x = centres[truth] * spread + rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def shop(root, n: int = 300, labelled_every: int = 4, seed: int = 0):
    """Dataset `shop`: item i+1 has vector i; every item a season, every `labelled_every`-th its category."""
    x, truth = planted(n, seed=seed)
    paths = vector_catalog(root, "shop", x)
    with open_catalog(paths) as cat, cat.transaction():
        for i in range(n):
            meta = {"season": SEASONS[i % 2]}
            if i % labelled_every == 0:
                meta["category"] = CLASSES[truth[i]]
            cat.set_metadata(i + 1, meta)
    return paths, truth


def metadata(paths) -> dict[int, dict]:
    with open_catalog(paths, readonly=True) as cat:
        return cat.metadata(range(1, 100_000))


# ---------------------------------------------------------------- fitting and calibration


def test_head_beats_the_majority_baseline_with_calibrated_probabilities():
    x, truth = planted(1500)
    head, report = fit_head(x, [CLASSES[t] for t in truth], "category")
    assert report["labelled"] == 1500
    assert report["classes"] == {c: int((truth == k).sum()) for k, c in enumerate(CLASSES)}
    assert report["majority_class"] == "bag" and 0.4 < report["majority_accuracy"] < 0.6
    lo, hi = report["accuracy_ci"]
    assert lo <= report["accuracy"] <= hi and lo > report["majority_ci"][1]  # significantly above the baseline
    assert report["ece"] < 0.06 and report["C"] > 0 and report["temperature"] > 0
    assert report["train"] + report["calibration"] + report["test"] == 1500
    assert set(report["confusion"]["per_class"]) == set(CLASSES)
    fresh, fresh_truth = planted(600, seed=5)  # new items from the same classes
    labels, probs = head.predict(fresh)
    correct = np.array(labels) == np.array([CLASSES[t] for t in fresh_truth])
    assert correct.mean() > 0.85 and expected_calibration_error(probs, correct) < 0.06


def test_calibration_error_is_the_weighted_gap_between_confidence_and_accuracy():
    assert expected_calibration_error(np.array([0.9, 0.9, 0.9, 0.9]), np.array([1, 1, 1, 0])) == pytest.approx(0.15)
    assert expected_calibration_error(np.array([0.55, 0.95]), np.array([0, 1])) == pytest.approx((0.55 + 0.05) / 2)


@pytest.mark.parametrize("labels, numeric, expected", [
    (["a"] * 10 + ["b"] * 4, 0, "'b' (4) has fewer than 5"),
    (["a"] * 10 + ["b"] * 2 + ["c"] * 3, 0, "'b' (2), 'c' (3) have fewer than 5"),
    (["a"] * 10, 0, "1 class among labelled items (only 'a')"),
    ([], 7, "holds numbers (7 items)"),
])
def test_what_a_head_cannot_learn_is_refused_by_name(labels, numeric, expected):
    from stylesearch.learn.heads import check_labels

    with pytest.raises(UserError) as info:
        check_labels("category", labels, numeric)
    assert expected in info.value.message


# ---------------------------------------------------------------- a dataset's heads


def test_learning_writes_predictions_for_every_item_and_never_touches_user_values(root):
    paths, truth = shop(root)
    before = metadata(paths)
    [report] = learn_fields(paths, "m", ["category"]).values()
    assert report["fitted"] and report["items"] == 300 and report["written"] == 300 and report["labelled"] == 75
    after = metadata(paths)
    for item, meta in after.items():
        assert {k: v for k, v in meta.items() if not k.startswith("category_p")} == before[item]  # nothing else
        if "category" in meta:  # the user's value is kept, and is the item's best value
            assert (meta["category_pred"], meta["category_prob"]) == (meta["category"], 1.0)
        else:
            assert meta["category_pred"] in CLASSES and 0 < meta["category_prob"] < 1
    unlabelled = [i for i in after if "category" not in after[i]]
    accuracy = np.mean([after[i]["category_pred"] == CLASSES[truth[i - 1]] for i in unlabelled])
    assert accuracy > 0.8 > np.mean(truth[np.array(unlabelled) - 1] == 0) + 0.2
    assert load_head(paths, "m", "category").meta["report"]["accuracy"] == report["accuracy"]


def test_fields_named_like_predictions_that_no_head_wrote_are_not_overwritten(root):
    paths, _ = shop(root)
    with open_catalog(paths) as cat, cat.transaction():
        cat.set_metadata(7, {"category_pred": "my own"})
    with pytest.raises(UserError, match="already have field 'category_pred'"):
        learn_fields(paths, "m", ["category"])
    assert metadata(paths)[7]["category_pred"] == "my own"


def test_refusals_reach_the_command_line_as_one_line_with_exit_2(root, cli):
    paths, _ = shop(root)
    with open_catalog(paths) as cat, cat.transaction():
        for i in range(1, 40):
            cat.set_metadata(i, {"price": i * 1.5, "rare": "x" if i < 4 else "y"})
    for field, message in [("price", "holds numbers"), ("rare", "'x' (3) has fewer than 5"),
                           ("missing", "0 classes"), ("../x", "Cannot learn field")]:
        proc = cli("tag", "shop", "--learn", field, check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 2
    assert not paths.heads_dir("m").exists() or paths.head_fields("m") == []


def test_new_items_get_predictions_without_refitting_and_refit_retrains(root, cli):
    paths, truth = shop(root)
    first = cli.json("tag", "shop", "--learn", "category", "--json")["learned"]["category"]
    head_file = paths.head_arrays("m", "category")
    stamp = head_file.stat().st_mtime_ns
    extra, extra_truth = planted(40, seed=7)
    with open_catalog(paths) as cat, cat.transaction():  # 40 new items embedded, one of them labelled by the user
        hashes = [f"new{i:061d}" for i in range(40)]
        for i, h in enumerate(hashes):
            cat.upsert_item(f"new/{i}.jpg", content_hash=h, status="ok")
        cat.vectors.put("m", hashes, extra, "float32")
        cat.set_metadata(301, {"category": "shoe"})
    applied = apply_heads(paths, "m")
    assert applied == {"category": {"written": 40, "stale": False}}
    assert head_file.stat().st_mtime_ns == stamp  # no refit
    meta = metadata(paths)
    assert (meta[301]["category_pred"], meta[301]["category_prob"]) == ("shoe", 1.0)
    new_correct = np.mean([meta[302 + i]["category_pred"] == CLASSES[extra_truth[1 + i]] for i in range(39)])
    assert new_correct > 0.75
    assert apply_heads(paths, "m")["category"]["written"] == 0  # nothing left to do

    again = cli.json("tag", "shop", "--learn", "category", "--json")["learned"]["category"]
    assert again["fitted"] is False and again["version"] == first["version"] and again["written"] == 0
    refit = cli.json("tag", "shop", "--learn", "category", "--refit", "--json")["learned"]["category"]
    assert refit["fitted"] is True and refit["labelled"] == first["labelled"] + 1
    assert refit["version"] != first["version"] and head_file.stat().st_mtime_ns != stamp


def test_a_head_of_an_older_metric_is_refitted_in_the_new_space(root):
    from stylesearch.learn.metric import DiagonalMetric, save_metric

    paths, _ = shop(root)
    learn_fields(paths, "m", ["category"])
    assert load_head(paths, "m", "category").meta["space"] == "raw"
    save_metric(paths, "m", DiagonalMetric(np.linspace(0.5, 1.5, 32)))
    applied = apply_heads(paths, "m")
    assert applied["category"]["refitted"] is True and not applied["category"]["stale"]
    assert load_head(paths, "m", "category").meta["space"] not in ("raw", None)


def test_tag_reports_each_field_and_info_lists_the_heads(root, cli):
    paths, _ = shop(root)
    with open_catalog(paths) as cat, cat.transaction():
        for i in range(1, 301, 3):
            cat.set_metadata(i, {"style": ["plain", "print"][i % 2]})
    proc = cli("tag", "shop", "--learn", "category", "--learn", "style")
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("learn category: 75 labelled items, 3 classes (bag ")
    assert "held-out accuracy" in lines[1] and "majority class 'bag'" in lines[1] and "95% CI" in lines[1]
    assert "calibration error (ECE)" in lines[2] and "recall per class: bag" in lines[3]
    assert [line.split(":")[0] for line in lines if line.startswith("learn ")] == ["learn category", "learn style"]
    info = cli("info", "shop").stdout
    assert "  head    category: 3 classes from 75 labelled items" in info and "  head    style: 2 classes" in info
    heads = cli.json("info", "shop", "--json")["models"][0]["heads"]
    assert sorted(heads) == ["category", "style"] and heads["category"]["report"]["ece"] >= 0


def test_tag_needs_attributes_or_fields(root, cli):
    shop(root)
    proc = cli("tag", "shop", check=False)
    assert proc.returncode == 2 and "--learn FIELD" in proc.stderr


# ---------------------------------------------------------------- @FIELD filters: mix and match


def _like_values(paths, item: int, field: str):
    meta = metadata(paths)[item]
    return meta.get(field, meta.get(field + "_pred"))


def test_mix_and_match_through_the_command_line(root, cli):
    paths, _ = shop(root)
    cli("tag", "shop", "--learn", "category")
    for like in (1, 2):  # item 1 has a category of its own, item 2 only a predicted one
        rows = cli.json("search", "shop", "--like", str(like), "--where", "category_pred != @category",
                        "--where", "season = @season", "-k", "8", "-f", "json")
        category, season = _like_values(paths, like, "category"), _like_values(paths, like, "season")
        assert len(rows) == 8 and [r["rank"] for r in rows] == list(range(1, 9))
        assert all(r["meta"]["category_pred"] != category and r["meta"]["season"] == season for r in rows)
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=True) and like not in [r["id"] for r in rows]
        plain = cli.json("search", "shop", "--like", str(like), "-k", "300", "-f", "json")
        expected = [r["id"] for r in plain if r["meta"]["category_pred"] != category
                    and r["meta"]["season"] == season][:8]
        assert [r["id"] for r in rows] == expected  # the same as filtering the plain ranking by hand


def test_the_users_own_value_wins_over_the_prediction(root, cli):
    paths, _ = shop(root)
    cli("tag", "shop", "--learn", "category")
    with open_catalog(paths) as cat, cat.transaction():  # item 5 labelled 'shoe', predicted something else
        cat.set_metadata(5, {"category": "shoe", "category_pred": "bag", "category_prob": 0.9})
    rows = cli.json("search", "shop", "--like", "5", "--where", "category_pred = @category", "-k", "5", "-f", "json")
    assert rows and all(r["meta"]["category_pred"] == "shoe" for r in rows)


def test_field_references_fail_clearly(root, cli):
    shop(root)
    proc = cli("search", "shop", "like:3", "--where", "color = @color", check=False)
    assert proc.returncode == 2 and "item 3 (2.jpg) has no value of 'color', given or predicted" in proc.stderr
    proc = cli("search", "shop", "--like", "3", "--where", "season = @", check=False)
    assert proc.returncode == 2 and "expected a field name after '@'" in proc.stderr


def test_field_references_need_a_query_item(root):
    import stylesearch
    from stylesearch.query.filters import matching_ids, parse_filters

    paths, _ = shop(root)
    with pytest.raises(UserError, match="has no query item") as info, open_catalog(paths, readonly=True) as cat:
        matching_ids(cat, parse_filters(["season = @season"]))
    assert "like:ID" in info.value.hint and "--" not in info.value.message
    with pytest.raises(StyleSearchError, match="has no query item"):
        stylesearch.open("shop", root=root).search("red dress", where="season = @season")  # before any model loads


def test_mix_and_match_through_the_python_api(root):
    import stylesearch

    paths, _ = shop(root)
    ds = stylesearch.open("shop", root=root)
    reports = ds.learn("category")
    assert reports["category"]["accuracy"] > reports["category"]["majority_accuracy"]
    hits = ds.search(like=2, where=["category_pred != @category", "season = @season"], k=6)
    category = _like_values(paths, 2, "category")
    assert len(hits) == 6 and all(h.meta["category_pred"] != category and h.meta["season"] == "winter" for h in hits)
    quoted = ds.search(like=2, where="season = '@season'", k=3)
    assert quoted == []  # a quoted @ is text: no item has the season '@season'


def test_mix_and_match_through_the_server(root):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    paths, _ = shop(root)
    learn_fields(paths, "m", ["category"])
    client = TestClient(create_app(ServerConfig(root=str(root), preload=False)), base_url="http://127.0.0.1")
    body = {"likes": ["2"], "where": ["category_pred != @category", "season = @season"], "k": 5}
    r = client.post("/api/datasets/shop/search", json=body)
    assert r.status_code == 200, r.text
    rows = r.json()["rows"]
    category = _like_values(paths, 2, "category")
    assert len(rows) == 5 and all(row["meta"]["category_pred"] != category for row in rows)
    r = client.post("/api/datasets/shop/search", json={"terms": ["like:2"], "where": ["color = @color"]})
    assert r.status_code == 400 and "no value of 'color'" in r.json()["error"]
    similar = client.get("/api/datasets/shop/similar/2", params={"where": ["season != @season"], "k": 4})
    assert similar.status_code == 200 and all(row["meta"]["season"] == "summer" for row in similar.json()["rows"])


def test_a_list_value_compares_as_any_of_its_elements(root):
    from stylesearch.query.filters import parse_filters, resolve_refs
    from stylesearch.store.catalog import Item

    item = Item(4, "a.jpg", None, None, None, 64, 48, "ok")
    [same] = resolve_refs(parse_filters(["tags = @tags"]), item, {"tags": ["red", 3, True]})
    assert (same.op, same.values, same.texts) == ("in", ("red", 3, "true"), ("red", "3", "true"))
    [other] = resolve_refs(parse_filters(["tags != @tags"]), item, {"tags": ["red"]})
    assert (other.op, other.values) == ("!=", ("red",))
    [wide] = resolve_refs(parse_filters(["width >= @width"]), item, {})
    assert (wide.op, wide.values) == (">=", (64,))
    [nested] = resolve_refs(parse_filters(["brand in (acme, @maker.name)"]), item, {"maker": {"name": "Zed"}})
    assert nested.values == ("acme", "Zed")
    [huge] = resolve_refs(parse_filters(["price = @price"]), item, {"price": 10**30})
    assert huge.values == (1e30,)
    with pytest.raises(UserError, match="compares with one value"):
        resolve_refs(parse_filters(["price < @prices"]), item, {"prices": [1, 2]})
    with pytest.raises(UserError, match="is an object"):
        resolve_refs(parse_filters(["maker = @maker"]), item, {"maker": {"name": "Zed"}})


def test_json_report_carries_calibration_and_confusions(root, cli):
    shop(root)
    out = cli.json("tag", "shop", "--learn", "category", "--json")
    report = out["learned"]["category"]
    assert out["attributes"] == {}
    for key in ("accuracy", "accuracy_ci", "majority_accuracy", "majority_ci", "ece", "ece_uncalibrated",
                "temperature", "C", "confusion", "labelled", "classes", "written", "version", "space"):
        assert key in report
    assert json.dumps(report)  # plain data


# ---------------------------------------------------------------- embed and cron keep predictions current


@pytest.mark.slow
def test_embed_and_reindex_give_new_images_predictions(root, cli):
    from stylesearch.ingest.samples import write_samples

    from .conftest import make_dataset

    paths = make_dataset(root, "pics", 24)
    cli("embed", "pics", "-m", "stylesearch-tiny", "-p", "random")
    with open_catalog(paths) as cat, cat.transaction():
        for item in cat.items():
            cat.set_metadata(item.id, {"side": ["left", "right"][item.id % 2]})
    cli("tag", "pics", "--learn", "side")
    write_samples(paths.images / "more", 3, seed=3)
    embedded = cli.json("embed", "pics", "--json")
    assert embedded["embedded"] == 3 and embedded["predicted"] == {"side": 3} and embedded["stale_heads"] == []
    write_samples(paths.images / "later", 2, seed=4)
    reindexed = cli.json("reindex", "pics", "--json")
    assert reindexed["embedded"] == 2 and reindexed["predicted"] == {"side": 2}
    meta = metadata(paths)
    assert len(meta) == 29 and all(m["side_pred"] in ("left", "right") and 0 < m["side_prob"] <= 1
                                   for m in meta.values())
    with open_catalog(paths, readonly=True) as cat:
        new = [it.id for it in cat.items() if it.path.startswith(("more/", "later/"))]
    assert len(new) == 5 and all("side" not in meta[i] and meta[i]["side_prob"] < 1 for i in new)


def test_label_of_names_each_kind_of_value():
    from stylesearch.learn.attributes import label_of

    assert [label_of(v) for v in (True, False, " red ", 3, 2.5, None, "  ", {"a": 1})] == [
        ("true", "label"), ("false", "label"), ("red", "label"), (None, "number"), (None, "number"),
        (None, "missing"), (None, "other"), (None, "other")]


@pytest.mark.parametrize("rare, listed, more", [(10, 10, False), (11, 10, True)])
def test_rare_classes_are_listed_up_to_ten_then_an_ellipsis(rare, listed, more):
    from stylesearch.learn.heads import MIN_PER_CLASS, check_labels

    labels = ["common"] * MIN_PER_CLASS + [f"r{i:02d}" for i in range(rare)]
    with pytest.raises(UserError) as refused:
        check_labels("style", labels, 0)
    message = refused.value.message
    assert message.count(" (1)") == listed
    assert (" ... have fewer" in message) is more and "'r00' (1), 'r01' (1)" in message


def test_temperature_is_the_minimum_of_the_calibration_log_loss():
    from stylesearch.learn.heads import fit_temperature

    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 3))
    p = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    assert fit_temperature(3 * true_logits, y) == pytest.approx(3.0, rel=0.08)  # logits 3x too sharp: T = 3
    assert fit_temperature(true_logits / 2, y) == pytest.approx(0.5, rel=0.08)
    # rows of very different confidence: a likelihood pooled over all rows' classes, instead of one
    # normaliser per row, would fit 0.36 for 0.5 here
    logits = rng.normal(size=(6000, 5)) * np.where(rng.random(6000) < 0.5, 0.3, 8.0)[:, None]
    for true_t in (0.5, 2.0):
        p = np.exp(logits / true_t)
        p /= p.sum(axis=1, keepdims=True)
        labels = np.array([rng.choice(5, p=row) for row in p])
        assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.08)


def test_stratified_sample_keeps_each_class_share_and_a_floor():
    from stylesearch.learn.heads import _stratified_sample

    y = np.repeat([0, 1, 2], [900, 90, 10])
    rows = _stratified_sample(y, 100, 5, seed=1)
    assert np.bincount(y[rows]).tolist() == [90, 9, 5] and (np.diff(rows) > 0).all()
    assert rows.tolist() == _stratified_sample(y, 100, 5, seed=1).tolist()
    assert _stratified_sample(y[:50], 100, 5, seed=1).tolist() == list(range(50))  # under the limit: all


def test_fit_report_gives_the_temperature_to_four_places():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 8))
    labels = ["a", "b"] * 30
    x = np.stack([centres[i % 2] + rng.normal(0, 1.5, 8) for i in range(60)]).astype(np.float32)
    head, report = fit_head(x, labels, "kind")
    assert report["temperature"] == round(head.temperature, 4) and report["temperature"] != round(head.temperature)
