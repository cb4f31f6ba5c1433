"""Model loading: local weights, a fake Hugging Face cache (offline), and clear errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from stylesearch.embed.models import ModelSpec, load_model
from stylesearch.errors import ModelWeightsMissing, UserError

from .conftest import TINY, make_dataset

pytestmark = pytest.mark.slow  # every test here loads open_clip

CONFIG = json.loads((__import__("pathlib").Path(__file__).parent.parent
                     / "stylesearch" / "embed" / "model_configs" / f"{TINY}.json").read_text())


def fake_hf_cache(hf_home, repo: str, weights, filename: str = "open_clip_pytorch_model.bin"):
    """Lay out a Hugging Face hub cache holding one open_clip repo, as a real download would."""
    org, name = repo.split("/")
    repo_dir = hf_home / "hub" / f"models--{org}--{name}"
    snap = repo_dir / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("a" * 40)
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": CONFIG, "preprocess_cfg": {}}))
    shutil.copy(weights, snap / filename)
    return snap


def test_local_weights_file_loads_and_encodes(tiny_model, tiny_weights):
    assert tiny_model.dim == CONFIG["embed_dim"]
    text = tiny_model.encode_text(["a red square", "blue stripes"])
    assert text.shape == (2, 64) and np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert tiny_model.key.startswith(f"{TINY}__file-")
    assert ModelSpec(TINY, str(tiny_weights)).key == tiny_model.key  # stable


def test_hf_hub_model_from_fake_cache_through_cli(cli, root, tmp_path, tiny_weights):
    hf_home = tmp_path / "hf"
    fake_hf_cache(hf_home, "stylesearch/tiny-clip", tiny_weights)
    make_dataset(root, "hub", 6)
    proc = cli.process("embed", "hub", "-m", "hf-hub:stylesearch/tiny-clip", "--json", "--workers", "0",
                       env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["embedded"] == 6 and out["model"] == "hub-stylesearch_tiny-clip"


def test_pretrained_tag_resolves_through_fake_cache(tmp_path, tiny_weights):
    hf_home = tmp_path / "hf"
    fake_hf_cache(hf_home, "stylesearch/tiny-tag", tiny_weights)
    script = textwrap.dedent(f"""
        import open_clip.pretrained as p
        from stylesearch.embed.models import ModelSpec, load_model, weights_cached, _register_configs
        _register_configs()
        p._PRETRAINED[{TINY!r}] = {{"faketag": {{"hf_hub": "stylesearch/tiny-tag/"}}}}
        spec = ModelSpec({TINY!r}, "faketag")
        assert weights_cached(spec)
        model = load_model(spec, device="cpu")
        print(model.key, model.dim)
    """)
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [f"{TINY}__faketag", "64"]


@pytest.mark.slow
def test_missing_pretrained_weights_give_one_clear_error(cli, root, tmp_path):
    make_dataset(root, "noweights", 3)
    proc = cli.process("embed", "noweights", env={"HF_HOME": str(tmp_path / "empty-hf")})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: Pretrained weights for ViT-B-32 (laion2b_s34b_b79k) are not on this machine")
    for fix in ("HF_HUB_OFFLINE=1", "--pretrained /path/to", "Hugging Face cache"):
        assert fix in proc.stderr


def test_missing_weights_file_is_reported(tmp_path):
    with pytest.raises(ModelWeightsMissing, match="does not exist"):
        load_model(ModelSpec(TINY, str(tmp_path / "nope.pt")), device="cpu")


def test_unknown_model_and_tag_are_user_errors():
    with pytest.raises(UserError, match="Unknown open_clip model"):
        load_model(ModelSpec("NoSuchNet-9", "x"), device="cpu")
    with pytest.raises(UserError, match="Unknown pretrained tag"):
        load_model(ModelSpec("ViT-B-32", "not-a-tag"), device="cpu")


def test_weights_that_do_not_fit_the_architecture(tiny_weights):
    with pytest.raises(UserError, match="do not fit"):
        load_model(ModelSpec("RN50", str(tiny_weights)), device="cpu")


def test_local_dir_schema_without_weights_is_reported(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": CONFIG}))
    with pytest.raises(ModelWeightsMissing, match="no open_clip_model.safetensors"):
        load_model(ModelSpec(f"local-dir:{tmp_path}", None), device="cpu")
