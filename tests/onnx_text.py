"""A small ONNX text tower written without torch, so fast tests run text queries through the real
torch-free path (export stamp, tokenizer port, onnxruntime session) instead of a stand-in encoder.

The tower: token embeddings averaged over the context, then a projection (random weights). It is
not CLIP's transformer, but every step around the model is the one a real export takes, and
`expected_vectors` computes its output with numpy from the same weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stylesearch.embed.encoders.onnx import EXPORT_FORMAT, STAMP
from stylesearch.embed.tokens import SPECIAL_TOKENS, ClipTokenizer, write_merges

# a few BPE merges, in rank order: enough that common words become one or two tokens
MERGES = [("r", "e"), ("e", "d</w>"), ("d", "r"), ("dr", "e"), ("s", "s</w>"), ("dre", "ss</w>"), ("b", "l"),
          ("u", "e</w>"), ("bl", "ue</w>"), ("o", "n"), ("r", "ed</w>"), ("c", "o"), ("co", "o")]


@dataclass
class TextTower:
    table: np.ndarray  # (vocab, width) token embeddings
    projection: np.ndarray  # (width, dim)
    tokenizer: ClipTokenizer

    def expected_vectors(self, texts: list[str]) -> np.ndarray:
        """What onnxruntime should answer for these prompts, as unit rows."""
        out = self.table[self.tokenizer(texts)].mean(axis=1) @ self.projection
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_text_export(folder: Path, model_key: str, dim: int, width: int = 8, seed: int = 0) -> TextTower:
    """Write `export.json`, a vocabulary and `text-t1.onnx` into a model's export folder (onnx_dir)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab-t1.txt.gz"
    write_merges(vocab, MERGES)
    tokenizer = ClipTokenizer.from_file(vocab)
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(max(tokenizer.encoder.values()) + 1, width)).astype(np.float32)
    projection = rng.normal(size=(width, dim)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "tokens"], ["embedded"]),
         helper.make_node("ReduceMean", ["embedded", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "projection"], ["vectors"])],
        "text", [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(projection, "projection"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    tower_file = folder / "text-t1.onnx"
    tower_file.write_bytes(model.SerializeToString())
    stamp = {"format": EXPORT_FORMAT, "model_key": model_key, "dim": dim, "towers": {"text": {
        "file": tower_file.name, "trim": False,
        "files": {tower_file.name: tower_file.stat().st_size, vocab.name: vocab.stat().st_size},
        "tokenizer": {"kind": "clip-bpe", "clean": "lower", "context_length": 77,
                      "special_tokens": SPECIAL_TOKENS, "file": vocab.name}}}}
    (folder / STAMP).write_text(json.dumps(stamp), encoding="utf-8")
    return TextTower(table, projection, tokenizer)
