"""transform (thumbnails) and atlas (sprite pages + manifest)."""

from __future__ import annotations

import json
import os
import time

import pytest
from PIL import Image

from stylesearch.errors import NotReady
from stylesearch.ingest.samples import render
from stylesearch.ingest.transform import TransformOptions, transform_dataset
from stylesearch.maps.atlas import AtlasOptions, build_atlas, umap_order
from stylesearch.store.paths import thumbnail_for

from .conftest import make_dataset


def _exif_rotated(path, size=(200, 100)):
    """A landscape JPEG whose EXIF says 'rotate 90°' (orientation 6): it should display as portrait."""
    img = render("stripes", "cool", 3, size)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, exif=exif.tobytes())


def test_thumbnails_keep_tree_respect_exif_and_max_side(tmp_path):
    paths = make_dataset(tmp_path, "thumbs", 6)
    _exif_rotated(paths.images / "rotated.jpg")
    big = render("dots", "warm", 1, (1600, 1200))
    (paths.images / "nested" / "deep").mkdir(parents=True)
    big.save(paths.images / "nested" / "deep" / "big.png")
    result = transform_dataset(paths, TransformOptions(max_side=64, workers=2))
    assert result.as_dict() == {"made": 8, "up_to_date": 0, "failed": 0}
    with Image.open(paths.thumbs / "nested" / "deep" / "big.jpg") as im:
        assert im.size == (64, 48)
    with Image.open(paths.thumbs / "rotated.jpg") as im:
        assert im.size == (32, 64)  # portrait after applying EXIF orientation
    assert thumbnail_for(paths, "rotated.jpg") == paths.thumbs / "rotated.jpg"
    assert thumbnail_for(paths, "missing.jpg") == paths.images / "missing.jpg"


def test_transform_is_incremental_and_skips_corrupt(tmp_path):
    paths = make_dataset(tmp_path, "incr", 5)
    (paths.images / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    first = transform_dataset(paths, TransformOptions(max_side=48))
    assert first.made == 5 and first.failed == 0  # broken.jpg is corrupt in the catalog: not attempted
    second = transform_dataset(paths, TransformOptions(max_side=48))
    assert second.as_dict() == {"made": 0, "up_to_date": 5, "failed": 0}
    target = next(paths.images.rglob("warm/*.jpg"))
    time.sleep(0.01)
    render("rings", "mono", 5).save(target)
    os.utime(target, (time.time() + 5, time.time() + 5))
    third = transform_dataset(paths, TransformOptions(max_side=48))
    assert third.as_dict() == {"made": 1, "up_to_date": 4, "failed": 0}
    resized = transform_dataset(paths, TransformOptions(max_side=32, fmt="webp"))
    assert resized.made == 5
    assert len(list(paths.thumbs.rglob("*.webp"))) == 5


def test_transform_cli_json(cli, root):
    make_dataset(root, "tcli", 4)
    out = cli.json("transform", "tcli", "--max-side", "40", "--json")
    assert [step["step"] for step in out.pop("steps")] == ["thumbnails"]  # each step's seconds (issue 24)
    assert out == {"made": 4, "up_to_date": 0, "failed": 0}


def test_atlas_pages_split_and_manifest(tmp_path):
    paths = make_dataset(tmp_path, "atlas", 30)
    (paths.images / "broken.jpg").write_bytes(b"nope")
    manifest = build_atlas(paths, AtlasOptions(tile=32, padding=2, max_size=140))
    cols = (140 - 2) // 34
    assert manifest["grid"]["cols"] == cols == 4
    assert len(manifest["pages"]) == 2 and manifest["count"] == 30  # 16 per page
    with Image.open(paths.atlas / "atlas-0.png") as page:
        assert page.size[0] <= 140 and page.size[1] <= 140
    first = manifest["items"][0]
    assert set(first) == {"id", "path", "page", "x", "y", "w", "h"}
    assert first["path"] == sorted(e["path"] for e in manifest["items"])[0]  # deterministic order
    on_disk = json.loads((paths.atlas / "manifest.json").read_text())
    assert on_disk == manifest
    again = build_atlas(paths, AtlasOptions(tile=32, padding=2, max_size=4096))
    assert again["pages"] == ["atlas-0.png"] and not (paths.atlas / "atlas-1.png").exists()


def test_atlas_umap_order_needs_coordinates(tmp_path):
    paths = make_dataset(tmp_path, "noumap", 4)
    with pytest.raises(NotReady, match="UMAP") as info:
        build_atlas(paths, AtlasOptions(order="umap"))
    assert info.value.step == "umap-export" and info.value.dataset == "noumap"


def test_umap_order_groups_rows_by_position():
    import numpy as np

    from stylesearch.store.catalog import Item

    items = [Item(i, f"{i}.jpg", 0, 0, str(i), 1, 1, "ok") for i in range(1, 5)]
    coords = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    ordered = umap_order(items, np.array([1, 2, 3, 4]), coords, cols=2)
    assert [it.id for it in ordered] == [4, 3, 2, 1]
