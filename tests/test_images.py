"""Safe decoding: decompression-bomb guard, truncated files, EXIF, reduce-on-decode."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from stylesearch.ingest.samples import render
from stylesearch.store.images import BadImage, image_size, load_rgb, to_rgb


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



def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _palette(transparent: bool):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([255, 0, 0, 0, 0, 255])
    if transparent:
        img.info["transparency"] = 1  # blue is see-through
    return img


def _grey_array(rows, dtype):
    import numpy as np

    return Image.fromarray(np.array(rows, dtype=dtype))


WHITE, BLACK, GREY, RED, BLUE = (255, 255, 255), (0, 0, 0), (128, 128, 128), (255, 0, 0), (0, 0, 255)

MODE_CASES = [  # (name, image factory, expected colour of the pixel at (0, 0), then of (1, 0) when given)
    ("I;16 mid grey", lambda: Image.new("I;16", (4, 4), 32768), [GREY]),
    ("I;16 white", lambda: Image.new("I;16", (4, 4), 65535), [WHITE]),
    ("I;16 dark", lambda: Image.new("I;16", (4, 4), 2570), [(10, 10, 10)]),
    ("I;16B", lambda: Image.frombytes("I;16B", (2, 1), b"\x80\x00\xff\xff"), [GREY, WHITE]),
    ("I;16L", lambda: Image.frombytes("I;16L", (2, 1), b"\x00\x80\x00\x00"), [GREY, BLACK]),
    ("I 8-bit values", lambda: Image.new("I", (4, 4), 100), [(100, 100, 100)]),
    ("I 16-bit values", lambda: _grey_array([[32768, 65535]], "int32"), [GREY, WHITE]),
    ("I beyond 16 bit", lambda: _grey_array([[1_000_000, 2_000_000]], "int32"), [GREY, WHITE]),
    ("I negative", lambda: _grey_array([[-100, 100]], "int32"), [BLACK, WHITE]),
    ("F 0..1", lambda: _grey_array([[0.5, 1.0]], "float32"), [GREY, WHITE]),
    ("F 0..255", lambda: _grey_array([[200.0, 0.0]], "float32"), [(200, 200, 200), BLACK]),
    ("F NaN and inf", lambda: _grey_array([[float("nan"), float("inf"), 0.0, 1.0]], "float32"), [BLACK, WHITE]),
    ("1-bit", lambda: Image.frombytes("1", (2, 1), b"\x80"), [WHITE, BLACK]),
    ("L", lambda: Image.new("L", (4, 4), 100), [(100, 100, 100)]),
    ("LA opaque", lambda: Image.new("LA", (4, 4), (100, 255)), [(100, 100, 100)]),
    ("LA transparent", lambda: Image.new("LA", (4, 4), (0, 0)), [WHITE]),
    ("LA half", lambda: Image.new("LA", (4, 4), (0, 128)), [(127, 127, 127)]),
    ("RGBA transparent", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0)), [WHITE]),
    ("RGBA opaque", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 255)), [RED]),
    ("RGBa premultiplied", lambda: Image.new("RGBa", (4, 4), (100, 0, 0, 128)), [(227, 127, 127)]),
    ("P", lambda: _palette(False), [BLUE]),
    ("P transparent entry", lambda: _palette(True), [WHITE]),
    ("CMYK", lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), [RED]),
    ("LAB mid grey", lambda: Image.new("LAB", (4, 4), (128, 128, 128)), [(119, 119, 119)]),
]


def _close(actual, expected, tolerance=2):
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


@pytest.mark.parametrize("make, expected", [c[1:] for c in MODE_CASES], ids=[c[0] for c in MODE_CASES])
def test_every_mode_becomes_the_expected_rgb(make, expected):
    img = to_rgb(make())
    assert img.mode == "RGB"
    for x, colour in enumerate(expected):
        assert _close(img.getpixel((x, 0)), colour), (img.getpixel((x, 0)), colour)


def test_16_bit_png_is_not_washed_out():
    png = _png(Image.frombytes("I;16", (40, 2), b"".join(v.to_bytes(2, "little") for v in [0, 32768] * 40)))
    assert Image.open(io.BytesIO(png)).mode.startswith("I")  # really decoded as 16-bit
    img = load_rgb(png)
    assert img.getpixel((0, 0)) == BLACK and _close(img.getpixel((1, 0)), GREY)


def test_transparent_png_and_gif_are_composited_on_white(tmp_path):
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    half.paste((0, 0, 255, 255), (0, 0, 4, 8))
    img = load_rgb(_png(half))
    assert img.getpixel((0, 0)) == BLUE and img.getpixel((7, 7)) == WHITE
    gif = tmp_path / "t.gif"
    _palette(True).save(gif, transparency=1)
    assert load_rgb(gif).getpixel((0, 0)) == WHITE
    grey_alpha = tmp_path / "la.png"
    Image.new("LA", (8, 8), (0, 0)).save(grey_alpha)
    assert load_rgb(grey_alpha).getpixel((0, 0)) == WHITE
