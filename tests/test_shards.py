"""Webdataset tar shards (img2dataset output) as image sources, read in place."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from stylesearch.ingest.samples import render
from stylesearch.ingest.scan import scan
from stylesearch.ingest.transform import TransformOptions, transform_dataset
from stylesearch.store.catalog import open_catalog
from stylesearch.store.datasets import create_dataset
from stylesearch.store.images import load_rgb
from stylesearch.store.paths import dataset_paths


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    render("stripes", "warm", seed, (64, 48)).save(buf, format="JPEG")
    return buf.getvalue()


def write_shard(path, keys, broken: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for n, key in enumerate(keys):
            files = {f"{key}.jpg": b"not a jpeg" if key == broken else jpeg(n),
                     f"{key}.json": json.dumps({"url": f"https://x/{key}", "width": 64, "similarity": 0.3}).encode(),
                     f"{key}.txt": f"caption of {key}".encode()}
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_shard_members_become_items_with_metadata_and_captions(tmp_path):
    paths = dataset_paths("shards", tmp_path)
    create_dataset(paths)
    write_shard(paths.images / "shards" / "00000.tar", ["000000000", "000000001", "000000002"], broken="000000002")
    with open_catalog(paths) as cat:
        first = scan(cat)
        items = {it.path: it for it in cat.items(status=None)}
        meta = cat.metadata([it.id for it in items.values()])
    assert (first.new, first.corrupt) == (3, 1)
    item = items["shards/00000.tar#000000001.jpg"]
    assert item.status == "ok" and item.caption == "caption of 000000001" and (item.width, item.height) == (64, 48)
    assert meta[item.id]["key"] == "000000001" and meta[item.id]["url"] == "https://x/000000001"
    member = paths.item_file(item.path)
    assert load_rgb(member).size == (64, 48) and str(member).endswith("00000.tar#000000001.jpg")
    with open_catalog(paths) as cat:
        again = scan(cat)
    assert (again.new, again.unchanged, again.deleted) == (0, 3, 0)  # the shard is not read again
    (paths.images / "shards" / "00000.tar").unlink()
    with open_catalog(paths) as cat:
        assert scan(cat).deleted == 3


def test_thumbnails_from_shard_members(tmp_path):
    paths = dataset_paths("thumbs", tmp_path)
    create_dataset(paths)
    write_shard(paths.images / "00001.tar", ["a", "b"])
    result = transform_dataset(paths, TransformOptions(max_side=32, workers=1))
    assert result.made == 2 and result.failed == 0
    assert (paths.thumbs / "00001.tar#a.jpg").exists()


def test_truncated_shard_keeps_what_was_catalogued(tmp_path):
    paths = dataset_paths("trunc", tmp_path)
    create_dataset(paths)
    shard = paths.images / "00002.tar"
    write_shard(shard, ["a", "b", "c"])
    with open_catalog(paths) as cat:
        assert scan(cat).new == 3
    shard.write_bytes(shard.read_bytes()[:700])  # cut inside the first member
    with open_catalog(paths) as cat:
        result = scan(cat)
        statuses = {it.path: it.status for it in cat.items(status=None)}
    assert result.deleted == 0 and result.unreadable == 1
    assert list(statuses.values()) == ["ok", "ok", "ok"]


def test_member_paths_split_after_the_first_tar(tmp_path):
    from stylesearch.store.shards import split_member_path

    assert split_member_path("batch#2/00000.tar#000.png") == ("batch#2/00000.tar", "000.png")
    assert split_member_path("a.TAR#x#y.jpg") == ("a.TAR", "x#y.jpg")
    assert split_member_path("photo#1.jpg") is None
    paths = dataset_paths("hash", tmp_path)
    create_dataset(paths)
    write_shard(paths.images / "batch#2" / "00000.tar", ["k"])
    with open_catalog(paths) as cat:
        assert scan(cat).new == 1
        item = cat.items()[0]
    assert load_rgb(paths.item_file(item.path)).size == (64, 48)


def test_catalog_paths_have_no_dot_dot(tmp_path):
    from stylesearch.ingest.scan import relative_name

    images = tmp_path / "images"
    assert relative_name(images, images / "a" / ".." / "b.jpg") == "b.jpg"
    outside = relative_name(images, images / ".." / "elsewhere" / "c.jpg")
    assert outside == str(tmp_path / "elsewhere" / "c.jpg")


def _tar(path, members: dict) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_sidecars_give_metadata_and_captions_and_odd_ones_are_survived(tmp_path):
    from stylesearch.store.shards import ShardReport, read_shard

    shard = tmp_path / "00000.tar"
    _tar(shard, {"dir/a.jpg": jpeg(0), "dir/a.json": b'{"caption": "from json", "w": 1}',
                 "dir/b.jpg": jpeg(1), "dir/b.json": b"[1, 2]", "dir/b.txt": b"caf\xff bytes ",
                 "dir/c.jpg": jpeg(2), "dir/c.json": b"{" * 5000,
                 "dir/d.jpg": jpeg(3), "dir/d.json": b'{"caption": "na\xefve"}'})  # Latin-1 in a JSON sidecar
    records = list(read_shard(shard, ShardReport()))
    assert [(r.member, r.key, r.meta, r.caption) for r in records] == [
        ("dir/a.jpg", "a", {"caption": "from json", "w": 1, "key": "a"}, "from json"),
        ("dir/b.jpg", "b", {"key": "b"}, "caf\ufffd bytes"),
        ("dir/c.jpg", "c", {"key": "c"}, None),
        ("dir/d.jpg", "d", {"caption": "na\ufffdve", "key": "d"}, "na\ufffdve")]


def test_a_member_cut_short_under_the_reader_names_its_shard(tmp_path, monkeypatch):
    from stylesearch.store import shards

    shard = tmp_path / "00000.tar"
    _tar(shard, {"a.jpg": jpeg(0)})
    member = shards.ShardMember(shard, "a.jpg")
    assert member.read_bytes() == jpeg(0)
    offset, size = shards.shard_index(str(shard), *member._stamp())["a.jpg"]
    monkeypatch.setattr(shards, "shard_index", lambda *stamp: {"a.jpg": (offset, shard.stat().st_size)})
    with pytest.raises(OSError) as cut:
        member.read_bytes()
    assert str(cut.value) == f"{member}: shard truncated"


def test_sidecars_over_their_limit_are_skipped_but_images_of_that_size_are_read(tmp_path, monkeypatch):
    from stylesearch.store import shards

    monkeypatch.setattr(shards, "MAX_SIDECAR_BYTES", 2000)
    big_image = jpeg(0) + b"\0" * 3000  # JPEG decoders ignore what follows the end marker
    shard = tmp_path / "00000.tar"
    _tar(shard, {"a.jpg": big_image, "a.json": b'{"pad": "' + b"x" * 2100 + b'"}', "a.txt": b"kept"})
    report = shards.ShardReport()
    records = list(shards.read_shard(shard, report))
    assert [(r.member, r.meta, r.caption, len(r.data)) for r in records] == [("a.jpg", {"key": "a"}, "kept",
                                                                                len(big_image))]
    assert report.broken == ["member 'a.json': declares 2,111 bytes, over the 2,000-byte limit; skipped"]
    assert shards.ShardMember(shard, "a.jpg").exists() and not shards.ShardMember(shard, "b.jpg").exists()
