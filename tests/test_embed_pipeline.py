"""The embedding pipeline: decoding reads at most one batch ahead of the model (memory stays two
batches however slow the model), the first batch is short, batches keep their files' order and
indices with failures counted, an embedding session has every graph optimisation, and int8 runs
check a share of their images against fp32."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stylesearch.embed.encoders import onnx as onnx_encoder
from stylesearch.embed.encoders import pixels


def fake_load(source, transform=None, draft=None):
    """Marks the file decoded (a file beside it: visible across processes); 'bad' names fail."""
    source.with_suffix(".decoded").touch()
    if "bad" in source.name:
        return None, "cannot decode"
    return np.full((3, 2, 2), float(source.stem.split("-")[-1]), np.float32), None


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_decoding_reads_one_batch_ahead_and_keeps_order(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(pixels, "load_item", fake_load)
    monkeypatch.setattr(pixels, "FIRST_BATCH", 3)
    files = [tmp_path / (f"bad-{n}.jpg" if n % 7 == 3 else f"img-{n}.jpg") for n in range(200)]
    batches = pixels.decoded_batches(files, None, 5, workers)
    first = next(batches)
    time.sleep(1.0)  # a model run: decoding may go on meanwhile, but only for the next batch
    assert len(list(tmp_path.glob("*.decoded"))) <= 3 + 5  # the unbounded read-ahead had decoded all 200 by now
    assert first[0] == [0, 1, 2] and first[2] == []  # the short first batch
    second = next(batches)
    assert second[0] == [4, 5, 6, 7] and second[2] == [(3, "cannot decode")]
    assert first[1][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    rest = [first, second, *batches]
    assert [len(b[0]) + len(b[2]) for b in rest] == [3] + [5] * 39 + [2]
    indices = [i for batch in rest for i in batch[0]]
    failed = [i for _, _, bad in rest for i, _ in bad]
    assert indices == [n for n in range(200) if n % 7 != 3] and failed == [n for n in range(200) if n % 7 == 3]
    assert all(b[1][:, 0, 0, 0].tolist() == [float(i) for i in b[0]] for b in rest)


def test_a_batch_smaller_than_the_first_batch_and_no_files(monkeypatch):
    monkeypatch.setattr(pixels, "load_item", lambda f, transform=None, draft=None: (np.zeros((3, 1, 1)), None))
    assert [b[0] for b in pixels.decoded_batches(list(range(7)), None, 2, 1)] == [[0, 1], [2, 3], [4, 5], [6]]
    assert list(pixels.decoded_batches([], None, 4, 1)) == [] == list(pixels.decoded_batches([], None, 4, 0))


def test_int8_agreement_sample_grows_with_the_run():
    sample = onnx_encoder.agreement_sample
    assert [sample(n) for n in (1, 3, 4, 100, 1000, 1536, 2048, 4096, 5000)] == [1, 3, 4, 4, 4, 6, 8, 16, 16]


def test_embedding_sessions_optimise_fully(tmp_path):
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["pixels"], ["out"])], "g",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 3])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    embedding = onnx_encoder.session(path).get_session_options()
    assert embedding.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert embedding.intra_op_num_threads == onnx_encoder.available_cores()
    query = onnx_encoder.session(path, single_run=True).get_session_options()
    assert query.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
