"""README options that need a model, passed through the CLI (issue 27): embed --backend/--device/--engine,
export-onnx --int8, tag -a/--redo. The tiny random-init model; slow (torch, onnx, ray)."""

from __future__ import annotations

import numpy as np
import pytest

from stylesearch.store.catalog import open_catalog

from .conftest import TINY, make_dataset

pytestmark = pytest.mark.slow


def _vectors(paths, key):
    with open_catalog(paths, readonly=True) as cat:
        ids, mat = cat.vectors.load(key)
        by_id = {it.id: it.path for it in cat.items()}
    return {by_id[int(i)]: v for i, v in zip(ids, mat)}


def test_embed_backends_export_int8_and_tag_redo(cli, root, tiny_weights, tiny_spec):
    model = ("-m", TINY, "-p", str(tiny_weights))
    torch_ds = make_dataset(root, "t", 8)
    out = cli.json("embed", "t", *model, "--backend", "torch", "--device", "cpu", "--workers", "0", "--json")
    assert out["embedded"] == 8 and out["backend"] == "torch"
    exported = cli.json("export-onnx", "t", *model, "--int8", "--json")
    assert "image-int8" in str(exported) and not exported["skipped"], exported
    from stylesearch.ingest.samples import render

    for n in range(2):  # new content, embedded by the int8 image tower just exported
        render("dots", "mono", 900 + n).save(torch_ds.images / f"new-{n}.jpg")
    out = cli.json("embed", "t", *model, "--backend", "onnx-int8", "--workers", "0", "--json")
    assert out["embedded"] == 2 and out["backend"] == "onnx-int8", out
    vectors = _vectors(torch_ds, tiny_spec.key)
    assert len(vectors) == 10 and all(abs(np.linalg.norm(v) - 1) < 1e-3 for v in vectors.values())

    first = cli.json("tag", "t", "-a", "tone=warm,cool", *model, "--device", "cpu", "--json")["attributes"]["tone"]
    assert first["tagged"] == 10
    again = cli.json("tag", "t", "-a", "tone=warm,cool", *model, "--json")["attributes"]["tone"]
    assert (again["tagged"], again["already_tagged"]) == (0, 10)
    redo = cli.json("tag", "t", "-a", "tone=warm,cool", *model, "--redo", "--json")["attributes"]["tone"]
    assert redo["tagged"] == 10
    with open_catalog(torch_ds, readonly=True) as cat:
        meta = cat.metadata([it.id for it in cat.items("ok")])
    assert len(meta) == 10 and all(m["tone"] in ("warm", "cool") and 0.5 <= m["tone_prob"] <= 1 for m in meta.values())


def test_embed_engine_ray_through_the_cli(cli, root, tiny_weights, tiny_spec):
    pytest.importorskip("ray", reason="ray is an optional extra (pip install 'stylesearch[ray]')")
    local, remote = make_dataset(root, "l", 6), make_dataset(root, "r", 6)
    model = ("-m", TINY, "-p", str(tiny_weights))
    cli("embed", "l", *model, "--backend", "torch", "--workers", "0")
    out = cli.json("embed", "r", *model, "--engine", "ray", "--num-workers", "1", "--backend", "torch", "--json")
    assert out["embedded"] == 6
    a, b = _vectors(local, tiny_spec.key), _vectors(remote, tiny_spec.key)
    assert a.keys() == b.keys() and all(np.allclose(a[p], b[p], atol=1e-5) for p in a)
