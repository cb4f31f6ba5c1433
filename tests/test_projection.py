"""umap-export: coordinates (csv/json/parquet), reproducibility, learned metric, the map PNG; the demo."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from stylesearch.errors import NotReady
from stylesearch.maps.projection import (UmapOptions, format_coords, free_cell, load_projection, project_dataset,
                                         render_map)


def test_umap_rows_reproducible_and_saved(embedded, tiny_spec):
    rows = project_dataset(embedded, tiny_spec.key, UmapOptions(seed=7, neighbors=5))
    again = project_dataset(embedded, tiny_spec.key, UmapOptions(seed=7, neighbors=5))
    assert len(rows) == 36
    assert [(r["x"], r["y"]) for r in rows] == [(r["x"], r["y"]) for r in again]
    ids, coords = load_projection(embedded, tiny_spec.key)
    assert ids.tolist() == [r["id"] for r in rows] and coords.shape == (36, 2)


def test_coordinate_formats():
    rows = [{"id": 1, "path": "a.jpg", "x": 0.5, "y": -1.25}, {"id": 2, "path": "b,c.jpg", "x": 1.0, "y": 2.0}]
    parsed = list(csv.DictReader(io.StringIO(format_coords(rows, "csv").decode())))
    assert parsed[1] == {"id": "2", "path": "b,c.jpg", "x": "1.000000", "y": "2.000000"}
    assert json.loads(format_coords(rows, "json")) == rows
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(format_coords(rows, "parquet")))
    assert table.column_names == ["id", "path", "x", "y"] and table.num_rows == 2


def test_map_places_thumbnails_without_overlap(embedded, tmp_path):
    rows = [{"id": n, "path": p.relative_to(embedded.images).as_posix(), "x": 0.0 if n % 2 else 1.0, "y": 0.0}
            for n, p in enumerate(sorted(embedded.images.rglob("*.jpg")))]
    out = tmp_path / "map.png"
    report = render_map(embedded, rows, out, size=480, thumb=48)
    assert report["placed"] + report["hidden_overlaps"] == 36 and report["placed"] > 2
    with Image.open(out) as im:
        assert im.size == (480, 480)


def test_free_cell_spirals_outward():
    taken = np.zeros((5, 5), bool)
    taken[2, 2] = True
    assert free_cell(taken, 2, 2, 1) in {(1, 2), (3, 2), (2, 1), (2, 3)}
    assert free_cell(np.ones((3, 3), bool), 1, 1, 2) is None


def test_too_few_items_for_umap(tmp_path):
    from stylesearch.store.catalog import open_catalog
    from stylesearch.store.paths import dataset_paths

    paths = dataset_paths("small", tmp_path)
    with open_catalog(paths, create=True) as cat:
        cat.vectors.ensure_model("m", "m", "t", 4, "float32")
    with pytest.raises(NotReady, match="at least 4"):
        project_dataset(paths, "m")


@pytest.mark.slow
def test_demo_runs_end_to_end_through_cli(cli, root):
    report = cli.json("demo", "--count", "24", "--json")
    assert report["embed"]["embedded"] == 24 and report["index"] == "flat"
    assert len(report["results"]) == 5 and report["map"]["placed"] > 0
    assert (root / "demo" / "map.png").exists() and (root / "demo" / "atlas" / "manifest.json").exists()
    out = cli("umap-export", "demo", "--format", "csv", "--seed", "1", "--png", str(root / "m.png"))
    coords = out.stdout.splitlines()
    assert coords[0] == "id,path,x,y" and len(coords) == 25
    assert "map" in out.stderr and (root / "m.png").exists()
    atlas = cli.json("atlas", "demo", "--order", "umap", "--json")
    assert atlas["items"] == 24
