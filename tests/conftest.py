"""Shared fixtures: generated images, a tiny random-init open_clip model saved to a file,
an embedded dataset built once per session, and a runner for the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stylesearch.samples import write_samples
from stylesearch.storage import dataset_paths

TINY = "stylesearch-tiny"


class CLI:
    """Runs `python -m stylesearch` (the console entry point) with a private dataset root."""

    def __init__(self, root: Path, env: dict | None = None):
        self.root = root
        self.env = {**os.environ, "STYLESEARCH_HOME": str(root), "HF_HUB_OFFLINE": "1",
                    "PYTHONWARNINGS": "ignore", **(env or {})}

    def __call__(self, *args: str, input: str | None = None, check: bool = True, env: dict | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "stylesearch", *args], input=input, capture_output=True,
                              text=True, env={**self.env, **(env or {})}, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"stylesearch {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def json(self, *args: str, **kw):
        return json.loads(self(*args, **kw).stdout)


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

    from stylesearch.models import _register_configs

    _register_configs()
    torch.manual_seed(1234)
    model = open_clip.create_model(TINY, pretrained=None)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_spec(tiny_weights):
    from stylesearch.models import ModelSpec

    return ModelSpec(TINY, str(tiny_weights))


@pytest.fixture(scope="session")
def tiny_model(tiny_spec):
    from stylesearch.models import load_model

    return load_model(tiny_spec, device="cpu")


def make_dataset(root: Path, name: str = "ds", count: int = 36):
    paths = dataset_paths(name, root)
    write_samples(paths.images, count)
    from stylesearch.dataset import create_dataset

    create_dataset(paths)
    return paths


@pytest.fixture(scope="session")
def embedded(tmp_path_factory, tiny_spec, tiny_model):
    """A dataset of 36 generated images embedded with the tiny model and indexed (read-only for tests)."""
    from stylesearch.embed import EmbedOptions, embed_dataset
    from stylesearch.index import build_index

    root = tmp_path_factory.mktemp("embedded")
    paths = make_dataset(root, "shared", 36)
    embed_dataset(paths, tiny_spec, options=EmbedOptions(workers=0), model=tiny_model)
    build_index(paths, tiny_spec.key)
    return paths


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
