#!/usr/bin/env python3
"""Writes the small ONNX graphs capfilt's Rust tests load through ONNX Runtime.

    .venv/bin/python scripts/make-test-graphs.py      # -> testdata/onnx/*.onnx

smoke.onnx: x [N, 3] float32 ->
    probs = Softmax(x @ W + b, axis=-1)      [N, 2]
    relu  = Relu(x)                          [N, 3]
with W = [[1, -1], [2, 0.5], [-0.5, 3]] and b = [0.25, -0.25] (the Rust test recomputes both).
Opset 18, dynamic batch dimension. Output is deterministic (no timestamps in ONNX models).
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent.parent / "testdata" / "onnx"


def smoke() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.array([[1.0, -1.0], [2.0, 0.5], [-0.5, 3.0]], dtype=np.float32), "W")
    b = numpy_helper.from_array(np.array([0.25, -0.25], dtype=np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("Relu", ["x"], ["relu"]),
    ]
    graph = helper.make_graph(
        nodes,
        "capfilt_smoke",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="capfilt")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "smoke.onnx"
    onnx.save(smoke(), path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
