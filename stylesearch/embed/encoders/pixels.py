"""open_clip's evaluation preprocessing without torch (PIL + numpy), and JPEG reduce-on-decode.

torchvision resizes PIL images with PIL itself, so the same resize, crop and normalisation here
give the same tensor; an export checks this against the model's own transform before it is used.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

# Reduce-on-decode keeps every side at least this many times the size the image is resized to,
# so the (box-filtered) draft is resized by the same antialiased filter from >= 2x the pixels:
# tested to change the preprocessed tensor by <= 0.03 on average (normalised units, ~2/255 grey levels).
DRAFT_MARGIN = 2.0


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
        pixels = np.asarray(img.convert("RGB"), dtype=np.uint8).astype(np.float32) / np.float32(255)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    def draft_side(self, width: int, height: int, margin: float = DRAFT_MARGIN) -> int | None:
        """Long side to keep when decoding a JPEG of this size (images.load_rgb's `draft`); None: full size.

        Only reductions (1/8, 1/4, 1/2) that divide both sides exactly: a partial last block
        would stretch the picture by a fraction of a pixel.
        """
        rw, rh = self.resized_size(width, height)
        for s in (8, 4, 2):
            if width % s == 0 and height % s == 0 and min(width / s / rw, height / s / rh) >= margin:
                return max(width, height) // s
        return None


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
