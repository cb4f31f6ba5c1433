"""Safe image decoding: decompression-bomb guard, truncation checks, EXIF orientation."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

from .errors import StyleSearchError

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


def image_size(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Width and height from the header, without decoding pixels."""
    with _open(path, max_pixels) as img:
        return img.size


def load_rgb(source: str | os.PathLike | bytes, draft: int | None = None, max_pixels: int = MAX_PIXELS):
    """Fully decode to an RGB PIL image with EXIF orientation applied.

    `draft` asks JPEG decoders to reduce on decode (by 2, 4 or 8) while keeping the long side
    at least `draft` pixels.
    Raises BadImage for corrupt, truncated or oversized input.
    """
    from PIL import Image, ImageOps

    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    img = _open(stream, max_pixels)
    try:
        if draft and img.format == "JPEG":
            scale = draft / max(img.size)  # keep the long side >= draft after reduce-on-decode
            img.draft("RGB", (max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            img = img.convert("RGBA").convert("RGB") if "A" in img.getbands() or img.mode == "P" else img.convert("RGB")
        return img
    except BadImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImage(f"cannot decode ({type(exc).__name__}: {exc})") from None


def item_file(images_dir: Path, item_path: str) -> Path:
    """The file of an item: relative paths live under the dataset's images folder."""
    p = Path(item_path)
    return p if p.is_absolute() else images_dir / p
