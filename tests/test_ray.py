"""The Ray engine: same vectors as the local engine, failures counted, a clear error without ray."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from stylesearch.embed.run import EmbedOptions, embed_dataset
from stylesearch.errors import UserError
from stylesearch.store.catalog import open_catalog

from .conftest import make_dataset


@pytest.mark.slow
def test_ray_engine_gives_the_local_vectors(tmp_path, tiny_spec, tiny_model):
    pytest.importorskip("ray", reason="ray is an optional extra (pip install 'stylesearch[ray]')")
    from stylesearch.embed.encoders.ray import RayEncoder, RayOptions

    options = EmbedOptions(backend="torch", batch_size=8, workers=0, export_onnx=False)
    local = make_dataset(tmp_path / "local", "local", 30)
    remote = make_dataset(tmp_path / "ray", "ray", 30)
    good = next(remote.images.rglob("*.jpg")).read_bytes()
    (remote.images / "truncated.jpg").write_bytes(good[: len(good) // 3])  # header fine, decoding fails
    embed_dataset(local, tiny_spec, options=options, model=tiny_model)
    encoder = RayEncoder.load(tiny_spec, options, RayOptions(num_workers=1), model=tiny_model)
    result = embed_dataset(remote, tiny_spec, options=options, encoder=encoder)
    assert (result.embedded, result.failed) == (30, 1) and "truncated.jpg" in result.warnings[-1]
    vectors = {}
    for name, paths in (("local", local), ("ray", remote)):
        with open_catalog(paths, readonly=True) as cat:
            ids, mat = cat.vectors.load(tiny_spec.key)
            vectors[name] = {it.path: mat[n] for n, it in enumerate(it for it in cat.items() if it.id in set(ids))}
    assert vectors["local"].keys() == vectors["ray"].keys() and len(vectors["ray"]) == 30
    for path, vector in vectors["local"].items():
        assert np.allclose(vector, vectors["ray"][path], atol=1e-5)


def test_ray_engine_without_ray_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from stylesearch.embed.encoders.ray import RayEncoder

    with pytest.raises(UserError, match="ray package") as info:
        RayEncoder.load(None, EmbedOptions())
    assert "pip install 'stylesearch[ray]'" in info.value.hint
