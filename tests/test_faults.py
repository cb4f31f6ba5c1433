"""Faults and hostile input: one bad file never blocks a dataset, nothing is lost, nothing leaks.

Permission cases need a user that permissions apply to: when the tests run as root they run
the step in a subprocess as `nobody` (setpriv), otherwise as the current user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from stylesearch.errors import UserError
from stylesearch.index.build import build_index
from stylesearch.ingest.samples import write_samples
from stylesearch.ingest.scan import scan, walk_images
from stylesearch.learn.judgments import parse_log_lines
from stylesearch.learn.metric import DiagonalMetric, save_metric
from stylesearch.store.catalog import open_catalog
from stylesearch.store.datasets import create_dataset, list_datasets
from stylesearch.store.paths import check_dataset_name, dataset_paths

from .conftest import unit_rows

NOBODY = 65534
ROOT = os.geteuid() == 0


def shared_dir() -> Path:
    """A folder another user can enter (pytest's tmp folders are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix="stylesearch-shared-"))
    path.chmod(0o755)
    return path


def run_as_other_user(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run python code as a user without root's permission bypass."""
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if ROOT else []
    if ROOT and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop privileges to test permissions")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
    env.update(HOME="/tmp", PYTHONPATH=str(Path(__file__).resolve().parent.parent), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([*prefix, sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=120)


def vector_dataset(root: Path, name: str = "vec", n: int = 30, dim: int = 16):
    """A dataset of items with vectors and a flat index, built without any model."""
    paths = dataset_paths(name, root)
    vectors = unit_rows(n, dim, seed=3)
    write_samples(paths.images, n)
    create_dataset(paths)
    with open_catalog(paths) as cat:
        scan(cat)
        hashes = [it.content_hash for it in cat.items()]
        with cat.transaction():
            cat.vectors.ensure_model("m", "m", "t", dim, "float32")
            cat.vectors.put("m", hashes, vectors[: len(hashes)], "float32")
    build_index(paths, "m", "flat")
    save_metric(paths, "m", DiagonalMetric(np.ones(dim)))
    return paths


SCAN_AS_USER = """
import json, sys
from stylesearch.store.catalog import open_catalog
from stylesearch.ingest.scan import scan
from stylesearch.store.paths import dataset_paths
paths = dataset_paths(sys.argv[2], sys.argv[1])
with open_catalog(paths) as cat:
    result = scan(cat)
    print(json.dumps({**result.as_dict(), "warnings": result.warnings,
                      "status": {it.path: it.status for it in cat.items(status=None)}}))
"""


def test_bad_file_names_and_unreadable_files_are_skipped_not_fatal():
    base = shared_dir()
    try:
        paths = dataset_paths("messy", base)
        write_samples(paths.images, 6)
        create_dataset(paths)
        good = next(paths.images.rglob("*.jpg"))
        shutil.copy(good, os.fsencode(paths.images) + b"/bad-\xff-name.jpg")
        locked = paths.images / "locked.jpg"
        shutil.copy(good, locked)
        if ROOT:
            subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(base)], check=True)
        locked.chmod(0)
        proc = run_as_other_user(SCAN_AS_USER, str(base), "messy")
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["new"] == 6 and out["unreadable"] == 2
        assert any("not valid UTF-8" in w for w in out["warnings"])
        assert any(w.startswith("locked.jpg: cannot be read") for w in out["warnings"])
        assert "locked.jpg" not in out["status"] and len(out["status"]) == 6
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unreadable_subfolder_keeps_its_items():
    base = shared_dir()
    try:
        paths = dataset_paths("sub", base)
        write_samples(paths.images, 10)
        create_dataset(paths)
        with open_catalog(paths) as cat:
            assert scan(cat).new == 10
        if ROOT:
            subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(base)], check=True)
        hidden = paths.images / "warm"
        hidden.chmod(0)
        proc = run_as_other_user(SCAN_AS_USER, str(base), "sub")
        hidden.chmod(0o755)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["deleted"] == 0 and out["unreadable"] == 1
        assert set(out["status"].values()) == {"ok"} and len(out["status"]) == 10
        assert any("warm: folder cannot be read" in w for w in out["warnings"])
    finally:
        shutil.rmtree(base, ignore_errors=True)


SEARCH_AS_USER = """
import sys
from stylesearch.cli.main import main
sys.argv = ["stylesearch", "--root", sys.argv[1], *sys.argv[2:]]
main()
"""


def test_another_user_can_search_a_read_only_shared_dataset():
    base = shared_dir()
    try:
        paths = vector_dataset(base)
        for file in paths.home.rglob("*"):  # files are made as normal tools make them (umask honoured)
            if file.is_file() and file.name != ".lock":
                assert file.stat().st_mode & 0o044 == 0o044, f"{file} is not readable by others"
        before = {p: p.stat().st_mtime_ns for p in paths.home.rglob("*")}
        for args in (["search", "vec", "--like", "1", "-k", "3", "--format", "json"], ["info", "vec", "--json"],
                     ["datasets", "--json"]):
            proc = run_as_other_user(SEARCH_AS_USER, str(base), *args)
            assert proc.returncode == 0, proc.stderr
            assert "readonly" not in proc.stderr
        rows = json.loads(run_as_other_user(SEARCH_AS_USER, str(base), "search", "vec", "--like", "1",
                                            "--format", "json").stdout)
        assert len(rows) == 10 and rows[0]["id"] != 1
        assert {p: p.stat().st_mtime_ns for p in paths.home.rglob("*")} == before
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_reader_connection_cannot_write(tmp_path):
    paths = vector_dataset(tmp_path)
    with open_catalog(paths, readonly=True) as cat:
        with pytest.raises(Exception, match="readonly"):
            cat.conn.execute("DELETE FROM items")
        assert len(cat.items()) == 30


def test_index_build_removes_orphans_of_crashed_builds(tmp_path):
    paths = vector_dataset(tmp_path)
    folder = paths.index_dir("m")
    for name in ("index-20200101T000000-000001.faiss", "members-20200101T000000-000001.npz",
                 ".index-x.faiss.tmp-abc.tmp", ".index.json.tmp-zz.tmp"):
        (folder / name).write_bytes(b"left over by a killed run")
    meta = build_index(paths, "m", "flat", full=True)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["index.json", meta["file"], meta["members"]])


def test_judgments_of_unexpected_shape_are_counted_not_fatal():
    good = {"id": "a", "anchor": "1.jpg", "left": "2.jpg", "right": "3.jpg", "choice": "left"}
    lines = [json.dumps(good), json.dumps({"undo": ["x"]}), json.dumps({**good, "id": {}}),
             json.dumps({**good, "id": "b", "choice": ["left"]}), json.dumps({**good, "id": "c", "left": 3}),
             json.dumps({**good, "id": "d", "left": "1.jpg"}), "[1, 2]", "null", "{bad", json.dumps({"undo": "a"})]
    contents = parse_log_lines(lines)
    assert contents.malformed == 8 and contents.undone == 1 and contents.judgments == []


def test_dataset_names_are_checked_to_the_true_end():
    for bad in ("demo\n", "demo\nx", "../x", ".hidden", "", "a/b"):
        with pytest.raises(UserError):
            check_dataset_name(bad)
    assert check_dataset_name("demo-1.v2_x") == "demo-1.v2_x"


def test_datasets_lists_the_others_when_one_catalog_is_broken(tmp_path, cli, root):
    vector_dataset(root, "fine", n=5)
    broken = dataset_paths("broken", root)
    broken.home.mkdir(parents=True)
    broken.catalog.write_bytes(b"this is not a database" * 100)
    rows = {r["name"]: r for r in list_datasets(root)}
    assert rows["fine"]["items"] == 5 and rows["fine"]["error"] is None
    assert str(broken.catalog) in rows["broken"]["error"]
    proc = cli("datasets")
    assert proc.returncode == 0 and "fine" in proc.stdout and "UNREADABLE" in proc.stdout
    assert "broken" in proc.stderr
    info = cli("info", "broken", check=False)
    assert info.returncode == 1 and str(broken.catalog) in info.stderr and "Traceback" not in info.stderr


def test_symlinked_folders_are_followed_once(tmp_path):
    outside = tmp_path / "outside"
    write_samples(outside, 4)
    images = tmp_path / "images"
    images.mkdir()
    (images / "linked").symlink_to(outside, target_is_directory=True)
    (outside / "loop").symlink_to(outside, target_is_directory=True)  # a loop must end
    found = walk_images(images)
    assert len(found) == 4 and all(p.parts[-3] == "linked" for p in found)
