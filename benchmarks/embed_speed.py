"""Embedding images/s in one run, on COUNT generated photo-like JPEGs, batches of --batch-size:

The files: smooth multi-scale colour noise plus grain, JPEG quality 88, in the sizes of typical photos
(PHOTO_SIZES: 1,024-1,600 px, one in six with an odd side, which is decoded whole), 100-260 KiB each,
so decoding costs what a camera or web photo costs (flat synthetic patterns decode several times faster).

- decoding + preprocessing alone (one thread, as an embedding run decodes beside its model);
- the model-only ceiling of each ONNX tower: the exported image tower (fp32, int8) in onnxruntime with
  the session an embedding run uses, on batches resized and normalised beforehand (nothing else runs);
  torch's too (the model's encode_image on the same batches); measured before and again after the
  end-to-end runs, and the higher rate of the two is the ceiling (one slow pass, e.g. a busy moment or
  a cold allocator, would otherwise lower it and flatter the end-to-end share);
- the fp32 peak: float32 matrix products in numpy on every core, and the image tower's FLOPs per image
  (counted from its layers, `image_gflop`), so each ceiling is also a share of what the CPU can do;
- each backend end to end (`embed_dataset`: decode, resize, model, catalog writes; an ONNX session is
  made inside the timed run, as a user's run makes it, the torch model is loaded before it) and its
  share of its own ceiling;
- with --peers, clip-retrieval's `inference` on the same files (benchmarks/.venvs/clip-retrieval, made by
  `python benchmarks/peers.py clip-retrieval`; the same architecture, random init, batch size and one
  preprocessing worker per two cores, as stylesearch uses; its time is its whole `main()`, model load
  and warm-up included).

Models are random-init (`-p random`): the same compute as pretrained weights, which cannot be fetched
here. The ONNX export is made once per model beforehand (its time is printed, not counted).

--size 640x480 makes every file that size instead (the issue's first measurement: smaller files,
cheaper decoding, so the model's share of the time is larger).

Usage: python benchmarks/embed_speed.py [COUNT] [--models ViT-B-32] [--backends onnx,onnx-int8,torch]
                                        [--batch-size 32] [--ceiling-batches 8] [--device cpu] [--peers]
                                        [--size WxH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from peers import peer_bin
from stylesearch.cores import available_cores, decode_workers
from stylesearch.embed.encoders.base import EncoderOptions
from stylesearch.embed.encoders.onnx import load_export, session
from stylesearch.embed.encoders.pixels import Preprocess, load_item
from stylesearch.embed.export import export_onnx
from stylesearch.embed.models import ModelSpec, load_model
from stylesearch.embed.run import EmbedOptions, embed_dataset
from stylesearch.store.catalog import open_catalog
from stylesearch.store.datasets import create_dataset
from stylesearch.store.paths import dataset_paths

PHOTO_SIZES = ((1600, 1200), (1200, 1600), (1024, 768), (1536, 1024), (1280, 853), (1440, 1080))

CLIP_RETRIEVAL = """
import json, sys, time
import open_clip
made = open_clip.create_model_and_transforms
def random_init(name, pretrained=None, **kwargs):  # no weights can be fetched: the same model, random init
    kwargs.pop("cache_dir", None)
    return made(name, pretrained=None, **kwargs)
open_clip.create_model_and_transforms = random_init
from clip_retrieval.clip_inference.main import main
folder, out, model, batch, workers = sys.argv[1:6]
start = time.perf_counter()
main(input_dataset=folder, output_folder=out, input_format="files", clip_model="open_clip:" + model,
     batch_size=int(batch), num_prepro_workers=int(workers), enable_text=False, enable_metadata=False, use_jit=False)
print()  # its log leaves a line open
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def photo(seed: int, size: tuple[int, int]):
    """A photo-like picture: colour noise at four scales (smooth areas and edges) plus pixel grain."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    acc = np.zeros((h, w, 3), np.int16) + rng.integers(60, 190, 3).astype(np.int16)
    for cells, amp in ((3, 60), (8, 30), (24, 15), (80, 7)):
        small = np.clip(128 + rng.normal(0, amp, (max(2, cells * h // w), cells, 3)), 0, 255).astype(np.uint8)
        acc += np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.int16) - 128
    acc += rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8))


def write_photos(folder: Path, count: int, sizes=PHOTO_SIZES) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"photo-{n:05d}.jpg" for n in range(count)]
    for n, path in enumerate(files):
        photo(n, sizes[n % len(sizes)]).save(path, quality=88)
    return files


def decode_rate(files: list[Path], preprocess: Preprocess) -> float:
    """Images/s of decoding + preprocessing on one thread (reduce-on-decode where the run uses it)."""
    start = time.perf_counter()
    for f in files:
        load_item(f, preprocess, preprocess)
    return len(files) / (time.perf_counter() - start)


def pixel_batches(files: list[Path], preprocess: Preprocess, batch: int) -> list[np.ndarray]:
    pixels = [load_item(f, preprocess, preprocess)[0] for f in files]
    return [np.stack(pixels[i:i + batch]) for i in range(0, len(pixels), batch)]


def onnx_ceiling(path: Path, batches: list[np.ndarray]) -> float:
    """Images/s of the tower alone (the first batch, also warming it up, is not counted)."""
    run = session(path)
    run.run(None, {"pixels": batches[0]})
    start = time.perf_counter()
    for batch in batches[1:]:
        run.run(None, {"pixels": batch})
    return sum(len(b) for b in batches[1:]) / (time.perf_counter() - start)


def torch_ceiling(model, batches: list[np.ndarray]) -> float:
    import torch

    model.encode_images(torch.from_numpy(batches[0]))
    start = time.perf_counter()
    for batch in batches[1:]:
        model.encode_images(torch.from_numpy(batch))
    return sum(len(b) for b in batches[1:]) / (time.perf_counter() - start)


def ceilings(backends: list[str], export, model, batches: list[np.ndarray]) -> dict[str, float]:
    """Model-only images/s of each backend on the same pre-resized batches."""
    rates = {b: onnx_ceiling(export.path("image-int8" if b == "onnx-int8" else "image"), batches)
             for b in backends if b.startswith("onnx")}
    if "torch" in backends:
        rates["torch"] = torch_ceiling(model, batches)
    return rates


def report_end_to_end(results: dict, before: dict, after: dict, best: dict) -> dict[str, float]:
    """Print each backend's ceiling (`best`: the higher of its two passes) and end-to-end share; their rates."""
    rates = {}
    for backend in results:
        print(f"  ceiling {backend:10s} model only: {best[backend]:6.2f} images/s "
              f"(before the end-to-end runs {before[backend]:6.2f}, after {after[backend]:6.2f})", flush=True)
    for backend, (result, elapsed, _) in results.items():
        rates[backend] = result.embedded / elapsed
        ceiling = best[backend]
        extra = ""
        if "int8_cosine_mean" in result.backend:
            extra = f"; int8 vs fp32 cosine mean {result.backend['int8_cosine_mean']:.5f}"
        print(f"  end to end {backend:10s} on {result.device}: {result.embedded} images in {elapsed:.1f} s = "
              f"{rates[backend]:6.2f} images/s = {rates[backend] / ceiling:.2f} of its ceiling{extra}", flush=True)
    return rates


def matmul_peak(seconds: float = 3.0, n: int = 2048) -> float:
    """GFLOP/s of float32 matrix products (numpy's BLAS on every core): the CPU's practical fp32 peak."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        runs += 1
    return runs * 2 * n ** 3 / (time.perf_counter() - start) / 1e9


def image_gflop(model) -> float:
    """GFLOP of one image through a ViT image tower, counted from its layers (a multiply-add is 2 FLOPs):
    the patch convolution, every linear layer and attention's projections on each token, attention's
    two token-by-token products. (torch's FLOP counter misses attention's fused inference path.)"""
    import torch

    visual = model.model.visual
    grid = visual.grid_size
    tokens = grid[0] * grid[1] + 1  # patches and the class token
    conv = visual.conv1
    flops = 2 * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels * grid[0] * grid[1]
    for module in visual.modules():
        if isinstance(module, torch.nn.Linear):
            flops += 2 * module.in_features * module.out_features * tokens
        elif isinstance(module, torch.nn.MultiheadAttention):
            width = module.embed_dim
            flops += 2 * 3 * width * width * tokens + 2 * 2 * tokens * tokens * width
    proj = getattr(visual, "proj", None)
    if proj is not None:
        flops += 2 * proj.shape[0] * proj.shape[1]
    return flops / 1e9


def end_to_end(tmp: Path, images: Path, spec: ModelSpec, backend: str, model, export: Path, args) -> tuple:
    paths = dataset_paths(f"{spec.name.lower()}-{backend}", tmp)
    shutil.copytree(images, paths.images)
    create_dataset(paths)
    shutil.copytree(export, paths.onnx_dir(spec.key))
    options = EmbedOptions(batch_size=args.batch_size, device=args.device if backend == "torch" else "cpu",
                           backend=backend, export_onnx=False)
    start = time.perf_counter()
    result = embed_dataset(paths, spec, options=options, model=model if backend == "torch" else None)
    elapsed = time.perf_counter() - start
    with open_catalog(paths, readonly=True) as cat:
        _, vectors = cat.vectors.load(spec.key)
    return result, elapsed, vectors


def clip_retrieval(images: Path, tmp: Path, model: str, batch: int) -> float | None:
    python = peer_bin("clip-retrieval")
    if python is None:
        return None
    out = subprocess.run([str(python), "-c", CLIP_RETRIEVAL, str(images), str(tmp / "clip-retrieval"), model,
                          str(batch), str(decode_workers())], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode != 0:
        print(f"  clip-retrieval failed:\n{out.stderr[-1500:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def bench_model(name: str, tmp: Path, images: Path, files: list[Path], args) -> None:
    spec = ModelSpec(name, "random")
    model = load_model(spec, "cpu")
    source = dataset_paths(f"{name.lower()}-export", tmp)
    create_dataset(source)
    start = time.perf_counter()
    export_onnx(source, spec, model, towers=("image-int8",))
    print(f"{name}: ONNX export of the image tower (+ int8) took {time.perf_counter() - start:.1f} s (once); "
          f"{available_cores()} cores, batches of {args.batch_size}", flush=True)
    export = load_export(source, spec.key)
    preprocess = Preprocess.from_config(export.stamp["towers"]["image"]["preprocess"])
    sizes = sum(f.stat().st_size for f in files) / len(files) / 1024
    print(f"  decode + preprocess alone (one thread): {decode_rate(files[:96], preprocess):6.1f} images/s "
          f"(mean file {sizes:.0f} KiB)", flush=True)
    batches = pixel_batches(files[:args.batch_size * (args.ceiling_batches + 1)], preprocess, args.batch_size)
    backends = args.backends.split(",")
    before = ceilings(backends, export, model, batches)
    run_model = model if args.device == "cpu" else load_model(spec, args.device)
    results = {backend: end_to_end(tmp, images, spec, backend, run_model, source.onnx_dir(spec.key), args)
               for backend in backends}
    after = ceilings(backends, export, model, batches)
    best = {backend: max(before[backend], after[backend]) for backend in backends}
    rates = report_end_to_end(results, before, after, best)
    gflop, peak = image_gflop(model), matmul_peak()
    print(f"  one image = {gflop:.2f} GFLOP; fp32 peak (numpy float32 matrix products, {available_cores()} cores): "
          f"{peak:.0f} GFLOP/s = {peak / gflop:.1f} images/s", flush=True)
    for backend, ceiling in best.items():
        print(f"  ceiling {backend:10s} = {ceiling * gflop:5.0f} GFLOP/s = {ceiling * gflop / peak:.2f} of the fp32 peak"
              + (" (int8 arithmetic: can pass it)" if backend == "onnx-int8" else ""), flush=True)
    if args.peers and peer_bin("clip-retrieval") is None:
        print("  clip-retrieval: not installed (python benchmarks/peers.py clip-retrieval)")
    elif args.peers:
        seconds = clip_retrieval(images, tmp, name, args.batch_size)
        if seconds is None:
            return
        peer = len(files) / seconds
        print(f"  clip-retrieval inference (torch): {len(files)} images in {seconds:.1f} s = {peer:6.2f} images/s")
        for backend, rate in rates.items():
            print(f"  {backend} / clip-retrieval: {rate / peer:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=1000)
    parser.add_argument("--models", default="ViT-B-32")
    parser.add_argument("--backends", default="onnx,onnx-int8,torch")
    parser.add_argument("--batch-size", type=int, default=EncoderOptions().batch_size, help="default: embed's")
    parser.add_argument("--ceiling-batches", type=int, default=8, help="timed batches per model-only ceiling "
                        "(after one warm-up batch)")
    parser.add_argument("--device", default="cpu", help="torch's device (the onnx backends always run on the CPU)")
    parser.add_argument("--peers", action="store_true", help="also run clip-retrieval inference (benchmarks/.venvs)")
    parser.add_argument("--size", type=lambda v: tuple(int(x) for x in v.lower().split("x")),
                        help="every file WxH pixels (default: photo sizes, 1,024-1,600 px)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        images = tmp / "images"
        start = time.perf_counter()
        files = write_photos(images, args.count, (args.size,) if args.size else PHOTO_SIZES)
        print(f"{args.count} photo-like JPEGs written in {time.perf_counter() - start:.0f} s (not counted)", flush=True)
        for name in args.models.split(","):
            bench_model(name, tmp, images, files, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
