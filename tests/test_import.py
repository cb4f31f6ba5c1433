"""`stylesearch import`: img2dataset output (files with sidecars, tar shards with their parquet) and
clip-retrieval inference output (img_emb/*.npy + metadata/*.parquet) become items, metadata, captions
and vectors without embedding; hostile image_path values are refused and counted; reruns are
incremental; arrays stream; index, search, umap-export and serve work on the result."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from stylesearch.ingest.samples import write_samples
from stylesearch.store.catalog import open_catalog
from stylesearch.store.paths import dataset_paths

from .conftest import unit_rows

TINY_DIM = 64  # stylesearch-tiny's embedding size (its model config)


def img2dataset_files(folder: Path, count: int) -> list[Path]:
    """img2dataset's `files` layout: 00000/000000NNN.jpg with .json and .txt sidecars; images sorted by key."""
    samples = folder.parent / f".{folder.name}-samples"
    write_samples(samples, count)
    images = []
    for n, source in enumerate(sorted(samples.rglob("*.jpg"))):
        key = f"{n:09d}"
        image = folder / "00000" / f"{key}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(source.read_bytes())
        image.with_suffix(".json").write_text(json.dumps({"url": f"https://img.example/{key}.jpg", "key": key,
                                                          "status": "success", "width": 64}))
        image.with_suffix(".txt").write_text(f"sample {key}")
        images.append(image)
    return images


def img2dataset_shards(folder: Path, count: int) -> list[str]:
    """img2dataset's `webdataset` layout: 00000.tar (key.jpg, key.json, key.txt) beside 00000.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = folder.parent / f".{folder.name}-samples"
    write_samples(samples, count)
    folder.mkdir(parents=True, exist_ok=True)
    keys, rows = [], []
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for n, source in enumerate(sorted(samples.rglob("*.jpg"))):
            key = f"{n:09d}"
            meta = {"url": f"https://img.example/{key}.jpg", "key": key, "status": "success", "caption": f"shard {key}"}
            for name, data in ((f"{key}.jpg", source.read_bytes()), (f"{key}.json", json.dumps(meta).encode()),
                               (f"{key}.txt", f"shard {key}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            keys.append(key)
            rows.append(meta)
    pq.write_table(pa.Table.from_pylist(rows), folder / "00000.parquet")
    return keys


def clip_retrieval_output(folder: Path, image_paths: list, vectors: np.ndarray, parts: int = 2, **columns) -> None:
    """clip-retrieval inference's layout: img_emb/img_emb_N.npy with metadata/metadata_N.parquet (small row
    groups), rows split over `parts` parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    bounds = np.linspace(0, len(image_paths), parts + 1).astype(int)
    for part, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        np.save(folder / "img_emb" / f"img_emb_{part}.npy", vectors[a:b])
        table = {"image_path": image_paths[a:b], **{k: v[a:b] for k, v in columns.items()}}
        pq.write_table(pa.table(table), folder / "metadata" / f"metadata_{part}.parquet", row_group_size=5)


def stored_vectors(paths, key: str) -> dict[str, np.ndarray]:
    """item path -> stored vector."""
    with open_catalog(paths, readonly=True) as cat:
        ids, mat = cat.vectors.load(key)
        by_id = {it.id: it.path for it in cat.items()}
    return {by_id[i]: v for i, v in zip(ids.tolist(), mat)}


def test_shards_with_clip_retrieval_embeddings_import_without_embedding(cli, root, tmp_path, monkeypatch):
    source = tmp_path / "laion"
    keys = img2dataset_shards(source, 12)
    vectors = unit_rows(len(keys), TINY_DIM, seed=4) * 3  # not unit length: import normalises
    vectors[5] = np.nan
    hostile = ["../../etc/passwd", "/etc/passwd", "nope-key"]
    clip_retrieval_output(source / "embeddings", keys + hostile, np.vstack([vectors, unit_rows(3, TINY_DIM)]),
                          caption=[f"cr {k}" for k in keys] + ["x"] * 3, url=[None] * 15,
                          aesthetic=[float(n) for n in range(15)], NSFW=["UNLIKELY"] * 15)
    from stylesearch.ingest.clip_vectors import NpyRows

    reads, real_read = [], NpyRows.read
    monkeypatch.setattr(NpyRows, "read", lambda self, count: reads.append(count) or real_read(self, count))
    monkeypatch.setattr(np, "load", None)  # never loaded whole
    monkeypatch.setattr("stylesearch.ingest.clip_vectors.BATCH_ROWS", 4)
    report = cli.json("import", "laion", str(source), "-m", "stylesearch-tiny", "-p", "random", "--json")
    monkeypatch.undo()
    assert reads == [4, 3, 4, 4]  # two parts of 7 and 8 rows, read 4 rows at a time
    assert (report["new"], report["vectors"], report["bad_vectors"], report["refused"], report["no_image"]) == (
        12, 11, 1, 2, 1)
    assert report["model"] == "stylesearch-tiny__random"
    paths = dataset_paths("laion", root)
    assert paths.images.is_symlink() and paths.images.resolve() == source.resolve()
    stored = stored_vectors(paths, "stylesearch-tiny__random")
    for n, key in enumerate(keys):
        path = f"00000.tar#{key}.jpg"
        if n == 5:
            assert path not in stored
            continue
        np.testing.assert_allclose(stored[path], vectors[n] / np.linalg.norm(vectors[n]), atol=1e-6)
    with open_catalog(paths, readonly=True) as cat:
        item = cat.item("00000.tar#000000003.jpg")
        meta = cat.metadata([item.id])[item.id]
    assert item.caption == "shard 000000003" and item.source_url == "https://img.example/000000003.jpg"
    assert meta["aesthetic"] == 3.0 and meta["NSFW"] == "UNLIKELY" and meta["status"] == "success"

    again = cli.json("import", "laion", str(source), "-m", "stylesearch-tiny", "-p", "random", "--json")
    assert (again["new"], again["unchanged"], again["vectors"], again["already"]) == (0, 12, 0, 11)
    cli("index", "laion")
    rows = cli.json("search", "laion", "--like", "00000.tar#000000002.jpg", "-k", "3", "-f", "json")
    expected = sorted((n for n in range(12) if n not in (2, 5)),
                      key=lambda n: -float(vectors[n] @ vectors[2]) / np.linalg.norm(vectors[n]))[:3]
    assert [r["path"] for r in rows] == [f"00000.tar#{keys[n]}.jpg" for n in expected]
    assert [r["caption"] for r in rows] == [f"shard {keys[n]}" for n in expected]


def test_files_layout_with_separate_embeddings_folder_and_refusals(cli, root, tmp_path):
    images = img2dataset_files(tmp_path / "download", 8)
    vectors = unit_rows(len(images), TINY_DIM, seed=2)
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(images[0].read_bytes())
    paths_column = [str(p) for p in images[:6]] + ["download/00000/000000006.jpg", "00000/000000007.jpg"]
    clip_retrieval_output(tmp_path / "emb", paths_column + [str(outside)],
                          np.vstack([vectors, unit_rows(1, TINY_DIM)]), parts=3)
    no_images = cli("import", "files", str(tmp_path / "emb"), "-m", "stylesearch-tiny", "-p", "random", check=False)
    assert no_images.returncode == 2 and "holds no images" in no_images.stderr
    report = cli.json("import", "files", str(tmp_path / "emb"), "--images", str(tmp_path / "download"),
                      "-m", "stylesearch-tiny", "-p", "random", "--json")
    assert (report["new"], report["vectors"], report["refused"], report["described"]) == (8, 8, 1, 8)
    paths = dataset_paths("files", root)
    stored = stored_vectors(paths, "stylesearch-tiny__random")
    for n in range(8):
        np.testing.assert_allclose(stored[f"00000/{n:09d}.jpg"], vectors[n], atol=1e-6)
    with open_catalog(paths, readonly=True) as cat:
        item = cat.item("00000/000000004.jpg")
        assert item.caption == "sample 000000004" and item.source_url == "https://img.example/000000004.jpg"
        assert cat.metadata([item.id])[item.id] == {"url": "https://img.example/000000004.jpg", "key": "000000004",
                                                    "status": "success", "width": 64}
    wrong = cli("import", "files2", str(tmp_path / "emb"), "--images", str(tmp_path / "download"),
                "-m", "ViT-B-32", "-p", "random", check=False)
    assert wrong.returncode == 2 and "64-dimensional vectors; the model gives 512" in wrong.stderr
    other = tmp_path / "other"
    img2dataset_files(other, 2)
    taken = cli("import", "files", str(other), "-m", "stylesearch-tiny", "-p", "random", check=False)
    assert taken.returncode == 2 and "already has images" in taken.stderr


def test_img2dataset_files_alone_give_items_metadata_and_captions(cli, root, tmp_path):
    img2dataset_files(tmp_path / "dl", 5)
    report = cli.json("import", "plain", str(tmp_path / "dl"), "--json")
    assert (report["new"], report["described"], report["vectors"]) == (5, 5, 0)
    info = cli.json("info", "plain", "--json")
    assert info["items"]["ok"] == 5 and set(info["metadata"]) == {"key", "status", "url", "width"}


def test_import_loads_no_model(root, tmp_path):
    """The import computes nothing: a fresh process imports no torch, open_clip or onnxruntime."""
    keys = img2dataset_shards(tmp_path / "wds", 4)
    clip_retrieval_output(tmp_path / "wds" / "emb", keys, unit_rows(4, TINY_DIM), parts=1)
    code = ("import sys; from stylesearch.cli.main import main\nsys.argv = ['stylesearch', 'import', 'd', sys.argv[1], "
            "'-m', 'stylesearch-tiny', '-p', 'random', '--json']\ntry: main()\nexcept SystemExit: pass\n"
            "print('HEAVY', [m for m in ('torch', 'open_clip', 'onnxruntime', 'faiss') if m in sys.modules], "
            "file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "wds")], capture_output=True, text=True,
                          timeout=120, env={"STYLESEARCH_HOME": str(root), "PATH": "/usr/bin:/bin"})
    assert json.loads(proc.stdout)["vectors"] == 4, proc.stderr
    assert "HEAVY []" in proc.stderr


@pytest.mark.slow
def test_imported_vectors_of_the_real_model_search_by_text_image_map_and_serve(cli, root, tmp_path, tiny_spec,
                                                                               tiny_model):
    """Vectors clip-retrieval would have computed (here: the tiny model's) imported into a new dataset answer
    text, image, like and server queries exactly as the dataset embedded by stylesearch itself does."""
    from fastapi.testclient import TestClient

    from stylesearch.embed.run import EmbedOptions, embed_dataset
    from stylesearch.server.app import create_app
    from stylesearch.server.config import ServerConfig

    images = img2dataset_files(tmp_path / "dl", 16)
    embedded = dataset_paths("native", root)
    embedded.home.mkdir(parents=True)
    (embedded.home / "images").symlink_to(tmp_path / "dl")
    embed_dataset(embedded, tiny_spec, options=EmbedOptions(workers=0, backend="torch", export_onnx=False),
                  model=tiny_model, create=True)
    native = stored_vectors(embedded, tiny_spec.key)
    vectors = np.stack([native[p.relative_to(tmp_path / "dl").as_posix()] for p in images])
    clip_retrieval_output(tmp_path / "emb", [str(p) for p in images], vectors,
                          caption=[f"caption {n}" for n in range(16)])
    report = cli.json("import", "imported", str(tmp_path / "emb"), "--images", str(tmp_path / "dl"),
                      "-m", "stylesearch-tiny", "-p", str(tiny_spec.pretrained), "--json")
    assert report["vectors"] == 16 and report["model"] == tiny_spec.key
    cli("index", "imported")
    for args in (["striped red", "-k", "5"], ["--image", str(images[3]), "-k", "4"], ["--like", "00000/000000005.jpg"]):
        mine = cli.json("search", "imported", *args, "-f", "json")
        theirs = cli.json("search", "native", *args, "-f", "json")
        assert [(r["path"], r["score"]) for r in mine] == [(r["path"], r["score"]) for r in theirs], args
    assert cli.json("search", "imported", "--image", str(images[3]), "-k", "1", "-f", "json")[0]["path"] == \
        "00000/000000003.jpg"
    coords = cli("umap-export", "imported", "--format", "csv").stdout.splitlines()
    assert len(coords) == 17 and coords[0].split(",")[:4] == ["id", "path", "x", "y"]
    client = TestClient(create_app(ServerConfig(root=str(root), preload=False)), base_url="http://127.0.0.1")
    found = client.post("/knn-service", content=json.dumps({"text": "striped red", "indice_name": "imported",
                                                            "num_images": 5})).json()
    assert [r["image_path"] for r in found] == [r["path"] for r in cli.json("search", "native", "striped red", "-k",
                                                                             "5", "-f", "json")]
    assert found[0]["url"].startswith("https://img.example/") and found[0]["caption"].startswith("sample ")


def test_image_path_values_never_lead_outside(tmp_path):
    """Any image_path value: found only as a catalogued item, refused when it climbs out or is absolute
    outside the images folder, never an error (hypothesis)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from stylesearch.ingest.clip_vectors import REFUSED, Locator
    from stylesearch.ingest.imports import link_images

    keys = img2dataset_shards(tmp_path / "wds", 3)
    paths = dataset_paths("h", tmp_path / "datasets")
    paths.home.mkdir(parents=True)
    link_images(paths, tmp_path / "wds")
    from stylesearch.ingest.scan import scan

    with open_catalog(paths, create=True) as cat:
        scan(cat)
        locate = Locator(cat, tmp_path / "wds")
    assert locate.find(keys[1]).path == f"00000.tar#{keys[1]}.jpg"
    assert locate.find(str(tmp_path / "wds" / "00000.tar")) is None
    assert locate.find("../wds/x") == REFUSED and locate.find("/etc/passwd") == REFUSED

    parts = st.sampled_from(["..", ".", "", "a", keys[0], f"{keys[0]}.jpg", "00000.tar", "etc", "\x00", "wds"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(parts, max_size=6).map("/".join) | st.text(max_size=30), st.booleans())
    def check(value, absolute):
        value = "/" + value if absolute else value
        found = locate.find(value)
        if found not in (None, REFUSED):
            assert found.path in {f"00000.tar#{k}.jpg" for k in keys}
            assert ".." not in value.replace("\\", "/").split("/")
            assert not value.startswith("/") or value.startswith(str(tmp_path / "wds"))

    check()


def test_damaged_or_mismatched_embedding_files_are_refused_clearly(cli, tmp_path):
    keys = img2dataset_shards(tmp_path / "wds", 4)
    emb = tmp_path / "wds" / "emb"
    clip_retrieval_output(emb, keys, unit_rows(4, TINY_DIM), parts=1)
    npy = emb / "img_emb" / "img_emb_0.npy"
    whole = npy.read_bytes()
    args = ("import", "d", str(tmp_path / "wds"), "-m", "stylesearch-tiny", "-p", "random")
    for data, words in ((whole[:-100], "ends before its 4 rows"), (b"garbage", "not a readable .npy array")):
        npy.write_bytes(data)
        failed = cli(*args, check=False)
        assert failed.returncode == 2 and words in failed.stderr, failed.stderr
    np.save(npy, unit_rows(5, TINY_DIM))
    failed = cli(*args, check=False)
    assert failed.returncode == 2 and "has 4 rows but its array has 5 vectors" in failed.stderr
    np.save(npy, np.array([["a"] * TINY_DIM] * 4))
    failed = cli(*args, check=False)
    assert failed.returncode == 2 and "not a matrix of floats" in failed.stderr
    (emb / "metadata" / "metadata_0.parquet").unlink()
    failed = cli(*args, check=False)
    assert failed.returncode == 2 and "has no metadata_0.parquet beside it" in failed.stderr
