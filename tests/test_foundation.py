"""Dataset store, catalog, CLI frame, error convention, lazy imports, completions."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stylesearch.errors import CatalogError, DatasetBusy, NotReady
from stylesearch.store.catalog import SCHEMA_VERSION, open_catalog
from stylesearch.store.files import append_jsonl, atomic_write_json, writer_lock
from stylesearch.store.paths import dataset_paths

from .conftest import make_dataset

HEAVY = ("torch", "open_clip", "faiss", "umap", "textual", "fastapi", "uvicorn", "ray", "onnxruntime", "numpy")
COMMANDS = ["datasets", "info", "demo", "download", "transform", "atlas", "embed", "index", "reindex",
            "search", "label", "train", "umap-export", "meta", "tag", "serve"]


def test_help_and_every_subcommand_help_import_nothing_heavy():
    script = (
        "import sys\n"
        "from stylesearch.cli.main import app\n"
        f"for args in [['--help']] + [[c, '--help'] for c in {COMMANDS!r}]:\n"
        "    try:\n"
        "        app(args, prog_name='stylesearch')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY="


def test_completion_request_imports_nothing_heavy(tmp_path):
    env = {**os.environ, "_STYLESEARCH_COMPLETE": "complete_bash", "COMP_WORDS": "stylesearch se",
           "COMP_CWORD": "1"}
    script = ("import sys\nfrom stylesearch.cli.main import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
              f"sys.stderr.write('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert "search" in proc.stdout
    assert proc.stderr.strip().endswith("HEAVY=")


def test_datasets_and_info_json(cli, root):
    make_dataset(root, "alpha", 4)
    rows = cli.json("datasets", "--json")
    assert [r["name"] for r in rows] == ["alpha"]
    assert rows[0]["items"] == 0  # not scanned yet
    info = cli.json("info", "alpha", "--json")
    assert info["name"] == "alpha"
    assert info["paths"]["images"].endswith("alpha/images")
    assert info["items"] == {"ok": 0, "deleted": 0, "corrupt": 0}
    human = cli("info", "alpha").stdout
    assert "dataset   alpha" in human


def test_root_option_overrides_environment(cli, tmp_path):
    other = tmp_path / "elsewhere"
    make_dataset(other, "beta", 2)
    rows = cli.json("--root", str(other), "datasets", "--json")
    assert [r["name"] for r in rows] == ["beta"]


def test_user_error_is_one_message_exit_2_no_traceback(cli):
    proc = cli("info", "nope", check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: No dataset named 'nope'")
    assert "Traceback" not in proc.stderr
    verbose = cli("--verbose", "info", "nope", check=False)
    assert "Traceback" in verbose.stderr and verbose.returncode == 2


def test_invalid_dataset_name_is_user_error(cli):
    proc = cli("info", "../etc", check=False)
    assert proc.returncode == 2 and "Invalid dataset name" in proc.stderr


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_append_jsonl_appends_whole_lines(tmp_path):
    log = tmp_path / "log.jsonl"
    for n in range(3):
        append_jsonl(log, {"n": n})
    assert [json.loads(line)["n"] for line in log.read_text().splitlines()] == [0, 1, 2]


def test_writer_lock_excludes_second_writer(tmp_path):
    paths = dataset_paths("locked", tmp_path)
    with writer_lock(paths):
        with pytest.raises(DatasetBusy) as info:
            with writer_lock(paths):
                pass
    assert info.value.exit_code == 75
    with writer_lock(paths):  # released again
        pass


def test_concurrent_reindex_exits_quickly_with_code_75(cli, root):
    paths = make_dataset(root, "busy", 2)
    with writer_lock(paths):
        start = time.monotonic()
        proc = cli("reindex", "busy", check=False)
        elapsed = time.monotonic() - start
    assert proc.returncode == 75
    assert "busy" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 30  # no model load, no waiting


def test_catalog_schema_version_and_newer_schema_refused(tmp_path):
    paths = dataset_paths("schema", tmp_path)
    with open_catalog(paths, create=True) as cat:
        assert cat.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert cat.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn = sqlite3.connect(paths.catalog)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CatalogError, match="newer"):
        open_catalog(paths)


def test_vectors_of_two_models_coexist(tmp_path):
    import numpy as np

    paths = dataset_paths("models", tmp_path)
    with open_catalog(paths, create=True) as cat:
        item = cat.upsert_item("a.jpg", size=1, mtime=1.0, content_hash="h1", status="ok")
        for key, dim in (("m1", 4), ("m2", 8)):
            cat.vectors.ensure_model(key, key, "tag", dim, "float32")
            cat.vectors.put(key, ["h1"], np.ones((1, dim)), "float32")
        ids1, v1 = cat.vectors.load("m1")
        ids2, v2 = cat.vectors.load("m2")
    assert ids1.tolist() == ids2.tolist() == [item]
    assert v1.shape == (1, 4) and v2.shape == (1, 8)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_shipped_completions_match_the_cli(shell):
    shipped = Path(__file__).parent.parent / "completions" / f"stylesearch.{shell}"
    env = {**os.environ, "_STYLESEARCH_COMPLETE": f"source_{shell}"}
    proc = subprocess.run([sys.executable, "-c", "from stylesearch.cli.main import main; main()"],
                          capture_output=True, text=True, env=env)
    assert proc.stdout.strip(), proc.stderr
    assert proc.stdout == shipped.read_text(), "regenerate with: python completions/generate.py"


def test_new_catalogs_use_pages_that_fit_vectors(tmp_path):
    from stylesearch.store.catalog import PAGE_SIZE

    paths = dataset_paths("pages", tmp_path)
    with open_catalog(paths, create=True) as cat:
        assert cat.conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 16384
        assert cat.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- store details that mutation testing found untested: listings, download records, metadata rows, appends, disk-full words, vectors by id ---

def test_dataset_and_model_listings_with_counts_and_a_damaged_catalog(tmp_path):
    from stylesearch.store.datasets import describe, list_datasets, list_models

    from .test_metadata_search import feed_dataset

    a, _ = feed_dataset(tmp_path, "a", n=6, seed=1, key="zeta")
    feed_dataset(tmp_path, "b", n=4, seed=2, key="zeta")
    with open_catalog(a) as cat, cat.transaction():
        cat.conn.execute("UPDATE items SET status='deleted' WHERE id IN (1, 2)")
    broken = dataset_paths("c", tmp_path)
    broken.home.mkdir(parents=True)
    broken.catalog.write_bytes(b"not a database at all" * 100)
    rows = {r["name"]: r for r in list_datasets(tmp_path)}
    assert rows["a"] == {"name": "a", "path": str(a.home), "items": 4, "deleted": 2, "corrupt": 0,
                         "models": ["zeta"], "error": None}
    assert rows["c"]["items"] is None and rows["c"]["error"] == f"Catalog {broken.catalog} cannot be opened (file is not a database)."
    assert describe("a", tmp_path)["items"]["deleted"] == 2
    models = list_models(["b", "a"], tmp_path)
    assert [(m["model_key"], m["model"], m["datasets"]) for m in models] == [("zeta", "m", ["b", "a"])]


def test_download_records_keep_every_field_and_count_attempts(tmp_path):
    with open_catalog(dataset_paths("dl", tmp_path), create=True) as cat, cat.transaction():
        cat.record_download("http://x/a.jpg", "failed", "timeout")
        cat.record_download("http://x/a.jpg", "ok", None, "a.jpg", "f" * 64)
        assert cat.download_record("http://x/a.jpg") == {"url": "http://x/a.jpg", "status": "ok", "reason": None,
                                                          "item_path": "a.jpg", "content_hash": "f" * 64,
                                                          "attempts": 2}
        assert cat.download_record("http://x/none.jpg") is None


def test_live_ids_where_binds_its_arguments_and_merged_metadata_is_filterable(tmp_path):
    with open_catalog(dataset_paths("meta", tmp_path), create=True) as cat, cat.transaction():
        assert cat.metadata_fields() == {}
        ids = [cat.upsert_item(f"{n}.jpg", content_hash=f"{n:064d}", status="ok", width=10 * n) for n in range(4)]
        assert cat.live_ids_where("width >= ?", [20]) == {ids[2], ids[3]}
        cat.merge_metadata_many({ids[0]: {"tags": ["x", True]}, ids[1]: {"tags": ["y"]}})
        assert cat.live_ids_where("id IN (SELECT item_id FROM item_meta WHERE key=? AND value_text=?)",
                                  ["tags", "true"]) == {ids[0]}
        assert cat.metadata_fields() == {"tags": 2}


def test_metadata_rows_and_values_of_nested_and_boolean_fields():
    from stylesearch.store.meta_values import meta_rows, meta_value

    assert meta_rows({"ok": [True, False], "n": 2, "d": {"e": "x"}}) == [
        ("ok", "true", None), ("ok", "false", None), ("n", "2", 2.0), ("d.e", "x", None)]
    assert meta_value({"a": {"b": 1}}, "a.b") == 1
    assert meta_value({"a": 5}, "a.b") is None and meta_value({"a": {"c": 1}}, "a.b") is None


def test_an_append_after_an_unfinished_line_starts_a_new_one(tmp_path):
    import json

    from stylesearch.store.files import append_jsonl

    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"cut": ')
    append_jsonl(log, {"a": 1})
    assert log.read_bytes() == b'{"cut": \n' + json.dumps({"a": 1}).encode() + b"\n"


def test_disk_full_in_every_wording_and_temp_files_counted(tmp_path):
    import errno

    from stylesearch.store.files import TEMP_MARK, is_disk_full, remove_temp_files_of

    assert is_disk_full(OSError(errno.ENOSPC, "x")) and is_disk_full(OSError(errno.EDQUOT, "x"))
    assert is_disk_full(RuntimeError("Quota exceeded")) and is_disk_full(RuntimeError("database or disk is full"))
    assert not is_disk_full(RuntimeError("permission denied")) and not is_disk_full(OSError(errno.EACCES, "x"))
    target = tmp_path / "map.png"
    for n in range(3):
        (tmp_path / f".map.png{TEMP_MARK}{n}").write_bytes(b"")
    (tmp_path / "other.png").write_bytes(b"")
    assert remove_temp_files_of(target) == 3 and [p.name for p in tmp_path.iterdir()] == ["other.png"]
    assert remove_temp_files_of(tmp_path / "missing" / "x.png") == 0


def test_vectors_for_ids_in_the_order_asked(tmp_path):
    import numpy as np

    from .test_metadata_search import feed_dataset

    paths, vectors = feed_dataset(tmp_path, "v", n=5, seed=4)
    with open_catalog(paths) as cat:
        ids, rows = cat.vectors.load_for_ids("m", [4, 99, 2, 5])
        assert ids.tolist() == [4, 2, 5] and np.allclose(rows, vectors[[3, 1, 4]])
        empty_ids, empty = cat.vectors.load_for_ids("m", [])
        assert empty_ids.dtype == np.int64 and empty.shape == (0, 16) and empty.dtype == np.float32


def test_the_user_cache_folder_defaults_under_home(tmp_path, monkeypatch):
    from stylesearch.store.paths import user_cache_dir

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("STYLESEARCH_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert str(user_cache_dir()).startswith(str(tmp_path / ".cache"))


# ---------------------------------------------------------------- store: mutants the suite let live


def _raised(error_type, call, *args, **kwargs):
    with pytest.raises(error_type) as raised:
        call(*args, **kwargs)
    return raised.value


def _vectors_dataset(tmp_path, n=5, dim=4, name="v"):
    import numpy as np

    from .conftest import vector_catalog

    vectors = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    return vector_catalog(tmp_path, name, vectors), vectors


def test_catalog_refusals_carry_their_dataset_and_fix(tmp_path):
    from stylesearch.errors import ItemNotFound

    paths = dataset_paths("d", tmp_path)
    paths.home.mkdir(parents=True)
    paths.catalog.write_bytes(b"")
    empty = _raised(CatalogError, open_catalog, paths, readonly=True)
    assert (empty.dataset, empty.step) == ("d", "embed")
    assert empty.hint == "Restore it from a backup, or embed the images again to rebuild it."
    paths.catalog.write_bytes(b"not a database at all" * 100)
    broken = _raised(CatalogError, open_catalog, paths)
    assert broken.hint == "Restore it from a backup, or move it away and embed the images again."
    paths.catalog.unlink()
    with open_catalog(paths, create=True) as cat:
        cat.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    newer = _raised(CatalogError, open_catalog, paths, readonly=True)
    assert newer.hint == "Upgrade stylesearch to open this dataset." and newer.dataset == "d"
    made = make_dataset(tmp_path, "items", 2)
    with open_catalog(made, readonly=True) as cat:
        missing = _raised(ItemNotFound, cat.item, "no/such.jpg")
    assert missing.hint == "Use an item id or catalog path, as search results show them."


def test_a_zero_byte_catalog_is_made_new_with_large_pages(tmp_path):
    paths = dataset_paths("z", tmp_path)
    paths.home.mkdir(parents=True)
    paths.catalog.write_bytes(b"")
    with open_catalog(paths, create=True) as cat:
        assert cat.conn.execute("PRAGMA page_size").fetchone()[0] == 16384
        assert cat.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_upsert_keeps_only_item_columns_and_never_takes_an_id(tmp_path):
    paths = dataset_paths("u", tmp_path)
    with open_catalog(paths, create=True) as cat, cat.transaction():
        first = cat.upsert_item("a.jpg", content_hash="a" * 64, status="ok", id=999, colour="red")
        second = cat.upsert_item("b.jpg", content_hash="b" * 64, status="ok")
    assert (first, second) == (1, 2)
    with open_catalog(paths, readonly=True) as cat:
        assert [cat.item("1").path, cat.item("2").path] == ["a.jpg", "b.jpg"]


def test_listings_count_exactly_and_sort_models_by_key(tmp_path):
    import numpy as np

    from stylesearch.store.datasets import adoptable_images, list_datasets, list_models

    paths, vectors = _vectors_dataset(tmp_path)
    with open_catalog(paths) as cat, cat.transaction():
        cat.vectors.ensure_model("a-second", "a", "t", 4, "float32")  # made later, sorts first by key
        cat.vectors.put("a-second", [f"{i:064d}" for i in range(5)], vectors, "float32")
        cat.vectors.ensure_model("none-yet", "n", "t", 4, "float32")
    with open_catalog(paths, readonly=True) as cat:
        assert cat.vectors.sample("none-yet", 3).shape == (0, 4)
    with open_catalog(paths) as cat, cat.transaction():
        cat.conn.execute("DELETE FROM models WHERE model_key='none-yet'")
    row = next(r for r in list_datasets(tmp_path) if r["name"] == "v")
    assert (row["items"], row["deleted"], row["corrupt"]) == (5, 0, 0)
    assert [m["model_key"] for m in list_models("v", tmp_path)] == ["a-second", "m"]
    with open_catalog(paths, readonly=True) as cat:
        assert [m["vectors"] for m in cat.vectors.models(with_counts=True)] == [5, 5]
        assert [m["vectors"] for m in cat.vectors.models()] == [None, None]  # not counted unless asked
        assert cat.vectors.model("m")["created_at"] and cat.vectors.model("m")["dim"] == 4
        ids, hashes, empty = cat.vectors.load_with_hashes("nope")
        assert (ids.shape, hashes, empty.shape) == ((0,), [], (0, 0))
        chunks = list(cat.vectors.iterate("m", chunk=2))
        assert [c[0].tolist() for c in chunks] == [[1, 2], [3, 4], [5]]
        assert {c[0].dtype for c in chunks} == {np.dtype(np.int64)}  # FAISS takes int64 ids only
        np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), vectors)
        assert cat.vectors.sample("m", 3, seed=1).shape == (3, 4) and cat.vectors.sample("m", 9).shape == (5, 4)
        not_ready = _raised(NotReady, cat.vectors.iterate("other").__next__)
        assert not_ready.hint == "Embed the dataset first."
        no_vector = _raised(NotReady, cat.vectors.of_item, "other", cat.item("1"))
        assert no_vector.message == "Item '0.jpg' has no embedding for model 'other'."
        assert (no_vector.hint, no_vector.step, no_vector.dataset) == ("Embed the dataset first.", "embed", "v")
        assert [(m["model_key"], m["dim"], m["dtype"]) for m in cat.vectors.models()] == [
            ("a-second", 4, "float32"), ("m", 4, "float32")]
        assert cat.vectors.hashes("m") == {f"{i:064d}" for i in range(5)} and cat.vectors.hashes("x") == set()
        ids, loaded = cat.vectors.load("m")
        assert ids.dtype == np.int64 and ids.tolist() == [1, 2, 3, 4, 5]
        unknown_ids, unknown = cat.vectors.load_for_ids("x", [1, 2])
        assert (unknown_ids.shape, unknown.shape) == ((0,), (0, 0))
    other = dataset_paths("fresh", tmp_path)
    assert not adoptable_images(other)  # no folder
    other.images.mkdir(parents=True)
    assert not adoptable_images(other)  # an empty folder
    (other.images / "a.jpg").write_bytes(b"x")
    assert adoptable_images(other)


def test_json_files_are_sorted_two_space_and_stale_temps_of_subfolders_stay(tmp_path):
    from stylesearch.store.files import TEMP_MARK, read_json, remove_stale_temp_files

    atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert read_json(tmp_path / "a.json") == {"a": [1, 2], "b": 1} and read_json(tmp_path / "none", 7) == 7
    (tmp_path / "sub").mkdir()
    for folder in (tmp_path, tmp_path / "sub"):
        (folder / f".x{TEMP_MARK}1").write_text("half")
    assert remove_stale_temp_files(tmp_path) == 1 and (tmp_path / "sub" / f".x{TEMP_MARK}1").exists()
    assert remove_stale_temp_files(tmp_path, recursive=True) == 1


def test_a_short_append_is_cut_back_to_the_last_whole_line(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, [{"n": 1}])
    before = log.read_bytes()
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:3]))  # the disk fills mid-line
    from stylesearch.errors import DiskFull

    with pytest.raises(DiskFull):
        append_jsonl(log, [{"n": 2}])
    monkeypatch.undo()
    assert log.read_bytes() == before


def test_dataset_names_and_layout(tmp_path):
    from stylesearch.errors import DatasetNotFound, UserError
    from stylesearch.store.paths import check_dataset_name, existing_dataset

    bad = _raised(UserError, check_dataset_name, ".hidden")
    assert bad.hint == "Use letters, digits, '.', '_' or '-' (at most 100 characters, not starting with '.')."
    missing = _raised(DatasetNotFound, existing_dataset, "nope", tmp_path)
    assert missing.message == f"No dataset named 'nope' under {tmp_path}."
    paths = dataset_paths("d", tmp_path)
    assert paths.metric_dir("m") == paths.home / "metric" / "m"
    names = ["index-1.faiss", "members-1.npz", "index-1.npz", "members-1.faiss", "index-1/../../x.faiss", None,
             "refine-1.npy", "refine-1/../x.npy"]
    assert [paths.is_index_version_name(n) for n in names] == [True, True] + [False] * 6
    assert [paths.is_refine_store_name(n) for n in names] == [False] * 6 + [True, False]


def test_grey_images_of_every_depth_become_8_bit():
    import numpy as np
    from PIL import Image

    from stylesearch.store.images import to_rgb

    wide = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 100, 255]
    floats = Image.fromarray(np.array([[0.0, 0.5, np.inf, np.nan]], dtype=np.float32))
    assert np.asarray(to_rgb(floats))[0, :, 0].tolist() == [0, 128, 128, 0]  # inf clipped to the top, NaN lowest
    unknown = Image.fromarray(np.full((1, 2), np.nan, dtype=np.float32))
    assert np.asarray(to_rgb(unknown))[0, :, 0].tolist() == [0, 0]
    big = Image.fromarray(np.array([[-10, 0, 100000]], dtype=np.int32))
    assert np.asarray(to_rgb(big))[0, :, 0].tolist() == [0, 0, 255]
    premultiplied = Image.new("La", (1, 1), (200, 0))  # fully transparent: white
    assert np.asarray(to_rgb(premultiplied))[0, 0].tolist() == [255, 255, 255]
