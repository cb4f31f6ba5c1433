"""open_clip's evaluation preprocessing without torch (PIL + numpy), JPEG reduce-on-decode, and the
batch decoder that runs beside a model.

torchvision resizes PIL images with PIL itself, so the same resize, crop and normalisation here
give the same tensor; an export checks this against the model's own transform before it is used.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

# Reduce-on-decode (JPEG DCT scaling by 2, 4 or 8) keeps every side at least this many times the
# resized size, so the draft is brought down by the same antialiased resize from >= 2x the pixels:
# tested to move the preprocessed tensor by <= 0.03 on average (normalised units, ~2/255 grey levels)
# even on sharp synthetic stripes. A margin of 1 (1/4 instead of 1/2 for a 1,600 x 1,200 photo) saved
# another ~30% of decode + resize time but moved stripes by 0.048 (photos by 0.009).
DRAFT_MARGIN = 2.0
FIRST_BATCH = 8  # images in an embedding run's first batch (decoded before the model can start)
PIXEL_TOLERANCE = 1e-4  # torch-free preprocessing vs the model's own transform (normalised units)


@dataclass(frozen=True)
class Preprocess:
    """Resize, crop or pad, scale to [0, 1] and normalise: one image -> float32 (3, H, W)."""

    size: tuple[int, int]  # (height, width)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"  # bicubic | bilinear (open_clip's 'random' is bicubic at eval)
    resize_mode: str = "shortest"  # shortest (then centre crop) | longest (then pad) | squash
    fill_color: int = 0

    @classmethod
    def from_config(cls, cfg: dict) -> "Preprocess":
        """From open_clip's `model.visual.preprocess_cfg` or from `as_dict()`."""
        size = cfg["size"]
        size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size[-2:])
        return cls(size, tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"])),
                   cfg.get("interpolation") or "bicubic", cfg.get("resize_mode") or "shortest",
                   int(cfg.get("fill_color") or 0))

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, as torchvision/open_clip compute it."""
        th, tw = self.size
        if self.resize_mode == "squash":
            return tw, th
        if self.resize_mode == "shortest" and th == tw:  # torchvision Resize(int): short side, long floored
            if width <= height:
                return th, int(th * height / width)
            return int(th * width / height), th
        ratios = (height / th, width / tw)
        ratio = max(ratios) if self.resize_mode == "longest" else min(ratios)
        return round(width / ratio), round(height / ratio)

    def _resample(self):
        from PIL import Image

        if self.resize_mode == "shortest" and self.size[0] != self.size[1]:
            return Image.BICUBIC  # open_clip's ResizeKeepRatio for non-square targets ignores the setting
        return Image.BILINEAR if self.interpolation == "bilinear" else Image.BICUBIC

    def __call__(self, img) -> np.ndarray:
        size = self.resized_size(*img.size)
        if size != img.size:
            img = img.resize(size, self._resample())
        if self.resize_mode != "squash":
            img = _center_crop_or_pad(img, self.size, self.fill_color if self.resize_mode == "longest" else 0)
        return self.normalise(np.asarray(img.convert("RGB"), dtype=np.uint8))

    def normalise(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (3, H, W): (v / 255 - mean) / std by table look-up (the same float32
        arithmetic, done once per grey level instead of once per pixel)."""
        out = np.empty((3, *rgb.shape[:2]), np.float32)
        for c, table in enumerate(_tables(self.mean, self.std)):
            out[c] = table[rgb[..., c]]
        return out

    def draft_side(self, width: int, height: int, margin: float = DRAFT_MARGIN) -> int | None:
        """Long side to keep when decoding a JPEG of this size (images.load_rgb's `draft`); None: full size.

        Only reductions (1/8, 1/4, 1/2) that divide both sides exactly: a partial last block
        stretches the picture by a fraction of a pixel, which moved sharp stripes at 1,601 x 1,201
        by 0.11 on average (0.02 at 1,600 x 1,200).
        """
        rw, rh = self.resized_size(width, height)
        for s in (8, 4, 2):
            if width % s == 0 and height % s == 0 and min(width / s / rw, height / s / rh) >= margin:
                return max(width, height) // s
        return None


@lru_cache(maxsize=8)
def _tables(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: each channel's normalised value of every 8-bit level."""
    levels = np.arange(256, dtype=np.float32)[:, None] / np.float32(255)
    return np.ascontiguousarray(((levels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).T)


def probe_images() -> list:
    """Generated images of several sizes and shapes on which a torch-free preprocessing is checked
    against the model's own transform (before an ONNX export, and before torch embeds with it)."""
    from ...ingest.samples import render

    cases = (("stripes", (640, 480)), ("noise", (333, 500)), ("rings", (96, 40)), ("dots", (224, 224)))
    return [render(kind, "warm", i, size) for i, (kind, size) in enumerate(cases)]


def matching_preprocess(model, probes: list, tolerance: float = PIXEL_TOLERANCE):
    """(Preprocess, its tensors of the probe images) when the loaded open_clip model's config describes
    a preprocessing that reproduces the model's own transform within `tolerance` on `probes`, else None."""
    cfg = getattr(getattr(model.model, "visual", None), "preprocess_cfg", None)
    if not cfg:
        return None
    pre = Preprocess.from_config(cfg)
    ours = np.stack([pre(im) for im in probes])
    theirs = np.stack([model.preprocess(im).numpy() for im in probes])
    if ours.shape != theirs.shape or float(np.abs(ours - theirs).max()) > tolerance:
        return None
    return pre, ours


def _center_crop_or_pad(img, size: tuple[int, int], fill: int):
    """torchvision's center_crop (and open_clip's CenterCropOrPad): pad to fit, then crop the middle."""
    from PIL import Image

    th, tw = size
    w, h = img.size
    if tw > w or th > h:
        canvas = Image.new(img.mode, (max(w, tw), max(h, th)), (fill,) * len(img.getbands()))
        canvas.paste(img, ((tw - w) // 2 if tw > w else 0, (th - h) // 2 if th > h else 0))
        img, (w, h) = canvas, canvas.size
        if (w, h) == (tw, th):
            return img
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def decode(source, preprocess: Preprocess | None = None):
    """Decode an image for a model: JPEG files are reduced on decode when `preprocess` allows it
    (in-archive members and bytes are decoded whole: their header would be read twice)."""
    from ...store.images import image_size, load_rgb

    draft = None
    if preprocess is not None and isinstance(source, (str, os.PathLike)):
        draft = preprocess.draft_side(*image_size(source))
    return load_rgb(source, draft=draft)


def load_item(source, transform, draft: Preprocess | None = None):
    """(transform(image), None) for a decodable file, else (None, the reason): one bad file never stops a run."""
    from ...store.images import BadImage

    try:
        return transform(decode(source, draft)), None
    except BadImage as exc:
        return None, exc.message
    except OSError as exc:
        return None, exc.strerror or str(exc)


def decoded_batches(files: Sequence[Path], preprocess: Preprocess, batch_size: int,
                    workers: int) -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]]]]:
    """(indices, pixels, failures) per batch; files are decoded in `workers` threads (0: here).

    The next batch is decoded while the caller runs the model on this one, and no further: at most
    two batches are in memory however slow the model (an unbounded read-ahead held every decoded
    image of a run whose model was slower than its decoding). The first batch has at most
    FIRST_BATCH images, so the model starts after a few decodes instead of a whole batch. Threads,
    not processes: PIL decodes and resizes and onnxruntime and torch run with the GIL released, and
    nothing is pickled or forked."""
    load = partial(load_item, transform=preprocess, draft=preprocess)
    edges = [0, *range(min(FIRST_BATCH, batch_size), len(files), batch_size)] if files else []
    spans = list(zip(edges, edges[1:] + [len(files)]))
    if not workers:
        for start, end in spans:
            yield _stack(start, [load(f) for f in files[start:end]])
        return
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(workers, thread_name_prefix="stylesearch-decode")
    try:
        pending = [pool.submit(load, f) for f in files[slice(*spans[0])]] if spans else []
        for n, (start, _) in enumerate(spans):
            results = [future.result() for future in pending]
            following = spans[n + 1] if n + 1 < len(spans) else (0, 0)
            pending = [pool.submit(load, f) for f in files[slice(*following)]]
            yield _stack(start, results)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stack(start: int, results: list) -> tuple[list[int], np.ndarray | None, list[tuple[int, str]]]:
    good = [(start + n, pixels) for n, (pixels, _) in enumerate(results) if pixels is not None]
    bad = [(start + n, error) for n, (pixels, error) in enumerate(results) if pixels is None]
    return [i for i, _ in good], (np.stack([p for _, p in good]) if good else None), bad
