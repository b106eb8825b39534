"""Real photos for the decode benchmark: scikit-image's bundled colour photos (public domain /
CC0), cropped and re-encoded as baseline 4:2:0 JPEGs whose long side is 300 to 1000 px (what
web alt-text images look like), written as an img2dataset-style Parquet file (key, url,
caption, jpg). Deterministic: the same arguments give the same bytes.

    .venv/bin/python scripts/make_photo_bench.py --out target/photos/photos.parquet --count 64
"""
from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from skimage import data

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--min-side", type=int, default=300)
    p.add_argument("--max-side", type=int, default=1000)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    sources = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
    keys, jpgs = [], []
    for i in range(args.count):
        src = sources[i % len(sources)]
        w, h = src.size
        # A random crop of at least half of each side, then scaled so its long side is in range.
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        im = src.crop((x, y, x + cw, y + ch))
        long_side = rng.randint(args.min_side, args.max_side)
        scale = long_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=args.quality, subsampling=2)
        keys.append(f"photo-{i:04d}-{PHOTOS[i % len(PHOTOS)]}")
        jpgs.append(buf.getvalue())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "key": keys,
        "url": [f"https://photos.invalid/{k}.jpg" for k in keys],
        "caption": ["a photo"] * len(keys),
        "jpg": pa.array(jpgs, pa.binary()),
    })
    pq.write_table(table, out)
    sizes = [Image.open(io.BytesIO(b)).size for b in jpgs]
    mpx = sum(w * h for w, h in sizes) / len(sizes) / 1e6
    print(f"wrote {out}: {len(jpgs)} JPEGs, {min(max(s) for s in sizes)}-{max(max(s) for s in sizes)} px long side, mean {mpx:.2f} Mpx, {sum(map(len, jpgs)) / len(jpgs) / 1024:.0f} KiB each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
