"""The Python API: the same functions as the command line, typed results, StyleSearchErrors; and the
README's "Python API" code blocks run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import stylesearch
from stylesearch.store.catalog import open_catalog

from .conftest import image_dataset_with_vectors

README = Path(__file__).resolve().parents[1] / "README.md"


def vector_dataset(root: Path, name: str = "pics", n: int = 30):
    """A dataset with generated images, random vectors of a model 'm', captions and metadata."""
    paths, vectors = image_dataset_with_vectors(root, name, n, seed=7)
    with open_catalog(paths) as cat, cat.transaction():
        for it in cat.items():
            cat.upsert_item(it.path, caption=f"caption {it.id}")
            cat.set_metadata(it.id, {"n": it.id, "palette": it.path.split("/")[0]})
    return stylesearch.open(name, root=root), vectors


def exact(vectors: dict, item: int, k: int) -> list[int]:
    q = vectors[item]
    others = sorted((i for i in vectors if i != item), key=lambda i: (-float(vectors[i] @ q), i))
    return others[:k]


def test_open_search_similar_and_hits_match_the_command_line(tmp_path, cli):
    photos, vectors = vector_dataset(tmp_path)
    assert repr(photos) == f"<stylesearch.Dataset 'pics' at {photos.path}>"
    again = stylesearch.open("pics", root=tmp_path)
    hits = again.similar(3, k=5)
    assert [h.id for h in hits] == exact(vectors, 3, 5) and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    first = hits[0]
    assert isinstance(first, stylesearch.Hit) and first.caption == f"caption {first.id}"
    assert first.meta["n"] == first.id and first.dataset == "pics" and Path(first.file).is_file()
    assert first.score == pytest.approx(float(vectors[first.id] @ vectors[3]), abs=1e-5)
    cli_rows = cli.json("--root", str(tmp_path), "search", "pics", "--like", "3", "-k", "5", "--format", "json")
    assert [(r["id"], r["score"], r["path"]) for r in cli_rows] == [(h.id, h.score, h.path) for h in hits]
    warm = photos.search(like=3, k=50, where="palette=warm")
    assert warm and all(h.meta["palette"] == "warm" for h in warm)
    assert [h.id for h in warm] == [i for i in exact(vectors, 3, 30) if i in {h.id for h in warm}]
    by_path = photos.similar(first.path, k=2, where=["n>3", "n<20"])
    assert all(3 < h.meta["n"] < 20 for h in by_path) and first.id not in [h.id for h in by_path]


def test_index_judge_and_datasets_are_typed(tmp_path):
    photos, vectors = vector_dataset(tmp_path, "a")
    vector_dataset(tmp_path, "b", 5)
    info = photos.index()
    assert isinstance(info, stylesearch.IndexInfo) and (info.kind, info.count, info.space) == ("flat", 30, "raw")
    with open_catalog(photos.paths, readonly=True) as cat:
        fifth = cat.item("5").path
    record = photos.judge(1, 2, fifth, "right")
    lines = [json.loads(line) for line in photos.paths.triplets.read_text().splitlines()]
    assert lines == [record] and record["choice"] == "right" and record["session"] == "python"
    assert record["right"] == fifth and record["model"] == "m"
    listed = stylesearch.datasets(root=tmp_path)
    assert [(d.name, d.items, d.models) for d in listed] == [("a", 30, ["m"]), ("b", 5, ["m"])]


def test_errors_are_style_search_errors(tmp_path):
    with pytest.raises(stylesearch.StyleSearchError, match="No dataset named 'nope'"):
        stylesearch.open("nope", root=tmp_path)
    photos, _ = vector_dataset(tmp_path)
    with pytest.raises(stylesearch.StyleSearchError, match="No item"):
        photos.similar(10**30)
    with pytest.raises(stylesearch.StyleSearchError, match="Nothing to search for"):
        photos.search()
    with pytest.raises(stylesearch.StyleSearchError) as caught:
        photos.search(like=1, where="colour=red")
    assert "colour" in caught.value.message and caught.value.hint
    with pytest.raises(stylesearch.StyleSearchError, match="Unknown choice"):
        photos.judge(1, 2, 3, "maybe")
    assert not photos.paths.triplets.exists()


def test_unknown_attributes_and_dir():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        stylesearch.nothing  # noqa: B018
    assert {"open", "datasets", "Hit", "StyleSearchError", "__version__"} <= set(dir(stylesearch))


def readme_api_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_readme_python_api_runs_as_written(tmp_path):
    blocks = readme_api_blocks()
    assert len(blocks) == 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STYLESEARCH_NO_ONNX_EXPORT": "1",
           "STYLESEARCH_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore"}
    env.pop("STYLESEARCH_HOME", None)
    done = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("40 images embedded,")
    assert lines[1] == "IndexInfo(kind='flat', count=40, space='raw')"
    assert [int(line.split()[0]) for line in lines[2:7]] == [1, 2, 3, 4, 5]
    assert lines[8] == "['photos']"
    assert lines[9].startswith("diagonal 28 ")
    assert lines[10].startswith("40 points; searches now use the metric:")
    assert lines[11].startswith("error: No item") and len(lines) == 12
    assert (tmp_path / "map.png").stat().st_size > 1000
    assert (tmp_path / "datasets" / "photos" / "metric").is_dir()
