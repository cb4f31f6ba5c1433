"""Export a model's towers to ONNX once (torch is loaded anyway), checked against torch, with a stamp.

Under DatasetPaths.onnx_dir(key), `export.json` names each tower's files: text-V.onnx (+ .data)
with vocab-V.txt.gz, image-V.onnx, image-int8-V.onnx. Files get a new version V, are built in a
temporary folder and moved in before the stamp is replaced; files no stamp names are removed.
Readers (encoders/onnx.py) validate the stamp and fall back to torch when anything is off.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import StyleSearchError, UserError
from ..store.files import TEMP_MARK, atomic_write_json, file_mode, now_iso, writer_lock
from .encoders.base import EncoderOptions
from .encoders.onnx import EXPORT_FORMAT, STAMP, OnnxEncoder, OnnxExport, load_export, read_stamp, unit_rows

TOWERS = ("text", "image", "image-int8")
MIN_COSINE = 0.9999  # an exported tower must agree this well with torch on the probes
PROBE_PROMPTS = ["a photo of a cat", "red stripes", "Film grain portrait, 35mm!", "Ünïcödé café — naïve façade",
                 "東京の夜景", "emoji 🐱🔥 and &amp; entities", "   spaced\tout\nlines  ", "x", "",
                 "don't stop: it's 3.14 o'clock", " ".join(["a very long caption"] * 40)]


class ExportFailed(StyleSearchError):
    """A tower could not be exported or did not match torch; queries keep using torch."""


class Unsupported(ExportFailed):
    """The model's tokenizer or preprocessing has no torch-free equivalent here."""


def export_onnx(paths, spec, model=None, towers=("text",), force: bool = False, lock: bool = True,
                required=()) -> dict:
    """Export the requested towers that have no valid export yet (all of them with `force`).

    'image-int8' implies 'image'. Towers that cannot be exported are reported under `skipped`;
    those in `required` raise instead. Returns a summary of what was exported and kept.
    """
    _check_writable(paths, spec.key)
    _check_weights(spec)
    start = time.perf_counter()
    with writer_lock(paths) if lock else contextlib.nullcontext():
        old = load_export(paths, spec.key)
        wanted = [t for t in TOWERS if t in towers or (t == "image" and "image-int8" in towers)]
        todo = [t for t in wanted if force or old is None or old.tower(t) is None]
        errors: dict[str, ExportFailed] = {}
        stamp = old.stamp if old else None
        if todo:
            stamp, errors = _export(paths, spec, model, todo, old)
    for name in required:
        if name in errors:
            raise errors[name]
    present = sorted((stamp or {}).get("towers", {}))
    return {"model": spec.key, "folder": str(paths.onnx_dir(spec.key)), "exported": [t for t in todo if t in present],
            "kept": [t for t in present if t not in todo], "skipped": {k: v.message for k, v in errors.items()},
            "seconds": round(time.perf_counter() - start, 2), **_sizes(stamp)}


def export_text_after_embedding(paths, spec, model, progress=None) -> str | None:
    """Export the text tower once, with the model an embedding run loaded; a warning line if that fails."""
    from ..progress import step

    export = load_export(paths, spec.key)
    if export is not None and export.tower("text") is not None:
        return None
    try:
        with step(progress, "exporting the text tower to ONNX (once per model)"):
            export_onnx(paths, spec, model, towers=("text",), lock=False, required=("text",))
    except Unsupported:
        return None  # e.g. a Hugging Face tokenizer: text queries use torch, as before
    except StyleSearchError as exc:
        return f"ONNX export of the text tower skipped: {exc.message}"
    except Exception as exc:  # optional speed-up: never fail an embedding run because of it
        return f"ONNX export of the text tower failed ({type(exc).__name__}: {exc}); text searches will load torch."
    return None


def _check_writable(paths, model_key: str) -> None:
    folder = paths.onnx_dir(model_key)
    target = next(p for p in (folder, folder.parent, paths.home, paths.home.parent) if p.exists())
    if not os.access(target, os.W_OK):
        raise UserError(f"Dataset {paths.name!r} is read-only here, so no ONNX export can be written.",
                        "Export where the dataset is writable; searches keep working with torch.", dataset=paths.name)


def _check_weights(spec) -> None:
    """A weights file's key carries its fingerprint: a different file must not be exported under the old key."""
    from .models import ModelSpec

    weights = spec.pretrained or ""
    if spec.stored_key and os.path.isfile(weights) and ModelSpec(spec.name, weights).key != spec.stored_key:
        raise UserError(f"The weights of {spec.key} changed since the dataset was embedded with them.",
                        "Embed with the current weights, or restore the weights file the vectors were made with.")


def _export(paths, spec, model, todo: list[str], old: OnnxExport | None) -> tuple[dict, dict]:
    from .models import load_model

    model = model or load_model(spec, "cpu")
    folder = paths.onnx_dir(spec.key)
    folder.mkdir(parents=True, exist_ok=True)
    build = Path(folder / f".build{TEMP_MARK}{secrets.token_hex(4)}")
    build.mkdir()
    version = secrets.token_hex(4)
    towers, errors = dict(old.stamp["towers"]) if old else {}, {}
    try:
        net = _cpu_module(model)
        for name in todo:
            if name == "image-int8" and "image" in errors:
                errors[name] = errors["image"]
                continue
            try:
                towers[name] = _BUILDERS[name](model, net, build, version, towers)
            except ExportFailed as exc:
                errors[name] = exc
            except Exception as exc:  # torch.onnx and onnxruntime raise many types; torch queries still work
                errors[name] = ExportFailed(f"The {name} tower could not be exported ({type(exc).__name__}: "
                                            f"{str(exc)[:200]}).")
        for name in todo:
            if name in towers and name not in errors:
                _move_in(build, folder, towers[name]["files"])
        stamp = _stamp(spec, model, towers)
        atomic_write_json(folder / STAMP, stamp)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    _remove_unlisted(folder, stamp)
    return stamp, errors


def _cpu_module(model):
    """The open_clip module on the CPU in fp32 (a copy when the embedding ran on a GPU)."""
    import copy

    return model.model if model.device == "cpu" else copy.deepcopy(model.model).float().cpu().eval()


def _stamp(spec, model, towers: dict) -> dict:
    import onnx
    import onnxruntime
    import open_clip
    import torch

    from ..version import __version__
    from .models import _file_fingerprint

    weights = spec.pretrained if spec.pretrained and os.path.isfile(spec.pretrained) else None
    return {"format": EXPORT_FORMAT, "model_key": spec.key, "model": spec.name, "pretrained": spec.pretrained,
            "weights_fingerprint": _file_fingerprint(weights) if weights else None, "dim": int(model.dim),
            "created": now_iso(), "towers": towers,
            "versions": {"stylesearch": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
                         "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}}


def _save(module, example, path: Path, input_name: str, dynamic: dict) -> dict:
    """torch.onnx (dynamo) export with external weights; returns {file name: size}."""
    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, input_names=[input_name],
                                    output_names=["features"], dynamic_shapes=(dynamic,), verbose=False)
        program.save(str(path), external_data=True)
    return _files(path)


def _files(path: Path) -> dict:
    return {p.name: p.stat().st_size for p in (path, path.with_name(path.name + ".data")) if p.exists()}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(unit_rows(a) * unit_rows(b), axis=1)


def _check_agreement(what: str, onnx_out: np.ndarray, torch_out: np.ndarray) -> float:
    worst = float(_cosines(onnx_out, torch_out).min())
    if not worst >= MIN_COSINE:
        raise ExportFailed(f"The exported {what} tower disagrees with torch (cosine {worst:.5f}).")
    return round(worst, 6)


# ---------------------------------------------------------------- text tower


def _tokenizer_entry(tokenizer) -> tuple[dict, list]:
    """The torch-free description of an open_clip tokenizer, or Unsupported."""
    from open_clip import tokenizer as oc

    cleaners = {oc._clean_lower: "lower", oc._clean_whitespace: "whitespace", oc._clean_canonicalize: "canonicalize"}
    if type(tokenizer) is not oc.SimpleTokenizer or tokenizer.reduction_fn is not None \
            or tokenizer.clean_fn not in cleaners:
        raise Unsupported(f"The model's tokenizer ({type(tokenizer).__name__}) has no torch-free equivalent here.")
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)
    specials = [tokenizer.decoder[i] for i in tokenizer.all_special_ids]
    return {"kind": "clip-bpe", "clean": cleaners[tokenizer.clean_fn], "context_length": tokenizer.context_length,
            "special_tokens": specials}, merges


def _export_text(model, net, build: Path, version: str, towers: dict) -> dict:
    import torch

    from .tokens import ClipTokenizer, write_merges

    entry, merges = _tokenizer_entry(model.tokenizer)
    vocab = build / f"vocab-{version}.txt.gz"
    write_merges(vocab, merges)
    ours = ClipTokenizer.from_file(vocab, context_length=entry["context_length"], cleaning=entry["clean"],
                                   special_tokens=entry["special_tokens"])
    ids = ours(PROBE_PROMPTS)
    if ours.encoder != model.tokenizer.encoder or not np.array_equal(ids, model.tokenizer(PROBE_PROMPTS).numpy()):
        raise Unsupported("The torch-free tokenizer does not reproduce the model's token ids.")
    module, trim = _text_module(net, ids, ours.eot)
    path = build / f"text-{version}.onnx"
    dynamic = {0: torch.export.Dim("batch", min=1, max=4096)}
    if trim:
        dynamic[1] = torch.export.Dim("length", min=2, max=ids.shape[1])
    example = torch.from_numpy(ids[:2, : min(7, ids.shape[1])] if trim else ids[:2])
    files = _save(module, example, path, "tokens", dynamic)
    tower = {"file": path.name, "files": {**files, vocab.name: vocab.stat().st_size}, "trim": trim,
             "tokenizer": {**entry, "file": vocab.name}}
    with torch.inference_mode():
        expected = net.encode_text(torch.from_numpy(ids)).numpy()
    from .encoders.onnx import OnnxExport, OnnxTextTower

    got = OnnxTextTower(OnnxExport(build, {"towers": {"text": tower}})).encode(PROBE_PROMPTS)
    return {**tower, "cosine_to_torch": _check_agreement("text", got, expected)}


def _text_module(net, ids: np.ndarray, eot: int):
    """A module running only up to the longest prompt's end-of-text token when that changes nothing."""
    import torch

    class Text(torch.nn.Module):
        def __init__(self, trim: bool):
            super().__init__()
            self.net, self.trim = net, trim

        def forward(self, tokens):
            return _trimmed_text(self.net, tokens) if self.trim else self.net.encode_text(tokens)

    if all(getattr(net, a, None) is not None for a in ("attn_mask", "positional_embedding", "token_embedding")):
        length = int((ids == eot).argmax(axis=1).max()) + 1
        with torch.inference_mode():
            full = net.encode_text(torch.from_numpy(ids)).numpy()
            try:
                short = Text(True)(torch.from_numpy(ids[:, :length])).numpy()
            except Exception:  # not the plain CLIP text tower this shortcut assumes
                short = None
        if short is not None and float(_cosines(short, full).min()) >= 0.999999:
            return Text(True), True
    return Text(False), False


def _trimmed_text(net, tokens):
    """open_clip's CLIP.encode_text on tokens cut after the end-of-text token (the causal mask makes it exact)."""
    import torch
    from open_clip.transformer import text_global_pool

    n = tokens.shape[1]
    cast = net.transformer.get_cast_dtype()
    x = net.token_embedding(tokens).to(cast) + net.positional_embedding[:n].to(cast)
    x = net.ln_final(net.transformer(x, attn_mask=net.attn_mask[:n, :n]))
    x = text_global_pool(x, tokens, net.text_pool_type, eos_token_id=getattr(net, "text_eos_id", None))
    proj = net.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


# ---------------------------------------------------------------- image towers


def _image_preprocess(model):
    from .encoders.pixels import matching_preprocess, probe_images

    found = matching_preprocess(model, probe_images())
    if found is None:  # no preprocessing config, or one the torch-free port does not reproduce
        raise Unsupported("The model's image preprocessing is undescribed or has no torch-free equivalent here.")
    return found


def _export_image(model, net, build: Path, version: str, towers: dict) -> dict:
    import torch

    pre, pixels = _image_preprocess(model)

    class Image(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, px):
            return self.net.encode_image(px)

    path = build / f"image-{version}.onnx"
    batch = torch.export.Dim("batch", min=1, max=4096)
    files = _save(Image(), torch.from_numpy(pixels[:2]), path, "pixels", {0: batch})
    with torch.inference_mode():
        expected = net.encode_image(torch.from_numpy(pixels)).numpy()
    from .encoders.onnx import session

    got = session(path).run(None, {"pixels": pixels})[0]
    return {"file": path.name, "files": files, "preprocess": pre.as_dict(),
            "cosine_to_torch": _check_agreement("image", got, expected)}


def _export_image_int8(model, net, build: Path, version: str, towers: dict) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .encoders.onnx import session
    from .encoders.pixels import Preprocess, probe_images
    from .models import _quiet_root_logger  # the quantizer advises on the root logger

    source = towers["image"]
    folder = build if (build / source["file"]).exists() else build.parent
    path = build / f"image-int8-{version}.onnx"
    with warnings.catch_warnings(), _quiet_root_logger(True):
        warnings.simplefilter("ignore")
        quantize_dynamic(folder / source["file"], path, op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, use_external_data_format=True)
    pixels = np.stack(list(map(Preprocess.from_config(source["preprocess"]), probe_images())))
    exact = session(folder / source["file"]).run(None, {"pixels": pixels})[0]
    cos = _cosines(session(path).run(None, {"pixels": pixels})[0], exact)
    return {"file": path.name, "files": _files(path), "cosine_to_fp32": round(float(cos.min()), 5)}


_BUILDERS = {"text": _export_text, "image": _export_image, "image-int8": _export_image_int8}


def _move_in(build: Path, folder: Path, files: dict) -> None:
    for name in files:
        src = build / name
        if src.exists():
            with open(src, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(src, file_mode())
            os.replace(src, folder / name)


def remove_interrupted_exports(paths, model_key: str) -> None:
    """Delete what an interrupted export left (build folders, unnamed versions); call holding the writer lock."""
    folder = paths.onnx_dir(model_key)
    if folder.is_dir():
        _remove_unlisted(folder, read_stamp(folder) or {})


def _remove_unlisted(folder: Path, stamp: dict) -> None:
    """Delete files of replaced versions and leftovers of interrupted exports."""
    keep = {STAMP} | {n for t in stamp.get("towers", {}).values() for n in t.get("files", {})}
    for entry in folder.iterdir():
        if entry.name in keep:
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _sizes(stamp: dict | None) -> dict:
    towers = (stamp or {}).get("towers", {})
    out = {"bytes": sum(sum(t.get("files", {}).values()) for t in towers.values())}
    if "image-int8" in towers:
        out["int8_cosine_to_fp32"] = towers["image-int8"].get("cosine_to_fp32")
    return out


def export_status(paths, model_key: str) -> dict:
    """What the dataset's export of a model holds: towers usable now, and why not otherwise."""
    stamp = read_stamp(paths.onnx_dir(model_key))
    export = load_export(paths, model_key)
    if export is None:
        return {"model": model_key, "towers": [], "state": "stale" if stamp else "missing"}
    usable = [t for t in TOWERS if export.tower(t) is not None]
    return {"model": model_key, "towers": usable, "state": "ok" if usable else "damaged",
            "created": export.stamp.get("created"), "versions": export.stamp.get("versions")}


def onnx_encoder(paths, spec, options: EncoderOptions, backend: str, model=None):
    """The ONNX encoder of a dataset's model, exporting the image tower first when needed."""
    int8 = backend == "onnx-int8"
    export = load_export(paths, spec.key)
    if export is None or export.tower("image-int8" if int8 else "image") is None:
        export_onnx(paths, spec, model, towers=("text", "image-int8" if int8 else "image"), lock=False,
                    required=("image-int8" if int8 else "image",))
        export = load_export(paths, spec.key)
    return OnnxEncoder(export, options, int8=int8)
