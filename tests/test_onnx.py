"""ONNX exports and torch-free queries: token ids, agreement with torch, fallbacks, the query cache,
import hygiene on a read-only dataset, the onnx embedding backends, JPEG reduce-on-decode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from stylesearch.embed.encoders.onnx import STAMP, load_export
from stylesearch.embed.encoders.pixels import Preprocess, decode
from stylesearch.embed.encoders.query import CachedQueryEncoder, OnnxQueryEncoder, QueryCache, query_encoder
from stylesearch.embed.run import EmbedOptions, embed_dataset
from stylesearch.ingest.samples import render
from stylesearch.store.images import load_rgb
from stylesearch.store.paths import dataset_paths

from .conftest import make_dataset

PROMPTS = ["red stripes", "A Photo of a CAT", "film grain portrait, 35mm!", "Ünïcödé café — naïve façade",
           "東京の夜景 and Ελληνικά", "emoji 🐱🔥👩‍👩‍👧", "&amp;amp; &lt;b&gt; entities", "mojibake: cafÃ©",
           "tabs\tand\nnew\r\nlines\x0bvt", "", "   ", "don't we'll it's I'M", "<start_of_text> literal",
           "a_b-c.d,e;f:g", "x" * 300, " ".join(["a very long caption about stripes"] * 20)]


def _cos(a, b) -> np.ndarray:
    return np.sum(np.asarray(a) * np.asarray(b), axis=-1)


def _random_texts(n: int, seed: int = 0, pool=None) -> list[str]:
    """Mixed-script strings: ASCII, punctuation, accents, CJK, emoji, control characters."""
    pool = pool or (list("abcXYZ 019.,;:'!?&_-\t\n") + list("éüßøÅçñ—“”’…") + list("中文日本語한국어")
                    + ["🐱", "🔥", "\x0b", "\u00a0", "&amp;", "&lt;"])
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(pool, size=rng.integers(0, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_spec, tiny_model):
    """8 images embedded with torch (which exports the text tower), then the image towers exported too."""
    from stylesearch.embed.export import export_onnx

    paths = make_dataset(tmp_path_factory.mktemp("onnx"), "ox", 8)
    result = embed_dataset(paths, tiny_spec, options=EmbedOptions(workers=0, backend="torch"), model=tiny_model)
    assert result.warnings == [] and result.as_dict()["images_per_second"] > 0
    assert load_export(paths, tiny_spec.key).tower("text") is not None  # made by the embedding run
    report = export_onnx(paths, tiny_spec, tiny_model, towers=("image-int8",))
    assert report["exported"] == ["image", "image-int8"] and report["kept"] == ["text"]
    return paths


def test_torch_free_tokenizer_gives_open_clip_ids(tmp_path, tiny_model):
    from open_clip.tokenizer import SimpleTokenizer, get_clean_fn

    from stylesearch.embed.export import _tokenizer_entry
    from stylesearch.embed.tokens import _PLAIN, ClipTokenizer, clean, write_merges

    entry, merges = _tokenizer_entry(tiny_model.tokenizer)
    write_merges(tmp_path / "vocab.gz", merges)
    texts = PROMPTS + _random_texts(300)
    for how in ("lower", "whitespace", "canonicalize"):
        theirs = tiny_model.tokenizer if how == "lower" else SimpleTokenizer(clean=how)
        ours = ClipTokenizer.from_file(tmp_path / "vocab.gz", context_length=77, cleaning=how)
        assert np.array_equal(ours(texts), theirs(texts).numpy()), how
        plain = _random_texts(300, seed=1, pool=sorted(_PLAIN)) + ["".join(sorted(_PLAIN))]
        assert [clean(t, how) for t in plain] == [get_clean_fn(how)(t) for t in plain]  # ftfy skipped when plain
    long = ours([PROMPTS[-1]])[0]
    assert long[-1] == ours.eot and long[0] == ours.sot  # truncated to the context length, ends in end-of-text


def test_onnx_towers_agree_with_torch(exported, tiny_spec, tiny_model):
    encoder = query_encoder(exported, tiny_spec, cache=False)
    assert isinstance(encoder, OnnxQueryEncoder) and encoder.text_id.startswith("onnx:")
    texts = PROMPTS + _random_texts(20)
    assert _cos(encoder.encode_text(texts), tiny_model.encode_text(texts)).min() >= 0.999
    pre = Preprocess.from_config(load_export(exported, tiny_spec.key).stamp["towers"]["image"]["preprocess"])
    images = [render("stripes", "warm", 1, (640, 480)), render("noise", "cool", 2, (90, 300)),
              render("rings", "mono", 3, (33, 20)).convert("L").convert("RGB")]
    for image in images:
        ours, theirs = pre(image), tiny_model.preprocess(image).numpy()
        assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-4
        expected = tiny_model.encode_images(tiny_model.preprocess(image)[None])[0]
        assert _cos(encoder.encode_image(image), expected) >= 0.999
    assert load_export(exported, tiny_spec.key).stamp["towers"]["image-int8"]["cosine_to_fp32"] >= 0.99


def test_missing_stale_or_damaged_exports_fall_back_to_torch(exported, tiny_spec, tiny_model, tmp_path, cli):
    paths = dataset_paths("ox", tmp_path)
    shutil.copytree(exported.home, paths.home)
    expected = tiny_model.encode_text(["red stripes"])
    folder = paths.onnx_dir(tiny_spec.key)
    stamp = json.loads((folder / STAMP).read_text())

    def text_vector():
        encoder = query_encoder(paths, tiny_spec, device="cpu", cache=False)
        return encoder, encoder.encode_text(["red stripes"])

    (folder / STAMP).write_text(json.dumps({**stamp, "format": 0}))  # stale: an older export format
    encoder, vector = text_vector()
    assert not isinstance(encoder, OnnxQueryEncoder) and _cos(vector, expected)[0] >= 0.999
    (folder / STAMP).write_text(json.dumps(stamp))
    graph = folder / stamp["towers"]["text"]["file"]
    graph.write_bytes(b"\0" * graph.stat().st_size)  # damaged, same size: onnxruntime fails, torch answers
    encoder, vector = text_vector()
    assert isinstance(encoder, OnnxQueryEncoder) and _cos(vector, expected)[0] >= 0.999
    assert encoder.text_id == "torch:cpu"
    graph.write_bytes(b"short")  # truncated: not even tried
    assert load_export(paths, tiny_spec.key).tower("text") is None

    cli.env["STYLESEARCH_HOME"] = str(tmp_path)
    out = cli.json("export-onnx", "ox", "--no-image", "--json")  # remade explicitly
    assert out["exported"] == ["text"] and set(out["kept"]) == {"image", "image-int8"}
    assert cli.json("export-onnx", "ox", "--status", "--json")["towers"] == ["text", "image", "image-int8"]
    encoder, vector = text_vector()
    assert encoder.text_id.startswith("onnx:") and _cos(vector, expected)[0] >= 0.999
    (folder / ".build.tmp-killed").mkdir()  # left by an interrupted export: the next writer removes it
    (folder / "text-orphan.onnx").write_bytes(b"moved in, never named by a stamp")
    embed_dataset(paths, tiny_spec, options=EmbedOptions(workers=0))  # nothing to embed
    assert not (folder / ".build.tmp-killed").exists() and not (folder / "text-orphan.onnx").exists()


class _Counting:
    text_id = "fake:1"

    def __init__(self):
        self.calls = []

    def encode_text(self, texts):
        self.calls.append(list(texts))
        return np.stack([np.full(4, len(t), np.float32) for t in texts])


def test_query_cache_answers_repeats_and_ignores_write_failures(tmp_path):
    inner = _Counting()
    cached = CachedQueryEncoder(inner, QueryCache("m", tmp_path / "cache"))
    first = cached.encode_text(["red", "blue", "red"])
    again = cached.encode_text(["blue", "red"])
    assert inner.calls == [["red", "blue"]] and np.array_equal(again, first[[1, 0]])
    inner.text_id = "fake:2"  # another backend or export version: not the same vectors
    cached.encode_text(["red"])
    assert inner.calls[-1] == ["red"]
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    broken = CachedQueryEncoder(inner, QueryCache("m", tmp_path / "blocked" / "cache"))
    assert broken.encode_text(["green"]).shape == (1, 4) and broken.encode_text(["green"]).shape == (1, 4)
    assert inner.calls[-2:] == [["green"], ["green"]]


READER = """
import json, sys
from stylesearch.cli.main import app
try:
    app(sys.argv[1:], prog_name="stylesearch")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(m for m in ("torch", "open_clip", "torchvision", "onnxruntime")
                                                 if m in sys.modules)}), file=sys.stderr)
"""


def _run_reader(base: Path, *args: str) -> tuple[str, dict]:
    """Run the CLI in a fresh process as a user who cannot write the dataset (nobody, when we are root)."""
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop write permission")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(base), "STYLESEARCH_CACHE": str(base / "cache"),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([*prefix, sys.executable, "-c", READER, "--root", str(base / "root"), *args],
                          capture_output=True, text=True, env=env, timeout=120)
    return proc.stdout, json.loads(proc.stderr.strip().splitlines()[-1])


def test_searches_on_a_read_only_dataset_import_no_torch(exported):
    base = Path(tempfile.mkdtemp(prefix="stylesearch-onnx-"))
    try:
        shutil.copytree(exported.home, base / "root" / "ox")
        (base / "cache").mkdir()
        for path in [base, base / "cache", *base.rglob("*")]:  # readable by all, the cache writable by all
            path.chmod(0o777 if "cache" in path.name else (0o555 if path.is_dir() else 0o444))
        before = {p: p.stat().st_mtime_ns for p in (base / "root").rglob("*")}
        out, info = _run_reader(base, "search", "ox", "red stripes", "-k", "3", "--format", "json")
        assert info["code"] == 0 and len(json.loads(out)) == 3
        assert info["modules"] == ["onnxruntime"]  # the ONNX text tower answered; no torch, open_clip, torchvision
        out, info = _run_reader(base, "search", "ox", "red stripes", "-k", "3", "--format", "json")
        assert info["modules"] == [] and len(json.loads(out)) == 3  # repeated: from the query cache
        image = next((base / "root" / "ox" / "images").rglob("*.jpg"))
        out, info = _run_reader(base, "search", "ox", "--image", str(image), "-k", "1", "--format", "json")
        assert info["modules"] == ["onnxruntime"] and json.loads(out)[0]["score"] > 0.999  # the ONNX image tower
        _, info = _run_reader(base, "export-onnx", "ox")
        assert info["code"] == 2 and "torch" not in info["modules"]
        assert {p: p.stat().st_mtime_ns for p in (base / "root").rglob("*")} == before
    finally:
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(base, ignore_errors=True)


def test_embed_with_onnx_backends(exported, tiny_spec, tmp_path):
    from stylesearch.store.catalog import open_catalog

    with open_catalog(exported, readonly=True) as cat:
        reference = dict(zip(*_vectors_by_hash(cat, tiny_spec.key)))
    for backend, workers in (("onnx", 1), ("onnx-int8", 0)):
        paths = make_dataset(tmp_path, backend, 4)  # the same generated images as the first of `exported`
        shutil.copytree(exported.onnx_dir(tiny_spec.key), paths.onnx_dir(tiny_spec.key))
        result = embed_dataset(paths, tiny_spec, options=EmbedOptions(workers=workers, backend=backend))
        summary = result.as_dict()
        assert summary["backend"] == backend and summary["embedded"] == 4 and summary["images_per_second"] > 0
        with open_catalog(paths, readonly=True) as cat:
            hashes, vectors = _vectors_by_hash(cat, tiny_spec.key)
        agreement = _cos(vectors, np.stack([reference[h] for h in hashes]))
        assert agreement.min() >= (0.999 if backend == "onnx" else 0.99)
    assert summary["int8_cosine_mean"] >= 0.99 and summary["int8_cosine_min"] <= summary["int8_cosine_mean"]


def _vectors_by_hash(cat, key):
    ids, vectors = cat.vectors.load(key)
    return [cat.item(str(i)).content_hash for i in ids], vectors


def test_jpeg_reduce_on_decode_stays_within_tolerance(tmp_path):
    pre224 = Preprocess((224, 224), (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
    pre64 = Preprocess((64, 64), (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), resize_mode="longest")
    cases = [("stripes", (1600, 1200), pre224, (800, 600)), ("noise", (1200, 1600), pre224, (600, 800)),
             ("rings", (2000, 800), pre64, (250, 100)), ("dots", (1001, 751), pre64, (1001, 751))]
    for kind, size, pre, decoded in cases:
        path = tmp_path / f"{kind}.jpg"
        render(kind, "warm", 3, size).save(path, quality=90)
        reduced = decode(path, pre)
        assert reduced.size == decoded  # by 2, 4, 8 (>= 2x the resized size); odd sizes never
        full, fast = pre(load_rgb(path)), pre(reduced)
        assert np.abs(full - fast).mean() <= 0.03 and np.abs(full - fast).max() <= 0.3, kind  # ~2/255 on average
