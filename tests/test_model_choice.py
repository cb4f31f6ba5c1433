"""One home per concern: the model-choice rule, the same -m across every command, module boundaries."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from stylesearch.embed.choice import resolve_spec
from stylesearch.embed.models import DEFAULT_MODEL, DEFAULT_PRETRAINED
from stylesearch.errors import CatalogError, NotReady, UserError
from stylesearch.learn.judgments import new_judgment
from stylesearch.learn.metric import DiagonalMetric, load_metric, save_metric
from stylesearch.store.catalog import open_catalog
from stylesearch.store.files import append_jsonl
from stylesearch.store.paths import dataset_paths

from .conftest import TINY, make_dataset

PACKAGE = Path(__file__).resolve().parent.parent / "stylesearch"


def catalog_with_models(tmp_path, *models: tuple[str, str]):
    paths = dataset_paths("choice", tmp_path)
    with open_catalog(paths, create=True) as cat:
        for name, tag in models:
            cat.vectors.ensure_model(f"{name}__{tag}", name, tag, 8, "float32")
    return paths


def test_no_flags_pick_the_only_embedded_model_or_the_default(tmp_path):
    empty = catalog_with_models(tmp_path)
    assert (resolve_spec(empty).name, resolve_spec(empty).pretrained) == (DEFAULT_MODEL, DEFAULT_PRETRAINED)
    with pytest.raises(NotReady, match="no embeddings"):
        resolve_spec(empty, embedded_only=True)
    one = catalog_with_models(tmp_path / "b", (TINY, "random"))
    assert resolve_spec(one).key == f"{TINY}__random"
    assert resolve_spec(one, embedded_only=True).key == f"{TINY}__random"


def test_name_alone_picks_the_embedded_model_of_that_name(tmp_path):
    paths = catalog_with_models(tmp_path, (TINY, "random"), ("ViT-B-32", "openai"))
    assert resolve_spec(paths, TINY).key == f"{TINY}__random"
    assert resolve_spec(paths, "ViT-B-32", embedded_only=True).key == "ViT-B-32__openai"
    with pytest.raises(UserError, match="several models") as info:
        resolve_spec(paths)
    assert TINY in info.value.message and "ViT-B-32" in info.value.message
    # not embedded: the name with its default weights (to embed), or an error listing what is embedded
    assert resolve_spec(paths, "ViT-B-16").key == "ViT-B-16__laion2b_s34b_b88k"
    with pytest.raises(NotReady, match="ViT-B-16") as info:
        resolve_spec(paths, "ViT-B-16", embedded_only=True)
    assert TINY in info.value.hint and info.value.step == "embed"


def test_pretrained_only_disambiguates(tmp_path):
    paths = catalog_with_models(tmp_path, (TINY, "random"), (TINY, "other"))
    with pytest.raises(UserError, match="several models"):
        resolve_spec(paths, TINY)
    assert resolve_spec(paths, TINY, "other").key == f"{TINY}__other"
    assert resolve_spec(paths, None, "random").key == f"{TINY}__random"
    assert resolve_spec(paths, "hf-hub:org/repo").key == "hub-org_repo"


def _imports(file: Path) -> set[str]:
    tree = ast.parse(file.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.add(("." * node.level) + (node.module or ""))
            found.update(("." * node.level) + (node.module + "." if node.module else "") + a.name
                         for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_module_boundaries():
    for file in (PACKAGE / "cli").glob("*_cmd.py"):
        assert not [m for m in _imports(file) if m.endswith("_cmd")], f"{file.name} imports another CLI module"
    for name in ("learn/labelling", "maps/atlas", "maps/projection"):
        assert not [m for m in _imports(PACKAGE / f"{name}.py") if "transform" in m], name
    core = [f for f in PACKAGE.rglob("*.py") if f.relative_to(PACKAGE).parts[0] not in ("cli", "tui", "server")]
    assert len(core) > 40
    for file in core:  # the core never imports a frontend
        assert not [m for m in _imports(file) if m.lstrip(".").split(".")[0] in ("cli", "tui", "server")], file.name


def test_metric_of_the_wrong_dimension_is_a_clear_error(tmp_path):
    paths = dataset_paths("dims", tmp_path)
    save_metric(paths, "m", DiagonalMetric(np.ones(16)))
    assert load_metric(paths, "m", dim=16).kind == "diagonal"
    with pytest.raises(CatalogError, match="16-dimensional") as info:
        load_metric(paths, "m", dim=8)
    assert "Train the metric again" in info.value.hint
    assert load_metric(paths, "m", raw=True, dim=8).kind == "identity"


def test_legacy_weights_file_still_loads(tmp_path):
    paths = dataset_paths("legacy", tmp_path)
    paths.metric_dir("m").mkdir(parents=True)
    np.save(paths.legacy_metric_weights("m"), np.full(4, 2.0, dtype=np.float32))
    metric = load_metric(paths, "m", dim=4)
    assert metric.kind == "diagonal" and metric.weights.tolist() == [2.0] * 4


def test_core_errors_name_the_step_and_the_cli_the_command(cli, root):
    paths = make_dataset(root, "fresh", 3)
    with pytest.raises(NotReady) as info:
        resolve_spec(paths, embedded_only=True)
    text = f"{info.value.message} {info.value.hint}"
    assert "--" not in text and "stylesearch " not in text and info.value.step == "embed"
    proc = cli("search", "fresh", "--like", "1", check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == "Run `stylesearch embed fresh` first."


@pytest.mark.slow
def test_same_model_flag_works_across_every_command(cli, root, tiny_weights):
    paths = make_dataset(root, "t", 12)
    for args in (("-m", TINY), ()):
        cli("embed", "t", "--create", "-m", TINY, "-p", "random", "--workers", "0")
        index = cli.json("index", "t", *args, "--json")
        assert index["model_key"] == f"{TINY}__random" and index["count"] == 12
        rows = json.loads(cli("search", "t", "stripes", *args, "-k", "3", "--format", "json").stdout)
        assert len(rows) == 3
        coords = cli("umap-export", "t", *args, "--format", "json").stdout
        assert len(json.loads(coords)) == 12
        items = sorted(p.relative_to(paths.images).as_posix() for p in paths.images.rglob("*.jpg"))
        for n in range(8):
            a, l, r = items[n], items[n + 1], items[n + 2]
            append_jsonl(paths.triplets, new_judgment("t", a, l, r, "left", "m", "s"))
        report = cli.json("train", "t", *args, "--json")
        assert report["model_key"] == f"{TINY}__random"
    # a second model of the same name: no flags or the name alone are ambiguous, the weights choose
    cli("embed", "t", "-m", TINY, "-p", str(tiny_weights), "--workers", "0")
    for args in ((), ("-m", TINY)):
        proc = cli("index", "t", *args, check=False)
        assert proc.returncode == 2 and "several models" in proc.stderr
    assert cli.json("index", "t", "-p", "random", "--json")["model_key"] == f"{TINY}__random"
    assert cli.json("index", "t", "-p", str(tiny_weights), "--json")["model_key"].startswith(f"{TINY}__file-")
