"""Crash safety of download: leftover temp files, files renamed just before a crash, and a download
killed with SIGKILL at random moments, then rerun to completion."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from stylesearch.ingest.download import DownloadOptions, download
from stylesearch.ingest.scan import scan
from stylesearch.ingest.sources import Entry
from stylesearch.store.catalog import open_catalog
from stylesearch.store.files import TEMP_MARK
from stylesearch.store.paths import dataset_paths

from .test_download import Server

OPTIONS = DownloadOptions(workers=4, retries=0, timeout=5.0)


@pytest.fixture
def server():
    s = Server(count=20)
    yield s
    s.close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(folder) -> set[str]:
    """Every file below `folder`, hidden ones included, as paths relative to it."""
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names}


def _live_items(paths) -> dict[str, str]:
    with open_catalog(paths) as cat:
        return {item.path: item.content_hash for item in cat.items()}


def test_leftover_temp_files_are_removed_at_the_start_of_a_run(tmp_path, server):
    paths = dataset_paths("temps", tmp_path)
    download(paths, [Entry(server.url + "/img/0.jpg", "a")], OPTIONS)
    (paths.images / "sub").mkdir()
    leftovers = [paths.images / f".b.jpg{TEMP_MARK}x1y2.tmp", paths.images / "sub" / f".c.png{TEMP_MARK}z.tmp"]
    for file in leftovers:
        file.write_bytes(b"half an image")
    result = download(paths, [Entry(server.url + "/img/1.jpg", "b")], OPTIONS)
    assert result.ok == 1 and not any(f.exists() for f in leftovers)
    assert _files(paths.images) == {"a.jpg", "b.jpg"}


def test_file_renamed_just_before_a_crash_is_adopted_not_twinned(tmp_path, server):
    paths = dataset_paths("adopt", tmp_path)
    download(paths, [], OPTIONS)  # creates the dataset
    (paths.images / "pic0.jpg").write_bytes(server.images[0])  # renamed into place, never committed
    (paths.images / "other-name.jpg").write_bytes(server.images[1])  # likewise, under another id
    entries = [Entry(server.url + "/img/0.jpg", "pic0"), Entry(server.url + "/img/1.jpg", "pic1")]
    result = download(paths, entries, OPTIONS)
    assert result.ok == 2 and result.duplicates == 0
    assert _files(paths.images) == {"pic0.jpg", "other-name.jpg"}  # no pic0-<hex>.jpg twin, no pic1.jpg copy
    assert _live_items(paths) == {"pic0.jpg": _sha(server.images[0]), "other-name.jpg": _sha(server.images[1])}
    with open_catalog(paths) as cat:
        assert cat.item("pic0.jpg").source_url == server.url + "/img/0.jpg"
        assert cat.download_record(server.url + "/img/1.jpg")["item_path"] == "other-name.jpg"


def test_other_content_under_a_taken_name_still_gets_its_own_file(tmp_path, server):
    paths = dataset_paths("twins", tmp_path)
    entries = [Entry(server.url + "/img/2.jpg", "same"), Entry(server.url + "/img/3.jpg", "same")]
    result = download(paths, entries, DownloadOptions(workers=1, retries=0, timeout=5.0))
    assert result.ok == 2
    names = _files(paths.images)
    assert len(names) == 2 and "same.jpg" in names
    twin = (names - {"same.jpg"}).pop()
    assert twin.startswith("same-") and twin.endswith(".jpg")


# The child widens the two crash windows (temp file written but not renamed; file renamed but its
# catalog rows not committed) by sleeping inside fsync and after rename, so that random kills land
# in them often; the code paths themselves are the real ones.
CHILD = """
import json, os, sys, time
from pathlib import Path
real_replace, real_fsync = os.replace, os.fsync
def slow_replace(src, dst):
    real_replace(src, dst)
    time.sleep(0.02)
def slow_fsync(fd):
    time.sleep(0.01)
    real_fsync(fd)
os.replace, os.fsync = slow_replace, slow_fsync
from stylesearch.ingest.download import DownloadOptions, download
from stylesearch.ingest.sources import Entry
from stylesearch.store.paths import DatasetPaths
cfg = json.loads(sys.argv[1])
print("ready", flush=True)
download(DatasetPaths(Path(cfg["home"])), [Entry(**e) for e in cfg["entries"]],
         DownloadOptions(workers=4, retries=0, timeout=5.0))
"""


def _kill_at_random_moments(paths, entries, rounds: int, rng: random.Random) -> list[int]:
    cfg = json.dumps({"home": str(paths.home), "entries": [dataclasses.asdict(e) for e in entries]})
    codes = []
    for _ in range(rounds):
        child = subprocess.Popen([sys.executable, "-c", CHILD, cfg], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.5))
            child.send_signal(signal.SIGKILL)
        finally:
            codes.append(child.wait(timeout=30))
            child.stdout.close()
    return codes


def test_download_killed_at_random_moments_then_rerun_leaves_one_item_per_content(tmp_path, server):
    server.delay = 0.01
    paths = dataset_paths("killed", tmp_path)
    entries = [Entry(f"{server.url}/img/{n}.jpg", f"pic{n}", None, {"n": n}, f"g{n // 2}", n % 2 + 1)
               for n in range(16)]
    entries += [Entry(f"{server.url}/img/{n}.jpg?copy", f"copy{n}", None, {"copied": True})
                for n in range(4)]  # same content, other id
    entries += [Entry(f"{server.url}/img/{n}.jpg", "same", None, {"n": n}) for n in (16, 17)]  # same id, other content
    contents = {_sha(server.images[n]): n for n in range(18)}
    codes = _kill_at_random_moments(paths, entries, rounds=5, rng=random.Random(7))
    assert -signal.SIGKILL in codes  # at least one run really was killed mid-way

    result = download(paths, entries, OPTIONS)
    assert result.failed == 0
    with sqlite3.connect(paths.catalog) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        statuses = dict(conn.execute("SELECT url, status FROM downloads").fetchall())
    assert statuses == {e.url: "ok" for e in entries}
    items = _live_items(paths)
    assert sorted(items.values()) == sorted(contents)  # exactly one item per distinct content
    assert _files(paths.images) == set(items)  # no uncatalogued file, no temp file left
    assert all(_sha((paths.images / p).read_bytes()) == h for p, h in items.items())
    with open_catalog(paths) as cat:
        rescan = scan(cat)  # what a later embed would find: nothing new, so no duplicate items
        live = cat.items()
        meta = cat.metadata(item.id for item in live)
    assert (rescan.new, rescan.changed, rescan.deleted, rescan.unchanged) == (0, 0, 0, 18)
    for item in live:  # every item has its rows' metadata, whichever run stored it
        n = contents[item.content_hash]
        grouped = {"position": n % 2 + 1} if n < 16 else {}
        assert meta[item.id] == {"n": n, **grouped, **({"copied": True} if n < 4 else {})}, item
        assert item.group_id == (f"g{n // 2}" if n < 16 else None)
