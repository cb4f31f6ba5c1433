"""Locally generated sample images: patterns x palettes, so everything runs offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PALETTES = {
    "warm": [(230, 80, 40), (250, 180, 60), (160, 30, 40)],
    "cool": [(40, 90, 200), (60, 180, 200), (30, 40, 110)],
    "mono": [(20, 20, 20), (130, 130, 130), (235, 235, 235)],
    "pastel": [(250, 200, 210), (200, 230, 250), (220, 250, 200)],
    "forest": [(30, 90, 40), (120, 160, 60), (70, 50, 30)],
}
PATTERNS = ("stripes", "dots", "checker", "gradient", "noise", "rings")


def _pattern(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A field of values in [0, 1) describing the pattern."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(12, 40)
    angle = rng.uniform(0, np.pi)
    if kind == "stripes":
        return ((x * np.cos(angle) + y * np.sin(angle)) / period) % 1.0
    if kind == "dots":
        return (np.hypot((x % period) - period / 2, (y % period) - period / 2) < period / 3.5).astype(np.float32) * 0.7
    if kind == "checker":
        return (((x // period) + (y // period)) % 2) * 0.6
    if kind == "gradient":
        return (x * np.cos(angle) + y * np.sin(angle)) / (w + h) % 1.0
    if kind == "rings":
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        return (np.hypot(x - cx, y - cy) / period) % 1.0
    return rng.random((h, w)).astype(np.float32)


def render(kind: str, palette: str, seed: int, size: tuple[int, int] = (256, 192)):
    """One sample image as a PIL image."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    field = _pattern(kind, h, w, rng)
    colors = np.array(PALETTES[palette], dtype=np.float32)
    idx = np.clip(field * len(colors), 0, len(colors) - 1e-3)
    low = np.floor(idx).astype(int)
    frac = (idx - low)[..., None] if kind in ("gradient", "noise") else 0.0
    high = np.minimum(low + 1, len(colors) - 1)
    rgb = colors[low] * (1 - frac) + colors[high] * frac
    rgb += rng.normal(0, 6, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def write_samples(folder: Path, count: int = 60, seed: int = 0, size: tuple[int, int] = (256, 192)) -> list[Path]:
    """Write `count` sample JPEGs into folder/<palette>/<pattern>-<n>.jpg; returns their paths."""
    out = []
    combos = [(p, k) for p in PALETTES for k in PATTERNS]
    for n in range(count):
        palette, kind = combos[n % len(combos)]
        path = folder / palette / f"{kind}-{n:04d}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            render(kind, palette, seed * 100_003 + n, size).save(path, quality=90)
        out.append(path)
    return out
