"""What a model's configuration says, read without loading the model (no torch, no open_clip import):
the size of its embeddings, so vectors computed elsewhere can be checked against it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..errors import UserError
from .models import ModelSpec

_OWN_CONFIGS = Path(__file__).parent / "model_configs"


def _config_files(spec: ModelSpec) -> list[Path]:
    if spec.name.startswith("local-dir:"):
        return [Path(spec.name.split(":", 1)[1]).expanduser() / "open_clip_config.json"]
    if spec.has_schema:
        return _hub_config(spec.name.split(":", 1)[1])
    found = importlib.util.find_spec("open_clip")  # its folder only: open_clip itself is not imported
    folders = [_OWN_CONFIGS] + [Path(p) / "model_configs" for p in (found.submodule_search_locations or [])
                                ] if found else [_OWN_CONFIGS]
    return [folder / f"{spec.name}.json" for folder in folders]


def _hub_config(repo_id: str) -> list[Path]:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return []
    found = try_to_load_from_cache(repo_id, "open_clip_config.json")
    return [Path(found)] if isinstance(found, str) else []


def embedding_dim(spec: ModelSpec) -> int:
    """The dimension of `spec`'s embeddings, from its configuration file (UserError when none is found)."""
    for file in _config_files(spec):
        try:
            config = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        config = config.get("model_cfg", config) if isinstance(config, dict) else {}
        dim = config.get("embed_dim") if isinstance(config, dict) else None
        if isinstance(dim, int) and dim > 0:
            return dim
    raise UserError(f"Cannot tell the embedding size of model {spec.name!r}: no configuration of it was found.",
                    "Check the model name (open_clip's names, e.g. ViT-B-32), or fetch the model once.")
