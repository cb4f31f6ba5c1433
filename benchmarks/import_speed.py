"""`stylesearch import` of a clip-retrieval folder beside what embedding the same images would take.

Builds COUNT small distinct images as img2dataset tar shards (10,000 per shard, with .json/.txt) and a
clip-retrieval inference output for them (random 512-d vectors: ViT-B-32's size, in parts of 10,000,
metadata parquet with image_path/caption/url/an extra column), then times `stylesearch import` in a
child process (wall time, peak RSS) and its incremental rerun. Beside it, in the same run:
`stylesearch embed` of a SAMPLE of 640x480 images with the same model (ViT-B-32, random init: the
same compute as real weights) and backend, whose images/s is extrapolated to COUNT images (an
estimate, said so in the output; model loading excluded, as in `embed`'s rate).
Usage: python benchmarks/import_speed.py [COUNT] [--sample 64] [--backend torch]"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

PER_PART = 10_000
DIM = 512
MODEL = ["-m", "ViT-B-32", "-p", "random"]


def tiny_bmp(n: int) -> bytes:
    """An 8x8 24-bit BMP whose pixels encode n (distinct content, so distinct items), made without PIL."""
    pixels = n.to_bytes(3, "big") * 64
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, 8, 8, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


def build(folder: Path, count: int) -> None:
    """img2dataset shards and clip-retrieval's output (in folder/embeddings) for `count` images."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "embeddings" / "img_emb").mkdir(parents=True)
    (folder / "embeddings" / "metadata").mkdir()
    rng = np.random.default_rng(0)
    for part, start in enumerate(range(0, count, PER_PART)):
        keys = [f"{part:05d}{n:04d}" for n in range(min(PER_PART, count - start))]
        rows = [{"key": k, "url": f"https://img.example/{k}.bmp", "caption": f"picture {k}", "status": "success"}
                for k in keys]
        with tarfile.open(folder / f"{part:05d}.tar", "w") as tar:
            for n, row in enumerate(rows):
                for name, data in ((f"{row['key']}.bmp", tiny_bmp(start + n)),
                                   (f"{row['key']}.json", json.dumps(row).encode()),
                                   (f"{row['key']}.txt", row["caption"].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{part:05d}.parquet")
        vectors = rng.standard_normal((len(keys), DIM), dtype=np.float32)
        np.save(folder / "embeddings" / "img_emb" / f"img_emb_{part}.npy", vectors)
        table = pa.table({"image_path": keys, "caption": [r["caption"] for r in rows],
                          "url": [r["url"] for r in rows], "aesthetic": rng.random(len(keys))})
        pq.write_table(table, folder / "embeddings" / "metadata" / f"metadata_{part}.parquet")


def stylesearch(root: Path, *args: str) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (MiB, of that process alone: os.wait4) and the --json summary (plus its
    CPU seconds, `cpu_s`: wall time on a busy machine overstates the work) of a `stylesearch` child."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "stylesearch", *args, "--json"], stdout=out, stderr=err,
                                env={**os.environ, "STYLESEARCH_HOME": str(root), "STYLESEARCH_NO_ONNX_EXPORT": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode:
            sys.exit(f"stylesearch {' '.join(args)} failed:\n{err.read().decode()}")
        return wall, usage.ru_maxrss / 1024, {**json.loads(out.read()), "cpu_s": usage.ru_utime + usage.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", nargs="?", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=64, help="images embedded to measure the embed rate")
    parser.add_argument("--backend", default="torch")
    args = parser.parse_args()
    begun = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="import-speed-"))
    try:
        run(args, tmp, begun)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path, begun: float) -> None:
    source, root = tmp / "laion", tmp / "datasets"
    start = time.perf_counter()
    build(source, args.count)
    print(f"built {args.count:,} images in {-(-args.count // PER_PART)} shards + clip-retrieval output "
          f"({args.count * DIM * 4 / 2**20:.0f} MiB of float32 vectors) in {time.perf_counter() - start:.1f} s")

    wall, peak, report = stylesearch(root, "import", "laion", str(source), *MODEL)
    print(f"import: {wall:.1f} s wall ({report['cpu_s']:.1f} s CPU), peak RSS {peak:.0f} MiB; {report['new']:,} items, "
          f"{report['vectors']:,} vectors, {report['described']:,} described ({args.count / wall:,.0f} images/s)")
    again, again_peak, rerun = stylesearch(root, "import", "laion", str(source), *MODEL)
    print(f"import rerun (incremental): {again:.1f} s ({rerun['cpu_s']:.1f} s CPU), peak RSS {again_peak:.0f} MiB; "
          f"{rerun['vectors']} new vectors, {rerun['already']:,} already there")

    from stylesearch.ingest.samples import write_samples

    write_samples(root / "sample" / "images", args.sample, size=(640, 480))
    _, _, embedded = stylesearch(root, "embed", "sample", *MODEL, "--backend", args.backend)
    rate = embedded["images_per_second"]
    estimate = args.count / rate
    print(f"embed (measured on {args.sample} 640x480 images, {args.backend}, ViT-B-32, {embedded['cpu_s']:.0f} s CPU "
          f"for the process): {rate:.1f} images/s -> "
          f"{args.count:,} images would take about {estimate:,.0f} s ({estimate / 3600:.1f} h), extrapolated")
    print(f"import vs embedding the same images: {wall:.1f} s vs ~{estimate:,.0f} s ({estimate / wall:,.0f}x); "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"whole run {time.perf_counter() - begun:.0f} s")


if __name__ == "__main__":
    main()
