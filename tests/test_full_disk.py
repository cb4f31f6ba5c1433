"""Nothing lost on a full disk: appends are whole lines or nothing, every writer keeps the previous state
and says "disk full" with the path in one line. Real full disks come from a small tmpfs (root only);
a short write is also simulated, so the append rule is checked anywhere."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from stylesearch.errors import DiskFull
from stylesearch.ingest.samples import write_samples
from stylesearch.store.catalog import open_catalog
from stylesearch.store.files import append_jsonl, atomic_write_json

from .conftest import image_dataset_with_vectors


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs, filled to the last byte by `fill()`, emptied again by `free()`."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    yield Disk(mount)
    subprocess.run(["umount", "-l", str(mount)], check=False)


class Disk:
    def __init__(self, mount: Path):
        self.mount = mount
        self.filler = mount / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 16, 4096, 512, 64, 1):
                try:
                    while os.write(fd, b"\0" * size):
                        pass
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


def judgment(n: int) -> dict:
    return {"id": uuid.uuid4().hex, "anchor": f"a{n}.jpg", "left": "l.jpg", "right": "r.jpg", "choice": "left",
            "note": "x" * 9000}  # more than the free end of a page


def whole_lines(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # raises on a half line


def test_an_append_on_a_full_disk_is_a_whole_line_or_nothing(small_disk):
    log = small_disk.mount / "triplets.jsonl"
    first = [judgment(n) for n in range(2)]
    for record in first:
        append_jsonl(log, record)
    before = log.read_bytes()
    small_disk.fill()
    with pytest.raises(DiskFull) as caught:
        append_jsonl(log, judgment(2))
    assert log.read_bytes() == before
    assert caught.value.message.startswith("Disk full: could not write") and str(log) in caught.value.message
    small_disk.free()
    append_jsonl(log, judgment(3))
    assert [r["anchor"] for r in whole_lines(log)] == ["a0.jpg", "a1.jpg", "a3.jpg"]


def test_a_short_write_is_taken_back(tmp_path, monkeypatch):
    log = tmp_path / "triplets.jsonl"
    append_jsonl(log, judgment(0))
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:17]))  # the disk filled mid-line
    with pytest.raises(DiskFull):
        append_jsonl(log, judgment(1))
    monkeypatch.setattr(os, "write", real_write)
    append_jsonl(log, judgment(2))
    assert [r["anchor"] for r in whole_lines(log)] == ["a0.jpg", "a2.jpg"]


def test_a_line_cut_by_an_earlier_crash_never_swallows_the_next(tmp_path):
    from stylesearch.learn.judgments import read_log

    log = tmp_path / "triplets.jsonl"
    append_jsonl(log, judgment(0))
    with open(log, "a") as fh:
        fh.write('{"id": "cut", "anch')  # a crash mid-line, by an older writer
    append_jsonl(log, judgment(1))
    lines = log.read_text().splitlines()
    assert json.loads(lines[-1])["anchor"] == "a1.jpg" and lines[1] == '{"id": "cut", "anch'
    assert read_log(log).malformed == 1


def test_atomic_writes_keep_the_previous_file_and_leave_no_temp(small_disk):
    target = small_disk.mount / "index.json"
    atomic_write_json(target, {"version": 1})
    small_disk.fill()
    with pytest.raises(DiskFull) as caught:
        atomic_write_json(target, {"version": 2, "pad": "y" * 100_000})
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(p.name for p in small_disk.mount.iterdir()) == ["filler", "index.json"]
    assert str(target) in caught.value.message


def vector_dataset(home_root: Path, count: int):
    return image_dataset_with_vectors(home_root, "full", count)[0]


def test_catalog_index_and_thumbnail_writers_say_disk_full_and_keep_state(small_disk, cli):
    from stylesearch.index.build import build_index
    from stylesearch.ingest.scan import scan

    paths = vector_dataset(small_disk.mount, 12)
    first = build_index(paths, "m", kind="flat")
    sidecar = paths.index_sidecar("m").read_bytes()
    write_samples(paths.images / "more", 30)
    small_disk.fill()
    with open_catalog(paths) as cat:
        with pytest.raises(DiskFull) as caught:
            scan(cat)
        assert str(paths.catalog) in caught.value.message
        assert len(cat.items()) == 12  # the transaction was rolled back, the catalog is as it was
    with pytest.raises(DiskFull):
        build_index(paths, "m", kind="flat", full=True)
    assert paths.index_sidecar("m").read_bytes() == sidecar and first["count"] == 12
    proc = cli("--root", str(small_disk.mount), "transform", "full", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: Disk full: could not write ") and "Traceback" not in proc.stderr
    assert "Errno" not in proc.stderr and "OperationalError" not in proc.stderr
    small_disk.free()
    with open_catalog(paths) as cat:
        assert scan(cat).new == 30


def test_server_judgment_on_a_full_disk_is_507_and_the_log_stays_whole(small_disk):
    from fastapi.testclient import TestClient

    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    paths = vector_dataset(small_disk.mount, 6)
    client = TestClient(create_app(ServerConfig(root=str(small_disk.mount), preload=False)),
                        base_url="http://127.0.0.1")
    with open_catalog(paths) as cat:
        a, b, c, d = (it.path for it in cat.items()[:4])

    def post(anchor):
        return client.post("/api/triplets", json={"dataset": "full", "anchor": anchor, "left": b, "right": c,
                                                  "choice": "left"})
    assert post(a).status_code == 200
    small_disk.fill()
    recorded = [a]
    for _ in range(100):  # the log's last page has room for a few more lines, then the disk is full
        response = post(d)
        if response.status_code != 200:
            break
        recorded.append(d)
    assert response.status_code == 507 and response.json()["error"].startswith("Disk full: could not write")
    assert [r["anchor"] for r in whole_lines(paths.triplets)] == recorded
    small_disk.free()
    assert post(a).status_code == 200
    assert [r["anchor"] for r in whole_lines(paths.triplets)] == recorded + [a]
