"""What ONNX Runtime's dynamic int8 quantisation gives a bundle's vision graph on this CPU:
images/s of the fp32 graph and of its `quantize_dynamic` (QInt8 weights) copy, same session
settings, and how far the int8 outputs are from fp32 (largest |difference| over the output's
range). A program that prints figures, for the README's base-shape analysis.

    .venv/bin/python scripts/int8_probe.py target/base/filter/vision.onnx --images 4 --threads 2
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic


def per_image(path: Path, x: np.ndarray, threads: int) -> tuple[float, np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    s.run(None, {name: x[:1]})  # warm-up
    t0 = time.perf_counter()
    out = s.run(None, {name: x})[0]
    return (time.perf_counter() - t0) / len(x), out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graph", help="a vision.onnx with input pixel_values [B, 3, S, S]")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    src = Path(args.graph)
    size = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[2]
    x = np.random.default_rng(0).standard_normal((args.images, 3, size, size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / "vision.int8.onnx"
        quantize_dynamic(str(src), str(q), weight_type=QuantType.QInt8)
        t32, o32 = per_image(src, x, args.threads)
        t8, o8 = per_image(q, x, args.threads)
    rel = float(np.abs(o8 - o32).max() / np.abs(o32).max())
    print(f"{src}: fp32 {1 / t32:.2f} img/s, dynamic int8 {1 / t8:.2f} img/s ({t32 / t8:.2f}x), "
          f"int8 vs fp32 largest |difference| {rel:.1%} of the output's range ({args.images} images, {args.threads} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
