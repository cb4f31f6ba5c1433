"""Safe decoding: decompression-bomb guard, truncated files, EXIF, reduce-on-decode."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from stylesearch.images import BadImage, image_size, load_rgb
from stylesearch.samples import render


def _jpeg_bytes(size=(1600, 1200)) -> bytes:
    buf = io.BytesIO()
    render("stripes", "warm", 1, size).save(buf, format="JPEG")
    return buf.getvalue()


def test_pixel_limit_refuses_oversized_images(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(path)
    assert image_size(path) == (400, 300)
    with pytest.raises(BadImage, match="refused"):
        image_size(path, max_pixels=100_000)
    with pytest.raises(BadImage, match="refused"):
        load_rgb(path, max_pixels=100_000)


def test_pillow_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (1000, 1000)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # Pillow's own guard fires first
    with pytest.raises(BadImage, match="too many pixels"):
        load_rgb(path)


def test_truncated_and_garbage_input():
    data = _jpeg_bytes((320, 240))
    with pytest.raises(BadImage, match="cannot decode"):
        load_rgb(data[: len(data) // 2])
    with pytest.raises(BadImage, match="not an image"):
        load_rgb(b"<html>nope</html>")


def test_reduce_on_decode_keeps_long_side():
    img = load_rgb(_jpeg_bytes(), draft=336)
    assert img.size == (400, 300)  # JPEG scale 1/4: long side still >= 336
    assert load_rgb(_jpeg_bytes()).size == (1600, 1200)


def test_palette_and_alpha_images_become_rgb(tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(path)
    assert load_rgb(path).mode == "RGB"
    Image.new("P", (10, 10)).save(path)
    assert load_rgb(path).mode == "RGB"
