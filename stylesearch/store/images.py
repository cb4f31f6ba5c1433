"""Safe image decoding: decompression-bomb guard, truncation checks, EXIF orientation."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

from ..errors import StyleSearchError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 64_000_000  # refuse anything larger than ~64 megapixels (decompression-bomb guard)


class BadImage(StyleSearchError):
    """A file that is not a decodable image, is truncated, or is too large to decode safely."""


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _open(source, max_pixels: int):
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage(f"refused: too many pixels ({exc})") from None
        except Exception as exc:  # PIL raises many types for garbage input
            raise BadImage(f"not an image ({type(exc).__name__}: {exc})") from None
    if img.width * img.height > max_pixels:
        raise BadImage(f"refused: {img.width}x{img.height} exceeds {max_pixels} pixels")
    return img


def _stream(source):
    """A file name or stream PIL can open: bytes and in-archive members (read_bytes) become streams."""
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    if not isinstance(source, (str, Path)) and hasattr(source, "read_bytes"):
        try:
            return io.BytesIO(source.read_bytes())
        except (OSError, KeyError) as exc:
            raise BadImage(f"cannot be read ({exc})") from None
    return source


def image_size(path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Width and height from the header, without decoding pixels."""
    with _open(_stream(path), max_pixels) as img:
        return img.size


def load_rgb(source: str | os.PathLike | bytes, draft: int | None = None, max_pixels: int = MAX_PIXELS):
    """Fully decode to an RGB PIL image with EXIF orientation applied (colours as to_rgb makes them).

    `draft` asks JPEG decoders to reduce on decode (by 2, 4 or 8) while keeping the long side
    at least `draft` pixels.
    Raises BadImage for corrupt, truncated or oversized input.
    """
    from PIL import ImageOps

    img = _open(_stream(source), max_pixels)
    try:
        if draft and img.format == "JPEG":
            scale = draft / max(img.size)  # keep the long side >= draft after reduce-on-decode
            img.draft("RGB", (max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))
    except BadImage:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise BadImage(f"cannot decode ({type(exc).__name__}: {exc})") from None


BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white


def to_rgb(img):
    """An 8-bit RGB image of any mode.

    Transparency (alpha, or a transparent palette entry or colour) is composited on white.
    16-bit greys (I;16, I;16B, ...) are divided by 257; 32-bit integer (I) and float (F) greys
    are scaled by their values' range: 0..1 (floats) or 0..255 as 8 bit, 0..65535 as 16 bit,
    else from min(0, lowest) to the highest value. LAB goes through a colour transform.
    """
    from PIL import Image

    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_grey_to_8bit(img)).convert("RGB")
    if img.mode == "LAB":
        return _lab_to_rgb(img)
    if img.mode in ("La", "RGBa") or "A" in img.getbands() or "transparency" in img.info:
        rgba = (img.convert("LA") if img.mode == "La" else img).convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, BACKGROUND + (255,)), rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError:
        raise BadImage(f"unsupported colour mode {img.mode}") from None


def _grey_to_8bit(img):
    """uint8 pixels of a 16-bit (I;16*), 32-bit integer (I) or float (F) grey image."""
    import numpy as np

    if img.mode.startswith("I;16"):
        wide = np.asarray(img)
        return ((wide.astype(np.uint32) + 128) // 257).astype(np.uint8)
    values = np.asarray(img, dtype=np.float32)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    values = np.clip(np.nan_to_num(values, nan=low), low, high)  # NaN as the lowest value, infinities clipped
    if low >= 0 and high <= 1 and img.mode == "F":
        values = values * 255
    elif low >= 0 and high <= 65535 and high > 255:
        values = values / 257
    elif low < 0 or high > 65535:
        base = min(low, 0.0)
        values = (values - base) * (255 / ((high - base) or 1.0))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _lab_to_rgb(img):
    from PIL import ImageCms

    try:
        lab_to_srgb = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                              "LAB", "RGB")
        return ImageCms.applyTransform(img, lab_to_srgb)
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        raise BadImage(f"cannot convert LAB colours ({exc})") from None
