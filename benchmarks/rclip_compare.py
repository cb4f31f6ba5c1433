"""rclip beside stylesearch on the same folder of generated photo-sized JPEGs, one run:

- indexing: rclip's first run in the folder (it indexes, then answers its query) against stylesearch's
  ONNX export (which a first `embed` of 256+ images makes by itself; timed apart here) + `embed` +
  `index` + the first `search`, each a process;
- a cold text query: `rclip "QUERY"` (it checks the folder for changes first, its default), `rclip
  --no-indexing "QUERY"`, and `stylesearch search DATASET "QUERY"` with an empty query-vector cache:
  whole-process wall time, median of RUNS fresh processes after one untimed warm-up;
- with --items N, the same cold queries over N items: N random unit vectors added to both indexes
  (rclip's SQLite rows under the folder, searched with --no-indexing; a stylesearch dataset of N
  vectors with the same ONNX text tower), as search_cold.py measures stylesearch at 100k.

rclip 3 (benchmarks/.venvs/rclip, `python benchmarks/peers.py rclip`) runs ONNX exports of open_clip's
ViT-B-32-256 (datacomp_s34b_b86k), which cannot be downloaded here: this script writes its files with
random weights of the same architecture (fp32, opset of torch's exporter) where rclip looks for them
(RCLIP_DATADIR), with open_clip's BPE vocabulary, so rclip runs at its real speed with HF_HUB_OFFLINE=1.
stylesearch embeds with the same architecture and `-p random`. Vectors are meaningless; times are not.

JPEGs: bench_data.photo_folder (12 MP by default, 2.5-9 MB each); --images DIR keeps them between runs.

Usage: python benchmarks/rclip_compare.py [COUNT] [--size 4032x3024] [--images DIR] [--runs 5] [--items 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_data import photo_folder, random_vector_dataset
from peers import peer_bin, peer_version
from stylesearch.embed.models import ModelSpec
from stylesearch.store.datasets import create_dataset
from stylesearch.store.paths import dataset_paths

MODEL = "ViT-B-32-256"  # rclip 3's architecture
QUERY = "a red bicycle leaning on a wall"
EXPORT = """import sys
from stylesearch.embed.export import export_onnx
from stylesearch.embed.models import ModelSpec
from stylesearch.store.paths import dataset_paths
export_onnx(dataset_paths("photos", sys.argv[1]), ModelSpec(sys.argv[2], "random"), towers=("text", "image"))
"""  # the export a first `embed` of 256+ images makes before embedding (embed/export.onnx_encoder), as a process
RCLIP_PATHS = ("from rclip import model_download as m; import json; "
               "print(json.dumps([m.MODEL_SUBDIR, m.VISUAL_ONNX, m.TEXTUAL_ONNX, m.TOKENIZER_VOCAB]))")


def fake_rclip_models(datadir: Path) -> float:
    """Write rclip's model files (random init, same architecture) under datadir; returns seconds taken."""
    import open_clip
    import torch

    start = time.perf_counter()
    subdir, visual, textual, vocab = json.loads(subprocess.run(
        [str(peer_bin("rclip")), "-c", RCLIP_PATHS], capture_output=True, text=True, check=True).stdout)
    (datadir / subdir).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = open_clip.create_model(MODEL, pretrained=None).eval()
    size = net.visual.image_size[0] if isinstance(net.visual.image_size, tuple) else net.visual.image_size
    towers = [(_tower(net, "encode_image"), torch.randn(2, 3, size, size), visual),
              (_tower(net, "encode_text"), open_clip.tokenize(["a photo", "a cat"]), textual)]
    for module, example, name in towers:
        with torch.no_grad():
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=["input"],
                                        output_names=["output"], verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
        program.save(str(datadir / subdir / name), external_data=False)
    target = datadir / vocab
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", target)
    return time.perf_counter() - start


def _tower(net, method: str):
    """A torch module computing one of the model's encode_* methods (what rclip's ONNX files compute)."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return getattr(self.net, method)(x)

    return Tower().eval()


def wall(cmd: list[str], env: dict, cwd: Path | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return seconds, out.stdout


def median_wall(make_cmd, runs: int) -> tuple[float, str]:
    """Median wall time of `runs` fresh processes after one untimed warm-up; make_cmd() -> (cmd, env, cwd)."""
    _, out = wall(*make_cmd())
    return statistics.median(wall(*make_cmd())[0] for _ in range(runs)), out


class Tools:
    """The two command lines, their environments and where their data lives."""

    def __init__(self, tmp: Path):
        self.tmp, self.root, self.rclip_data = tmp, tmp / "datasets", tmp / "rclip-data"
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        self.rclip_env = {**self.env, "RCLIP_DATADIR": str(self.rclip_data)}

    def ours(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "stylesearch", "--root", str(self.root), *args]

    def rclip(self, *args: str) -> list[str]:
        return [str(peer_bin("rclip", "rclip")), *args]

    def search(self, dataset: str):
        """A stylesearch text query with an empty query cache (a cold query)."""
        cache = tempfile.mkdtemp(dir=self.tmp)
        return (self.ours("search", dataset, QUERY, "-k", "10", "--format", "paths"),
                {**self.env, "STYLESEARCH_CACHE": cache}, None)


def indexing(tools: Tools, images: Path, count: int) -> None:
    first, out = wall(tools.rclip("-f", QUERY), tools.rclip_env, cwd=images)
    results = len(out.splitlines())
    create_dataset(dataset_paths("photos", tools.root))  # what `embed` does first
    model = ("-m", MODEL, "-p", "random")
    export, _ = wall([sys.executable, "-c", EXPORT, str(tools.root), MODEL], tools.env)
    embed, out = wall(tools.ours("embed", "photos", *model, "--json"), tools.env)
    steps = {s["step"]: s["seconds"] for s in json.loads(out).get("steps", [])}
    build, _ = wall(tools.ours("index", "photos", "--json"), tools.env)
    query, out = wall(*tools.search("photos"))
    ours = export + embed + build + query
    print(f"indexing {count} images, then one query ({MODEL}, random init):")
    print(f"  rclip first run (index + query), its ONNX files in place   {first:7.1f} s  ({count / first:5.2f} "
          f"images/s, {results} results)")
    print(f"  stylesearch ONNX export {export:.1f} s (text + image towers, once per dataset and model; `embed` "
          f"makes them itself) + embed {embed:.1f} s + index {build:.1f} s + search {query:.1f} s = {ours:7.1f} s  "
          f"({count / ours:5.2f} images/s, {len(out.splitlines())} results)")
    print("    embed's steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in steps.items()))
    print(f"  stylesearch / rclip: {first / ours:.2f}x faster; with the ONNX export already made: "
          f"{first / (ours - export):.2f}x", flush=True)


def cold_queries(tools: Tools, images: Path, dataset: str, label: str, runs: int, rescan: bool) -> None:
    rows = {}
    if rescan:
        rows["rclip (checks the folder)"] = median_wall(lambda: (tools.rclip("-f", QUERY), tools.rclip_env,
                                                                 images), runs)
    rows["rclip --no-indexing"] = median_wall(lambda: (tools.rclip("--no-indexing", "-f", QUERY),
                                                       tools.rclip_env, images), runs)
    rows["stylesearch search"] = median_wall(lambda: tools.search(dataset), runs)
    print(f"cold text query over {label}, whole process, median of {runs}:")
    for name, (seconds, out) in rows.items():
        print(f"  {name:28s} {seconds:6.3f} s  ({len(out.splitlines())} results)")
    ours = rows["stylesearch search"][0]
    print("  stylesearch / " + ", ".join(f"{name}: {seconds / ours:.2f}x faster" for name, (seconds, _) in rows.items()
                                         if name != "stylesearch search"), flush=True)


def add_items(tools: Tools, images: Path, items: int) -> str:
    """N random unit vectors in both tools: rows in rclip's database under the folder, and a stylesearch
    dataset (bench_data) given the photos dataset's ONNX export. Returns that dataset's name."""
    spec = ModelSpec(MODEL, "random")
    paths = dataset_paths("many", tools.root)
    vectors = random_vector_dataset(paths, items, spec)
    shutil.copytree(dataset_paths("photos", tools.root).onnx_dir(spec.key), paths.onnx_dir(spec.key))
    with sqlite3.connect(tools.rclip_data / "db.sqlite3") as db:
        db.executemany("INSERT INTO images(deleted, filepath, modified_at, size, vector, indexing) "
                       "VALUES(NULL, ?, 0, 0, ?, NULL)",
                       ((str(images / f"synthetic-{i}.jpg"), v.tobytes()) for i, v in enumerate(vectors)))
    return paths.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=300)
    parser.add_argument("--size", default="4032x3024", help="JPEG size (default: a 12 MP phone photo)")
    parser.add_argument("--images", type=Path, help="reuse (or first make) the JPEGs in this folder")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--items", type=int, default=0, help="also query over this many items (random vectors)")
    args = parser.parse_args()
    if peer_bin("rclip", "rclip") is None:
        sys.exit("rclip is not installed: python benchmarks/peers.py rclip")
    tmp = Path(tempfile.mkdtemp(prefix="stylesearch-rclip-"))
    try:
        tools = Tools(tmp)
        images = dataset_paths("photos", tools.root).images
        width, height = (int(x) for x in args.size.split("x"))
        if args.images and len(list(args.images.glob("*.jpg"))) != args.count:
            photo_folder(args.images, args.count, (width, height))
        if args.images:
            shutil.copytree(args.images, images)
        else:
            photo_folder(images, args.count, (width, height))
        megabytes = sum(p.stat().st_size for p in images.rglob("*.jpg")) / 1e6
        made = fake_rclip_models(tools.rclip_data)
        print(f"rclip {peer_version('rclip')}; {args.count} JPEGs of {width}x{height} ({megabytes:.0f} MB); "
              f"{os.cpu_count()} cores; rclip's random-init model files written in {made:.0f} s (not counted)",
              flush=True)
        indexing(tools, images, args.count)
        cold_queries(tools, images, "photos", f"the {args.count} images", args.runs, rescan=True)
        if args.items:
            cold_queries(tools, images, add_items(tools, images, args.items), f"{args.items:,} items "
                         f"(+{args.count} images for rclip)", args.runs, rescan=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
