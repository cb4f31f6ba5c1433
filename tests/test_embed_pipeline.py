"""The ONNX embedding pipeline: decoding reads at most one batch ahead of the model (memory stays two
batches however slow the model), batches keep their files' order and indices with failures counted,
and an embedding session has every graph optimisation with its threads sleeping, not spinning."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stylesearch.embed.encoders import onnx as onnx_encoder


def fake_load(source, transform=None, draft=None):
    """Marks the file decoded (a file beside it: visible across processes); 'bad' names fail."""
    source.with_suffix(".decoded").touch()
    if "bad" in source.name:
        return None, "cannot decode"
    return np.full((3, 2, 2), float(source.stem.split("-")[-1]), np.float32), None


@pytest.mark.parametrize("workers", [0, 1])
def test_decoding_reads_one_batch_ahead_and_keeps_order(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(onnx_encoder, "load_item", fake_load)
    files = [tmp_path / (f"bad-{n}.jpg" if n % 7 == 3 else f"img-{n}.jpg") for n in range(200)]
    batches = onnx_encoder.decoded_batches(files, None, 4, workers)
    first = next(batches)
    time.sleep(1.0)  # a model run: decoding may go on meanwhile, but only for the next batch
    assert len(list(tmp_path.glob("*.decoded"))) <= 8  # the unbounded read-ahead had decoded all 200 by now
    assert first[0] == [0, 1, 2] and first[2] == [(3, "cannot decode")]
    assert first[1][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    rest = list(batches)
    indices = first[0] + [i for batch in rest for i in batch[0]]
    failed = [i for _, _, bad in [first, *rest] for i, _ in bad]
    assert indices == [n for n in range(200) if n % 7 != 3] and failed == [n for n in range(200) if n % 7 == 3]
    assert all(b[1][:, 0, 0, 0].tolist() == [float(i) for i in b[0]] for b in rest)


def test_embedding_sessions_optimise_fully_and_do_not_spin(tmp_path):
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
    assert embedding.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    query = onnx_encoder.session(path, single_run=True).get_session_options()
    assert query.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
