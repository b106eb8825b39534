"""Where Pillow + numpy spend their time on a Parquet file's images, one core: decode alone,
decode + RGB + bicubic resize, and the whole preprocessing (bench_hf.py's), per output size.
A program that prints figures (images/s), for the README's decode analysis.

    .venv/bin/python scripts/pillow_breakdown.py target/photos/photos.parquet --sizes 96,384
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hf import preprocess  # noqa: E402


def per_second(images: list[bytes], work) -> float:
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 2.0:
        for b in images:
            work(b)
            n += 1
    return n / (time.perf_counter() - t0)


def decode(b: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(b))
    im.load()
    return im


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--sizes", default="96,384")
    args = p.parse_args()
    images = [b.as_py() for b in pq.read_table(args.data, columns=["jpg"])["jpg"]]
    print(f"{len(images)} images of {args.data}, one core, Pillow {Image.__version__}")
    print(f"decode alone                      {per_second(images, decode):8.0f} img/s")
    for size in [int(s) for s in args.sizes.split(",")]:
        resize = per_second(images, lambda b: decode(b).convert("RGB").resize((size, size), Image.BICUBIC))
        whole = per_second(images, lambda b: preprocess(b, size))
        print(f"decode + resize to {size:>4} px          {resize:8.0f} img/s")
        print(f"decode + resize + normalise {size:>4} px {whole:8.0f} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
