"""open_clip model loading: pretrained tags via the Hugging Face cache, local weights, schemas.

Weights are resolved *before* the model is built so that a missing checkpoint becomes one
clear ModelWeightsMissing error instead of a silently random model or a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..choices import PRECISIONS
from ..cores import available_cores
from ..errors import ModelWeightsMissing, UserError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
# Preferred weights of well-known architectures; other models take open_clip's first listed tag.
PREFERRED_TAGS = {DEFAULT_MODEL: DEFAULT_PRETRAINED, "ViT-B-16": "laion2b_s34b_b88k",
                  "ViT-L-14": "laion2b_s32b_b82k", "ViT-H-14": "laion2b_s32b_b79k"}
# The Hugging Face repos of those weights (as in open_clip's pretrained table: a test compares), so that
# weights missing offline are reported before torch and open_clip are imported.
PREFERRED_HUB = {DEFAULT_MODEL: "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
                 "ViT-B-16": "laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
                 "ViT-L-14": "laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
                 "ViT-H-14": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"}
RANDOM = "random"  # explicit random init (demo / tests); deterministic seed
SCHEMAS = ("hf-hub:", "local-dir:")  # model names that carry their own weights
_CONFIG_DIR = Path(__file__).parent / "model_configs"

_FIX_HINT = (
    "Fix it one of these ways: (1) on a machine with internet, load the same model once so the "
    "weights land in the Hugging Face cache ($HF_HOME, default ~/.cache/huggingface), then copy that "
    "cache here and set HF_HUB_OFFLINE=1; (2) download the checkpoint file yourself and give its path "
    "(open_clip_model.safetensors, .bin or .pt) as the pretrained weights; (3) choose a model and "
    "pretrained tag that are already cached; (4) to try the pipeline without weights, use the pretrained "
    "tag 'random' (a randomly initialised model: results are not meaningful)."
)


def has_schema(name: str) -> bool:
    """Whether a model name is an hf-hub:/local-dir: reference that carries its own weights."""
    return name.startswith(SCHEMAS)


@dataclass(frozen=True)
class ModelSpec:
    """Which model to use: an open_clip name (or hf-hub:/local-dir: schema) and weights source.

    `stored_key` keeps the catalog's key of an embedded model (a weights file may have moved).
    """

    name: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    stored_key: str | None = None

    @property
    def has_schema(self) -> bool:
        return has_schema(self.name)

    @property
    def key(self) -> str:
        """Storage key: vectors of different models/weights never mix."""
        if self.stored_key:
            return self.stored_key
        if self.has_schema:
            source = "hub" if self.name.startswith("hf-hub:") else "dir"
            tail = self.name.split(":", 1)[1]
            if source == "dir":
                tail = f"{Path(tail).name}-{_short_hash(str(Path(tail).resolve()))}"
            return _slug(f"{source}-{tail}")
        weights = self.pretrained or RANDOM
        if os.path.isfile(weights):
            weights = f"file-{_file_fingerprint(weights)}"
        return _slug(f"{self.name}__{weights}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _file_fingerprint(path: str) -> str:
    """Cheap identity of a weights file: size plus the hash of its first and last 4 MiB."""
    digest = hashlib.sha256(str(os.path.getsize(path)).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(4 << 20))
        fh.seek(max(0, os.path.getsize(path) - (4 << 20)))
        digest.update(fh.read())
    return digest.hexdigest()[:12]


def default_pretrained(name: str) -> str:
    """The weights a model name means when no pretrained tag is given."""
    if name in PREFERRED_TAGS:
        return PREFERRED_TAGS[name]
    import open_clip

    _register_configs()
    tags = open_clip.list_pretrained_tags_by_model(name)
    if not tags:
        known = name.replace("/", "-") in open_clip.list_models()
        raise UserError(f"Model {name!r} has no pretrained tags." if known else f"Unknown open_clip model {name!r}.",
                        "Give its weights as a file path (or 'random' for a random init)." if known else
                        "Use a name from open_clip.list_models(), or an hf-hub:ORG/REPO or local-dir:/path reference.")
    return tags[0]


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"Device {requested!r} requested but CUDA is not available.", "Use the cpu or auto device.")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def autocast_dtype(device: str, precision: str):
    """The autocast dtype for encoding, or None for plain fp32."""
    import torch

    if precision == "fp32" or (precision == "auto" and device == "cpu"):
        return None
    if precision == "bf16" or (precision == "auto" and device.startswith("cuda") and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _register_configs() -> None:
    import open_clip

    if "stylesearch-tiny" not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_DIR)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


HUB_PROBE_SECONDS = 1.5  # how long to wait for the Hub before calling this machine offline


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached now (None when it can): HF_HUB_OFFLINE, or no
    connection to its host within HUB_PROBE_SECONDS (name lookup included), instead of the long
    retries of a download on an offline machine."""
    if _offline():
        return "HF_HUB_OFFLINE is set"
    import socket
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Timeout
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    address = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    pool = ThreadPoolExecutor(1)
    try:
        pool.submit(lambda: socket.create_connection(address, timeout=HUB_PROBE_SECONDS).close()).result(
            HUB_PROBE_SECONDS)
        return None
    except Timeout:
        return f"{address[0]} did not answer within {HUB_PROBE_SECONDS:g} s"
    except OSError as exc:
        return f"{address[0]} cannot be reached ({exc.strerror or exc})"
    finally:
        pool.shutdown(wait=False)


def hub_cache_dir(cache_dir: str | None = None) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def _hub_file(repo_id: str, filenames: list[str], cache_dir: str | None = None,
              allow_download: bool = True) -> tuple[str | None, str]:
    """(path, "") of the first of `filenames` in the HF cache, else downloaded when the Hub is
    reachable; (None, why) when neither: which files are missing where, and why none was fetched."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found, ""
    missing = (f"{' or '.join(filenames)} of {repo_id} is not in the Hugging Face cache "
               f"({hub_cache_dir(cache_dir)})")
    offline = "downloads are off" if not allow_download else hub_unreachable()
    if offline:
        return None, f"{missing}, and {offline}."
    from huggingface_hub import hf_hub_download

    for filename in filenames:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir), ""
        except Exception:  # noqa: BLE001 - e.g. not in this repo: try the next name
            continue
    return None, f"{missing}, and could not be downloaded."


def _weight_names(filename: str) -> list[str]:
    base = filename.rsplit(".", 1)[0]
    names = ["open_clip_model.safetensors"] if filename == "open_clip_pytorch_model.bin" else [base + ".safetensors"]
    return names + [filename]


def resolve_tag_checkpoint(name: str, tag: str, cache_dir: str | None = None,
                           allow_download: bool = True) -> tuple[str, dict]:
    """Checkpoint path and pretrained config of an open_clip pretrained tag."""
    from open_clip import list_pretrained_tags_by_model
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        tags = ", ".join(list_pretrained_tags_by_model(name)) or "none"
        raise UserError(f"Unknown pretrained tag {tag!r} for model {name!r}.",
                        f"Known tags: {tags}. Or give the path of a weights file.")
    path, why = None, "it names no download."
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        path, why = _hub_file(repo_id, _weight_names(filename or "open_clip_pytorch_model.bin"), cache_dir,
                              allow_download)
    elif cfg.get("url"):
        cached = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        path = str(cached) if cached.is_file() else None
        why = f"{cached} does not exist."
    if path is None:
        raise _weights_missing(name, tag, why)
    return path, cfg


def _weights_missing(name: str, tag: str, why: str) -> ModelWeightsMissing:
    return ModelWeightsMissing(
        f"Pretrained weights for {name} ({tag}) are not on this machine and could not be downloaded: {why}",
        _FIX_HINT)


def check_preferred_weights(spec: ModelSpec) -> None:
    """For the preferred weights of a well-known model, make sure they are cached (or fetched now) before
    torch is imported: on an offline machine the error comes in a second or two, not after the imports."""
    repo = PREFERRED_HUB.get(spec.name)
    if repo is None or spec.pretrained != PREFERRED_TAGS.get(spec.name):
        return
    path, why = _hub_file(repo, _weight_names("open_clip_pytorch_model.bin"))
    if path is None:
        raise _weights_missing(spec.name, spec.pretrained, why)


def weights_cached(spec: ModelSpec) -> bool:
    """Whether the spec's pretrained weights are on this machine (never touches the network)."""
    _register_configs()
    if spec.pretrained in (None, RANDOM) or os.path.isfile(spec.pretrained or ""):
        return True
    try:
        resolve_tag_checkpoint(spec.name, spec.pretrained, allow_download=False)
        return True
    except (ModelWeightsMissing, UserError):
        return False


def _check_schema_weights(spec: ModelSpec) -> None:
    kind, ident = spec.name.split(":", 1)
    if kind == "local-dir":
        folder = Path(ident)
        if not (folder / "open_clip_config.json").is_file():
            raise ModelWeightsMissing(f"{folder} has no open_clip_config.json.", _FIX_HINT)
        if not any((folder / n).is_file() for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")):
            raise ModelWeightsMissing(f"{folder} has no open_clip_model.safetensors or open_clip_pytorch_model.bin.",
                                      _FIX_HINT)
        return
    for names in (["open_clip_config.json"], ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
        path, why = _hub_file(ident, names)
        if path is None:
            raise ModelWeightsMissing(f"Model {spec.name} is not on this machine and could not be downloaded: {why}",
                                      _FIX_HINT)


class LoadedModel:
    """An open_clip model ready to embed images and text on one device."""

    def __init__(self, spec: ModelSpec, model, preprocess, tokenizer, device: str, precision: str):
        self.spec = spec
        self.key = spec.key
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.amp_dtype = autocast_dtype(device, precision)
        self.dim = int(model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None
                       else self._probe_dim())

    def _probe_dim(self) -> int:
        return int(self.encode_text(["probe"]).shape[1])

    def _run(self, fn, batch):
        import torch

        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast(device_type=self.device.split(":")[0], dtype=self.amp_dtype):
                    out = fn(batch.to(self.device, non_blocking=True))
            else:
                out = fn(batch.to(self.device))
            out = torch.nn.functional.normalize(out.float(), dim=-1)
        return out.cpu().numpy().astype(np.float32)

    def encode_images(self, pixels) -> np.ndarray:
        """L2-normalised float32 embeddings of a preprocessed image batch (N, 3, H, W)."""
        return self._run(self.model.encode_image, pixels)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 embeddings of text prompts."""
        return self._run(self.model.encode_text, self.tokenizer(texts))


def load_model(spec: ModelSpec, device: str = "auto", precision: str = "auto") -> LoadedModel:
    """Build the model with its weights; raises ModelWeightsMissing/UserError with a fix."""
    check_preferred_weights(spec)
    import open_clip
    import torch

    if precision not in PRECISIONS:
        raise UserError(f"Unknown precision {precision!r}.", f"Choose one of: {', '.join(PRECISIONS)}.")
    _register_configs()
    device = pick_device(device)
    kwargs: dict = {}
    if spec.has_schema:
        _check_schema_weights(spec)
        pretrained = None
    elif spec.name.replace("/", "-") not in open_clip.list_models():
        raise UserError(f"Unknown open_clip model {spec.name!r}.",
                        "Use a name from open_clip.list_models(), or an hf-hub:ORG/REPO or local-dir:/path reference.")
    elif spec.pretrained in (None, RANDOM):
        torch.manual_seed(0)  # deterministic random init so reruns give the same vectors
        pretrained = None
    elif os.path.isfile(spec.pretrained):
        pretrained = spec.pretrained
    elif os.path.sep in spec.pretrained or spec.pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")):
        raise ModelWeightsMissing(f"Weights file {spec.pretrained} does not exist.", _FIX_HINT)
    else:
        pretrained, cfg = resolve_tag_checkpoint(spec.name, spec.pretrained)
        kwargs = _tag_overrides(cfg)
    try:
        with _quiet_root_logger(pretrained is None and not spec.has_schema):
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.name, pretrained=pretrained, device=device, **kwargs)
    except (RuntimeError, AssertionError, KeyError, ValueError) as exc:
        if pretrained is None and not spec.has_schema:
            raise
        raise UserError(f"The weights do not fit model {spec.name!r} ({type(exc).__name__}: {str(exc)[:200]}).",
                        "Check that the model names the architecture the checkpoint was trained with.") from None
    model.eval()
    if device == "cpu":
        torch.set_num_threads(available_cores())
    return LoadedModel(spec, model, preprocess, open_clip.get_tokenizer(spec.name), device, precision)


@contextlib.contextmanager
def _quiet_root_logger(active: bool):
    """open_clip warns on the root logger about random init; an explicit 'random' needs no warning."""
    root = logging.getLogger()
    level = root.level
    if active:
        root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _tag_overrides(cfg: dict) -> dict:
    """Preprocessing and activation settings that a pretrained tag carries."""
    out: dict = {}
    if cfg.get("quick_gelu"):
        out["force_quick_gelu"] = True
    for src, dst in (("mean", "image_mean"), ("std", "image_std"),
                     ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
        if cfg.get(src) is not None:
            out[dst] = cfg[src]
    return out
