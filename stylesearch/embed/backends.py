"""Which encoder embeds a dataset: engines (where encoding runs) and backends (what runs the image
tower) registered in one table each.

Backends: torch (open_clip in this process, any device), onnx (the dataset's ONNX export of the
image tower on the CPU) and onnx-int8 (its int8-quantised copy, which reports its cosine agreement
with fp32). `auto` takes onnx on the CPU, where it is the faster exact backend. Engines: local (this
process) and ray (a Ray cluster). A new backend or engine is one function and one table entry.
"""

from __future__ import annotations

from typing import Callable

from ..choices import EMBED_BACKENDS, EMBED_ENGINES
from ..errors import StyleSearchError, UserError
from .encoders.base import Encoder, EncoderOptions

# With no image export yet, `auto` uses torch for fewer pending images than this: exporting the
# image tower takes about as long as embedding ~150 images with torch on the CPU.
ONNX_WORTH_EXPORTING = 256


def _torch(spec, options: EncoderOptions, model, paths) -> Encoder:
    from .encoders.local import LocalEncoder

    return LocalEncoder.load(spec, options, model)


def _onnx(backend: str) -> Callable[..., Encoder]:
    def make(spec, options: EncoderOptions, model, paths) -> Encoder:
        from .export import onnx_encoder

        if paths is None:
            raise UserError(f"The {backend} backend needs a dataset to keep its ONNX export in.")
        return onnx_encoder(paths, spec, options, backend, model)
    return make


BACKENDS: dict[str, Callable[..., Encoder]] = {"torch": _torch, "onnx": _onnx("onnx"), "onnx-int8": _onnx("onnx-int8")}


def _local(spec, options: EncoderOptions, model, paths, pending: int) -> Encoder:
    backend = choose_backend(options, spec, paths, pending)
    try:
        return BACKENDS[backend](spec, options, model, paths)
    except StyleSearchError:  # e.g. an image tower that cannot be exported: `auto` embeds with torch
        if options.backend != "auto" or backend == "torch":
            raise
    return BACKENDS["torch"](spec, options, model, paths)


def _ray(spec, options: EncoderOptions, model, paths, pending: int) -> Encoder:
    from .encoders.ray import RayEncoder, RayOptions

    return RayEncoder.load(spec, options, RayOptions(options.ray_address, options.ray_workers, options.ray_gpus),
                           model)


ENGINES: dict[str, Callable[..., Encoder]] = {"local": _local, "ray": _ray}
assert set(BACKENDS) | {"auto"} == set(EMBED_BACKENDS) and set(ENGINES) == set(EMBED_ENGINES)


def choose_backend(options: EncoderOptions, spec, paths=None, pending: int = 0) -> str:
    """The backend `auto` means here: onnx on the CPU when an image export exists or pays off, else torch."""
    if options.backend not in EMBED_BACKENDS:
        raise UserError(f"Unknown embedding backend {options.backend!r}.",
                        f"Choose one of: {', '.join(EMBED_BACKENDS)}.")
    if options.backend != "auto":
        return options.backend
    if paths is None or options.device not in ("auto", "cpu"):
        return "torch"
    from .encoders.onnx import load_export

    export = load_export(paths, spec.key)
    if (export is None or export.tower("image") is None) and pending < ONNX_WORTH_EXPORTING:
        return "torch"
    if options.device == "auto":
        from .models import pick_device

        return "onnx" if pick_device("auto") == "cpu" else "torch"
    return "onnx"


def make_encoder(spec, options: EncoderOptions = EncoderOptions(), model=None, paths=None,
                 pending: int = 0) -> Encoder:
    """The encoder of an engine and backend; `model` reuses an already loaded torch model, `paths` holds
    the dataset's ONNX exports, `pending` (images to embed) tells `auto` whether an export pays off."""
    engine = ENGINES.get(options.engine)
    if engine is None:
        raise UserError(f"Unknown engine {options.engine!r}.", f"Choose one of: {', '.join(EMBED_ENGINES)}.")
    return engine(spec, options, model, paths, pending)
