"""ONNX Runtime towers of a model, read from the dataset's export (made by stylesearch.embed.export).

Nothing here imports torch or open_clip: a text query needs onnxruntime, numpy and the
tokenizer port; an image query or embedding run needs PIL too. `load_export` returns None for
anything missing, stale or unreadable, and callers then fall back to torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ...cores import available_cores
from .base import EncodedBatch, EncoderOptions, decode_workers
from .pixels import Preprocess, decoded_batches

EXPORT_FORMAT = 1  # bump when what an export contains or means changes; older exports are then stale
STAMP = "export.json"  # names the current files of each tower; replaced last, atomically
TOKENIZERS = ("clip-bpe",)  # tokenizer kinds the torch-free text path can reproduce
AGREEMENT_SAMPLE = 16  # images per int8 run also encoded in fp32 to report their agreement (at most)
AGREEMENT_SHARE = 256  # ... and one in this many of the run's images, at least MIN_AGREEMENT_SAMPLE
MIN_AGREEMENT_SAMPLE = 4  # (ViT-B-32, 2 cores: the fp32 session 0.3 s + 4 images 0.4 s; 15 images 1.1 s)


@dataclass(frozen=True)
class OnnxExport:
    """A validated export: its folder and stamp; towers whose files are all present."""

    folder: Path
    stamp: dict

    @property
    def model_key(self) -> str:
        return self.stamp["model_key"]

    @property
    def dim(self) -> int:
        return int(self.stamp["dim"])

    def tower(self, name: str) -> dict | None:
        """The stamp entry of a tower ('text', 'image', 'image-int8') when its files are intact."""
        entry = self.stamp.get("towers", {}).get(name)
        if not isinstance(entry, dict) or not _files_intact(self.folder, entry.get("files")):
            return None
        if name == "text" and entry.get("tokenizer", {}).get("kind") not in TOKENIZERS:
            return None
        return entry

    def path(self, name: str) -> Path:
        return self.folder / self.stamp["towers"][name]["file"]


def _files_intact(folder: Path, files) -> bool:
    """Every file exists with its recorded size (cheap; a damaged file fails later, in onnxruntime)."""
    if not isinstance(files, dict) or not files:
        return False
    try:
        return all((folder / name).stat().st_size == size for name, size in files.items())
    except OSError:
        return False


def read_stamp(folder: Path) -> dict | None:
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def load_export(paths, model_key: str) -> OnnxExport | None:
    """The dataset's current export of a model, or None when missing, stale or unreadable."""
    folder = paths.onnx_dir(model_key)
    stamp = read_stamp(folder)
    if not stamp or stamp.get("format") != EXPORT_FORMAT or stamp.get("model_key") != model_key:
        return None
    if not isinstance(stamp.get("towers"), dict) or not isinstance(stamp.get("dim"), int):
        return None
    return OnnxExport(folder, stamp)


def session(path: Path, single_run: bool = False):
    """An onnxruntime CPU session on every core; `single_run` starts faster (basic graph optimisations,
    no weight prepacking) at the cost of slower runs: right for one query, wrong for embedding. An
    embedding session has every graph optimisation and onnxruntime's default spinning threads: on 2
    cores, with a decode thread beside it, sleeping threads left the decoder no faster and the model
    slower (ViT-B-32: int8 -15% model-only; end to end fp32 -15%, int8 unchanged)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if single_run:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.add_session_config_entry("session.disable_prepacking", "1")
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class OnnxTextTower:
    """Prompts -> unit vectors with the exported text tower and the torch-free tokenizer."""

    def __init__(self, export: OnnxExport, single_run: bool = True):
        from ..tokens import ClipTokenizer

        entry = export.stamp["towers"]["text"]
        tok = entry["tokenizer"]
        self.tokenizer = ClipTokenizer.from_file(export.folder / tok["file"], context_length=tok["context_length"],
                                                 cleaning=tok["clean"], special_tokens=tok["special_tokens"])
        self.trim = bool(entry.get("trim"))
        self.session = session(export.path("text"), single_run)

    def tokens(self, texts: list[str]) -> np.ndarray:
        ids = self.tokenizer(texts)
        if self.trim:  # causal text towers: nothing after the end-of-text token changes its output
            ends = (ids == self.tokenizer.eot).argmax(axis=1)
            ids = ids[:, : max(2, int(ends.max()) + 1)]
        return ids

    def encode(self, texts: list[str]) -> np.ndarray:
        return unit_rows(self.session.run(None, {"tokens": self.tokens(texts)})[0])


class OnnxImageTower:
    """Preprocessed pixel batches -> unit vectors with the exported image tower (fp32 or int8)."""

    def __init__(self, export: OnnxExport, name: str = "image", single_run: bool = False):
        self.preprocess = Preprocess.from_config(export.stamp["towers"]["image"]["preprocess"])
        self._path, self._single_run, self._session = export.path(name), single_run, None

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        if self._session is None:  # made on first use: after an embedding run has forked its decoders
            self._session = session(self._path, self._single_run)
        return unit_rows(self._session.run(None, {"pixels": np.ascontiguousarray(pixels, np.float32)})[0])

    def encode_image(self, image) -> np.ndarray:
        """One decoded RGB PIL image -> one unit vector."""
        return self.encode(self.preprocess(image)[None])[0]


def agreement_sample(images: int) -> int:
    """Images of an int8 run also encoded in fp32: one in AGREEMENT_SHARE, from MIN_AGREEMENT_SAMPLE to
    AGREEMENT_SAMPLE (never more than the run has)."""
    return min(images, max(MIN_AGREEMENT_SAMPLE, min(AGREEMENT_SAMPLE, images // AGREEMENT_SHARE)))


class OnnxEncoder:
    """Embeds images with the exported image tower on the CPU; int8 runs report their agreement with fp32."""

    def __init__(self, export: OnnxExport, options: EncoderOptions, int8: bool = False):
        self.export, self.options = export, options
        self.backend = "onnx-int8" if int8 else "onnx"
        self.tower = OnnxImageTower(export, "image-int8" if int8 else "image")
        self.key, self.dim, self.device = export.model_key, export.dim, "cpu"
        self._agreement: list[float] = []
        self._exact: OnnxImageTower | None = None  # the fp32 tower, while measuring int8 agreement

    def encode(self, files: Sequence[Path]) -> Iterator[EncodedBatch]:
        batches = decoded_batches(files, self.tower.preprocess, self.options.batch_size, decode_workers(self.options))
        sample = agreement_sample(len(files)) if self.backend == "onnx-int8" else 0
        for idx, pixels, bad in batches:
            vectors = self.tower.encode(pixels) if pixels is not None else None
            if vectors is not None and len(self._agreement) < sample:
                self._measure_agreement(pixels, vectors, sample)
            yield EncodedBatch(idx, vectors, bad)

    def _measure_agreement(self, pixels: np.ndarray, vectors: np.ndarray, sample: int) -> None:
        n = sample - len(self._agreement)
        # a quick-start session: it runs once or twice, for `sample` images
        self._exact = self._exact or OnnxImageTower(self.export, "image", single_run=True)
        self._agreement += np.sum(self._exact.encode(pixels[:n]) * vectors[:n], axis=1).tolist()
        if len(self._agreement) >= sample:
            self._exact = None

    def report(self) -> dict:
        out: dict = {"backend": self.backend}
        if self._agreement:
            out["int8_cosine_mean"] = round(float(np.mean(self._agreement)), 5)
            out["int8_cosine_min"] = round(float(np.min(self._agreement)), 5)
        return out
