"""A dataset is a boundary: hostile shard member names, catalog rows, links and manifests never make
a writer touch, or the server send, a file outside the dataset; shard members are read within bounds."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from stylesearch.errors import PathRefused
from stylesearch.ingest.samples import render
from stylesearch.ingest.scan import scan
from stylesearch.ingest.transform import TransformOptions, transform_dataset
from stylesearch.maps.atlas import AtlasOptions, build_atlas
from stylesearch.store.catalog import open_catalog
from stylesearch.store.datasets import create_dataset
from stylesearch.store.paths import dataset_paths
from stylesearch.store.shards import safe_member_name


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    render("dots", "cool", seed, (40, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def member_bytes(name: str, data: bytes = b"", size: int | None = None) -> bytes:
    """A tar member's header (declaring `size`, default the data's) and its data padded to 512 bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    return info.tobuf() + data + bytes(-len(data) % 512)


def snapshot(folder: Path, skip: Path) -> dict[str, bytes]:
    """Every file below `folder` (outside `skip`) with its content."""
    return {str(p): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.is_symlink() and skip not in p.parents}


HOSTILE_NAMES = ["a/../../../../x/holiday.png", "/tmp/absolute-evil.png", "../up.png", "..", "", "noext",
                 "./dot/./x.png", "sub//double.png", ".hidden.png", "back\\slash.png", "new\nline.png"]


def test_member_names_are_mapped_to_safe_names_once():
    assert safe_member_name("000001.jpg") == "000001.jpg"
    assert safe_member_name("sub/dir/000001.webp") == "sub/dir/000001.webp"
    for name in ("..", "", "noext", "a/b.json", ".hidden.png"):
        assert safe_member_name(name) is None, name
    renamed = {name: safe_member_name(name) for name in HOSTILE_NAMES if safe_member_name(name)}
    assert set(renamed) == {"a/../../../../x/holiday.png", "/tmp/absolute-evil.png", "../up.png", "./dot/./x.png",
                            "sub//double.png", "back\\slash.png", "new\nline.png"}
    for name, safe in renamed.items():
        assert safe.startswith("_renamed/") and "/" not in safe[len("_renamed/"):] and ".." not in safe
        assert safe == safe_member_name(name)  # the same name every time: it is what the catalog keeps
    assert len(set(renamed.values())) == len(renamed)


def test_hostile_member_names_never_write_outside_the_dataset(tmp_path):
    outside = tmp_path / "x"
    outside.mkdir()
    precious = outside / "holiday.jpg"
    precious.write_bytes(b"precious, not a thumbnail")
    paths = dataset_paths("shardy", tmp_path / "root")
    create_dataset(paths)
    shard = paths.images / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for n, name in enumerate(HOSTILE_NAMES):
            add_member(tar, name, jpeg(n)) if name not in ("..", "") else add_member(tar, name or "x/", b"")
        add_member(tar, "link.png", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add_member(tar, "hard.png", type=tarfile.LNKTYPE, linkname="../../../../x/holiday.jpg")
        add_member(tar, "good.jpg", jpeg(99))
    before = snapshot(tmp_path, paths.home)

    made = transform_dataset(paths, TransformOptions(max_side=16, workers=1))
    build_atlas(paths, AtlasOptions(tile=16))

    assert snapshot(tmp_path, paths.home) == before  # nothing outside the dataset created or changed
    with open_catalog(paths) as cat:
        members = sorted(it.path.split("#", 1)[1] for it in cat.items(status=None))
    assert "good.jpg" in members and len(members) == 8  # 7 renamed images + good.jpg; links and junk are no items
    assert all(m == "good.jpg" or m.startswith("_renamed/") for m in members)
    assert made.made == 8 and made.failed == 0
    thumbs = [p for p in paths.thumbs.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(thumbs) == 8 and all(paths.thumbs in p.resolve().parents for p in thumbs)


def test_a_thumbnail_folder_linked_outside_is_not_written_through(tmp_path):
    paths = dataset_paths("linked", tmp_path / "root")
    create_dataset(paths)
    (paths.images / "sub").mkdir()
    (paths.images / "sub" / "a.jpg").write_bytes(jpeg(1))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    paths.thumbs.mkdir()
    (paths.thumbs / "sub").symlink_to(outside, target_is_directory=True)
    result = transform_dataset(paths, TransformOptions(max_side=16, workers=1))
    assert list(outside.iterdir()) == []
    assert result.failed == 1 and "outside dataset 'linked'" in result.warnings[0]


def test_catalog_rows_that_climb_out_are_refused_by_every_reader(tmp_path):
    paths = dataset_paths("rows", tmp_path / "root")
    create_dataset(paths)
    with open_catalog(paths) as cat:
        cat.upsert_item("../../secret.jpg", status="ok", content_hash="h1")
        cat.upsert_item("a/../../b.jpg", status="ok", content_hash="h2")
    for row in ("../../secret.jpg", "a/../../b.jpg", "ok/../../x.jpg#y.jpg"):
        with pytest.raises(PathRefused):
            paths.item_file(row)
        with pytest.raises(PathRefused):
            paths.thumbnail_file(row, "h", "jpeg")
    (tmp_path / "secret.jpg").write_bytes(jpeg(3))
    with open_catalog(paths) as cat:
        scan_items = {it.path for it in cat.items(status=None)}
    assert "../../secret.jpg" in scan_items  # planted rows are kept as data...
    result = transform_dataset(paths, TransformOptions(max_side=16, workers=1))  # ...but never read or written
    assert not list((tmp_path / "root").glob("*.jpg")) and not (tmp_path / "thumbs").exists()
    assert result.made == 0


# ---------------------------------------------------------------- the server sends only files inside


@pytest.fixture
def served(tmp_path):
    from fastapi.testclient import TestClient

    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    root = tmp_path / "root"
    paths = dataset_paths("pics", root)
    create_dataset(paths)
    for n in range(3):
        (paths.images / f"p{n}.jpg").write_bytes(jpeg(n))
    transform_dataset(paths, TransformOptions(max_side=16, workers=1))
    build_atlas(paths, AtlasOptions(tile=16))
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret")
    client = TestClient(create_app(ServerConfig(root=str(root), preload=False)), base_url="http://127.0.0.1")
    with open_catalog(paths) as cat:
        ids = {it.path: it.id for it in cat.items()}
    return client, paths, ids, secret


def refused(response) -> bool:
    return response.status_code in (403, 404, 409) and b"root:x:0" not in response.content


def test_server_refuses_files_swapped_for_links_outside(served):
    client, paths, ids, secret = served
    assert client.get(f"/api/datasets/pics/items/{ids['p0.jpg']}/image").status_code == 200
    (paths.images / "p0.jpg").unlink()
    (paths.images / "p0.jpg").symlink_to(secret)
    thumb = paths.thumbs / "p1.jpg"
    thumb.unlink()
    thumb.symlink_to(secret)
    with open_catalog(paths) as cat:  # the swap is not noticed by a scan: the row is as it was
        assert {it.path for it in cat.items()} == set(ids)
    image = client.get(f"/api/datasets/pics/items/{ids['p0.jpg']}/image")
    assert refused(image) and image.status_code == 403 and "outside dataset 'pics'" in image.json()["error"]
    assert refused(client.get(f"/api/datasets/pics/items/{ids['p1.jpg']}/thumb"))
    assert client.get(f"/api/datasets/pics/items/{ids['p2.jpg']}/thumb").status_code == 200


def test_server_refuses_catalog_rows_with_absolute_or_climbing_paths(served):
    client, paths, ids, secret = served
    with open_catalog(paths) as cat:
        absolute = cat.upsert_item(str(secret), status="ok", content_hash="s1")
        climbing = cat.upsert_item("../../secret.txt", status="ok", content_hash="s2")
    for item_id in (absolute, climbing):
        for what in ("image", "thumb"):
            response = client.get(f"/api/datasets/pics/items/{item_id}/{what}")
            assert refused(response), (item_id, what, response.status_code)
            assert response.status_code == 403


def test_server_never_serves_what_a_manifest_names(served):
    client, paths, ids, secret = served
    assert client.get("/api/datasets/pics/atlas/0").status_code == 200
    manifest = json.loads(paths.atlas_manifest.read_text())
    depth = len(paths.atlas.resolve().parts) - 1
    manifest["pages"] = ["../" * depth + str(secret).lstrip("/"), "../../secret.txt"]
    paths.atlas_manifest.write_text(json.dumps(manifest))
    for page in (0, 1):
        assert refused(client.get(f"/api/datasets/pics/atlas/{page}"))
    page0 = paths.atlas_page(0)
    page0.unlink()
    page0.symlink_to(secret)
    paths.atlas_manifest.write_text(json.dumps({**manifest, "pages": ["atlas-0.png"]}))
    assert refused(client.get("/api/datasets/pics/atlas/0"))


def test_a_stale_manifest_never_deletes_outside_the_atlas(tmp_path):
    paths = dataset_paths("stale", tmp_path / "root")
    create_dataset(paths)
    (paths.images / "a.jpg").write_bytes(jpeg(1))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    paths.atlas.mkdir()
    paths.atlas_manifest.write_text(json.dumps({"pages": ["atlas-0.png", "../../../victim.txt", "atlas-1.png"]}))
    (paths.atlas / "atlas-1.png").write_bytes(b"old page")
    build_atlas(paths, AtlasOptions(tile=16))
    assert victim.read_text() == "keep me"
    assert not (paths.atlas / "atlas-1.png").exists()  # the old atlas's own extra page is still removed


# ---------------------------------------------------------------- shard members within bounds


def test_members_declaring_huge_sizes_are_refused_before_any_read(tmp_path):
    paths = dataset_paths("bounds", tmp_path / "root")
    create_dataset(paths)
    huge = 300 << 20  # declared, and a sparse hole on disk: reading it would take 300 MB
    with open(paths.images / "00000.tar", "wb") as fh:
        fh.write(member_bytes("ok-before.jpg", jpeg(1)))
        fh.write(member_bytes("huge.jpg", size=huge))
        fh.seek(huge, os.SEEK_CUR)
        fh.write(member_bytes("ok-after.jpg", jpeg(2)) + bytes(1024))
    six_gib = paths.images / "00001.tar"  # a 10 KB shard declaring a 6 GiB member
    with tarfile.open(six_gib, "w") as tar:
        add_member(tar, "first.jpg", jpeg(3))
        info = tarfile.TarInfo("bomb.png")
        info.size = 6 << 30
        tar.addfile(info)
    good = paths.images / "00002.tar"
    with tarfile.open(good, "w") as tar:
        add_member(tar, "fine.jpg", jpeg(4))
    with open_catalog(paths) as cat:
        result = scan(cat)
        items = sorted(it.path for it in cat.items())
    assert items == ["00000.tar#ok-after.jpg", "00000.tar#ok-before.jpg", "00001.tar#first.jpg",
                     "00002.tar#fine.jpg"]
    assert result.broken == 2 and result.unreadable == 1
    assert any("huge.jpg" in w and "limit" in w for w in result.warnings)
    assert any("bomb.png" in w and "shard ends first" in w for w in result.warnings)
    made = transform_dataset(paths, TransformOptions(max_side=16, workers=1))
    assert made.made == 4 and made.failed == 0
    assert build_atlas(paths, AtlasOptions(tile=16))["count"] == 4


def test_a_member_whose_header_claims_more_than_the_shard_holds_is_broken_not_fatal(tmp_path):
    paths = dataset_paths("short", tmp_path / "root")
    create_dataset(paths)
    with tarfile.open(paths.images / "00000.tar", "w") as tar:
        add_member(tar, "a.jpg", jpeg(1))
        add_member(tar, "b.jpg", jpeg(2))
    with tarfile.open(paths.images / "00000.tar") as tar:
        b = tar.getmember("b.jpg")
    data = (paths.images / "00000.tar").read_bytes()
    (paths.images / "00000.tar").write_bytes(data[:b.offset_data + b.size // 2])  # cut inside b.jpg's data
    with tarfile.open(paths.images / "00001.tar", "w") as tar:
        add_member(tar, "c.jpg", jpeg(3))
    with open_catalog(paths) as cat:
        result = scan(cat)
        items = sorted(it.path for it in cat.items())
    assert items == ["00000.tar#a.jpg", "00001.tar#c.jpg"] and result.unreadable == 1
    assert transform_dataset(paths, TransformOptions(max_side=16, workers=1)).made == 2
    from stylesearch.store.shards import ShardMember

    with pytest.raises(KeyError):
        ShardMember(paths.images / "00000.tar", "b.jpg").read_bytes()
