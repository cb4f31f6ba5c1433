"""Shared fixtures: generated images, a tiny random-init open_clip model saved to a file,
an embedded dataset built once per session, and an in-process runner for the CLI.

Tests that load torch/open_clip are marked `slow` (explicitly, or here by the fixtures they
use), so `pytest -m "not slow"` is a fast subset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stylesearch.ingest.samples import write_samples
from stylesearch.store.paths import dataset_paths

TINY = "stylesearch-tiny"


SLOW_FIXTURES = {"tiny_weights", "tiny_spec", "tiny_model", "embedded"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class CLI:
    """Runs the `stylesearch` command group in-process (typer's CliRunner) with a private dataset root."""

    def __init__(self, root: Path, env: dict | None = None):
        self.root = root
        # tests that need the automatic ONNX export of the text tower turn it back on
        self.env = {"STYLESEARCH_HOME": str(root), "HF_HUB_OFFLINE": "1", "STYLESEARCH_NO_ONNX_EXPORT": "1",
                    **(env or {})}

    def __call__(self, *args: str, input: str | None = None, check: bool = True, env: dict | None = None) -> Result:
        from typer.testing import CliRunner

        from stylesearch.cli.main import app

        result = CliRunner().invoke(app, list(args), input=input, env={**self.env, **(env or {})},
                                    prog_name="stylesearch")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        proc = Result(result.exit_code, result.stdout, result.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"stylesearch {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def json(self, *args: str, **kw):
        return json.loads(self(*args, **kw).stdout)

    def process(self, *args: str, env: dict | None = None, timeout: float = 300) -> Result:
        """Runs `python -m stylesearch` in a new process: for tests about processes and their environment
        (variables read at import time such as HF_HOME, exit codes of the real entry point)."""
        full_env = {**os.environ, **self.env, "PYTHONWARNINGS": "ignore", **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "stylesearch", *args], capture_output=True, text=True,
                              env=full_env, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(autouse=True, scope="session")
def private_query_cache(tmp_path_factory):
    """Query-vector caches go to a temporary folder, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("query-cache")
    previous = os.environ.get("STYLESEARCH_CACHE")
    os.environ["STYLESEARCH_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("STYLESEARCH_CACHE", None)
    else:
        os.environ["STYLESEARCH_CACHE"] = previous


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "datasets"


@pytest.fixture
def cli(root) -> CLI:
    return CLI(root)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A random-init stylesearch-tiny checkpoint saved to a local file (what --pretrained PATH loads)."""
    import open_clip
    import torch

    from stylesearch.embed.models import _register_configs

    _register_configs()
    torch.manual_seed(1234)
    model = open_clip.create_model(TINY, pretrained=None)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_spec(tiny_weights):
    from stylesearch.embed.models import ModelSpec

    return ModelSpec(TINY, str(tiny_weights))


@pytest.fixture(scope="session")
def tiny_model(tiny_spec):
    from stylesearch.embed.models import load_model

    return load_model(tiny_spec, device="cpu")


def make_dataset(root: Path, name: str = "ds", count: int = 36):
    paths = dataset_paths(name, root)
    write_samples(paths.images, count)
    from stylesearch.store.datasets import create_dataset

    create_dataset(paths)
    return paths


@pytest.fixture(scope="session")
def embedded(tmp_path_factory, tiny_spec, tiny_model):
    """A dataset of 36 generated images embedded with the tiny model and indexed (read-only for tests)."""
    from stylesearch.embed.run import EmbedOptions, embed_dataset
    from stylesearch.index.build import build_index

    root = tmp_path_factory.mktemp("embedded")
    paths = make_dataset(root, "shared", 36)
    embed_dataset(paths, tiny_spec, options=EmbedOptions(workers=0, backend="torch", export_onnx=False),
                  model=tiny_model)
    build_index(paths, tiny_spec.key)
    return paths


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def vector_catalog(root: Path, name: str, vectors: np.ndarray, key: str = "m"):
    """A dataset whose items are just catalog rows with the given vectors (no images, no model):
    item i+1 is `i.jpg` with vector row i."""
    from stylesearch.store.catalog import open_catalog

    paths = dataset_paths(name, root)
    hashes = [f"{i:064d}" for i in range(len(vectors))]
    with open_catalog(paths, create=True) as cat, cat.transaction():
        cat.vectors.ensure_model(key, key, "t", vectors.shape[1], "float32")
        for i, content_hash in enumerate(hashes):
            cat.upsert_item(f"{i}.jpg", content_hash=content_hash, status="ok")
        cat.vectors.put(key, hashes, vectors, "float32")
    return paths


def image_dataset_with_vectors(root: Path, name: str, count: int, dim: int = 16, seed: int = 0):
    """Generated images scanned into a new dataset, each with a random unit vector of model 'm' (no model
    loaded); returns the paths and {item id: vector}."""
    from stylesearch.ingest.scan import scan
    from stylesearch.store.catalog import open_catalog
    from stylesearch.store.datasets import create_dataset

    paths = dataset_paths(name, root)
    write_samples(paths.images, count)
    create_dataset(paths)
    with open_catalog(paths) as cat:
        scan(cat)
        items = cat.items()
        vectors = unit_rows(len(items), dim, seed)
        with cat.transaction():
            cat.vectors.ensure_model("m", "m", "t", dim, "float32")
            cat.vectors.put("m", [it.content_hash for it in items], vectors, "float32")
    return paths, {it.id: v for it, v in zip(items, vectors)}
