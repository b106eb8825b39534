"""What int8 gives a bundle's vision graph on this CPU, in ONNX Runtime and in PyTorch: images/s
of the fp32 graph and of its dynamic int8 copy (`quantize_dynamic`, QInt8 weights), same session
settings; and, when the bundle has its HF checkpoint (`checkpoint/` next to the graph), the same
tower in PyTorch fp32 and under PyTorch's own dynamic int8 quantisation of its Linear layers
(`torch.ao.quantization.quantize_dynamic`, the int8 a careful PyTorch user would reach for), same
thread count. Prints the CPU's int8 and bf16 instruction sets first (ONNX Runtime's MLAS and
PyTorch's fbgemm use VNNI dot products where the CPU has them), and how far each int8 output is
from its fp32 one (largest |difference| over the output's range). A program that prints figures,
for the README's base-shape analysis.

    .venv/bin/python scripts/int8_probe.py target/base/filter/vision.onnx --images 4 --threads 2
"""
from __future__ import annotations

import argparse
import logging
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic


def cpu_flags() -> str:
    """The CPU's int8 / bf16 instruction sets, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"]
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/vnni/bf16/amx"


def rate(run, x: np.ndarray) -> tuple[float, np.ndarray]:
    """Images/s of ``run`` on ``x`` after a one-image warm-up, and its output."""
    run(x[:1])
    t0 = time.perf_counter()
    out = run(x)
    return len(x) / (time.perf_counter() - t0), out


def onnx_runner(path: Path, threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: x})[0]


def torch_runners(checkpoint: Path, threads: int):
    """fp32 and dynamic-int8 runners of the checkpoint's vision tower, or None without one."""
    if not (checkpoint / "config.json").exists():
        return None
    import torch
    from transformers import AutoConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval

    torch.set_num_threads(threads)
    arch = (AutoConfig.from_pretrained(str(checkpoint)).architectures or [""])[0]
    cls = BlipForConditionalGeneration if arch == "BlipForConditionalGeneration" else BlipForImageTextRetrieval
    tower = cls.from_pretrained(str(checkpoint)).vision_model.eval()
    quantised = torch.ao.quantization.quantize_dynamic(tower, {torch.nn.Linear}, dtype=torch.qint8)

    def runner(module):
        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
        return run

    return runner(tower), runner(quantised), torch.__version__


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("graph", help="a vision.onnx with input pixel_values [B, 3, S, S]")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    # quantize_dynamic's advice to pre-process and torch.ao's deprecation notices: not figures.
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    src = Path(args.graph)
    size = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[2]
    x = np.random.default_rng(0).standard_normal((args.images, 3, size, size)).astype(np.float32)
    print(f"CPU int8/bf16 instructions: {cpu_flags()}; {args.images} images, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / "vision.int8.onnx"
        quantize_dynamic(str(src), str(q), weight_type=QuantType.QInt8)
        r32, o32 = rate(onnx_runner(src, args.threads), x)
        r8, o8 = rate(onnx_runner(q, args.threads), x)
    print(f"{src}: ONNX Runtime {ort.__version__} fp32 {r32:.2f} img/s, dynamic int8 {r8:.2f} img/s ({r8 / r32:.2f}x); "
          f"int8 vs fp32 largest |difference| {relative(o8, o32):.1%} of the output's range")
    runners = torch_runners(src.parent / "checkpoint", args.threads)
    if runners is None:
        print("no checkpoint/ next to the graph: PyTorch not measured")
        return 0
    t32_run, t8_run, version = runners
    t32, p32 = rate(t32_run, x)
    t8, p8 = rate(t8_run, x)
    print(f"PyTorch {version}: fp32 {t32:.2f} img/s, dynamic int8 {t8:.2f} img/s ({t8 / t32:.2f}x); "
          f"int8 vs fp32 largest |difference| {relative(p8, p32):.1%} of the output's range")
    print(f"ONNX Runtime vs PyTorch: fp32 {r32 / t32:.2f}x, int8 {r8 / t8:.2f}x, "
          f"ONNX Runtime int8 vs PyTorch fp32 {r8 / t32:.2f}x; ONNX fp32 vs PyTorch fp32 largest |difference| "
          f"{relative(o32, p32):.1e} of the range")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
