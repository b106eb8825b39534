#!/usr/bin/env python3
"""The CapFilt step done by HF transformers in PyTorch: the baseline `capfilt-bench` prints next
to capfilt's own figures (it runs this script itself; see README "Performance").

Same work as capfilt per image: decode + RGB + bicubic resize + normalise (Pillow + numpy, as
HF's BlipImageProcessor), one nucleus-sampled caption (top-p 0.9, repetition penalty 1.1, min 10 /
max 30 tokens) with HF `generate` (KV cache on), then the filter on the web text and the
synthetic caption: vision once per image, ITM head and ITC similarity for both texts. In fp32,
fp16 (CUDA) or PyTorch's dynamic int8 (CPU, `--dtype int8`). Each preprocessing figure is the best
of `--windows` one-second windows; `--preprocess-only` measures those alone. Prints one JSON
object on stdout.

    python scripts/bench_hf.py --captioner models/shapes-seed/captioner \
        --filter models/shapes-seed/filter --data BENCH/web/part-00000.parquet \
        --images 64 --batch-sizes 1,8,32 --threads 2
"""
from __future__ import annotations

import argparse
import ctypes
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

from capfilt_trainer.preprocess import encode_texts  # the same text encoding the trainer uses

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def preprocess(data: bytes, size: int, draft: bool = False) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        if draft:
            im.draft("RGB", (size, size))  # DCT-domain downscaling of JPEGs (no-op for others)
        return resize_normalise(im.convert("RGB"), size)


def resize_normalise(im: Image.Image, size: int) -> np.ndarray:
    x = np.asarray(im.resize((size, size), resample=Image.BICUBIC), dtype=np.float32) * np.float32(1 / 255)
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def keep_freed_memory() -> bool:
    """Gives Pillow its faster heap: glibc hands every freed block above its mmap threshold (128
    KiB at first, raised only as such blocks are freed) back to the OS, so a fresh process
    page-faults its way through each decoded image, and Pillow + numpy's preprocessing at 384 px
    runs about 20% slower than in a process whose threshold has been raised (as a long-running
    loader's, or one that loaded a model, ends up). Raising it up front (and the trim threshold
    with it) measures the baseline at its better speed. False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))


def preprocessing_rates(images: list[bytes], size: int, windows: int) -> dict[str, float]:
    """Images/s on this thread of decode + resize + normalise, the decode alone, the resize +
    normalise alone (images decoded beforehand) and the whole with Pillow's JPEG draft mode: each
    the best of `windows` one-second windows, the four taking turns so that a slow spell of a
    shared machine cannot fall on one of them only (the best window, as `timeit` advises)."""
    decoded = []
    for b in images:
        with Image.open(io.BytesIO(b)) as im:
            decoded.append(im.convert("RGB"))

    def decode_only(b: bytes) -> None:
        with Image.open(io.BytesIO(b)) as im:
            im.load()

    work = {
        "decode_images_per_second_per_core": (images, lambda b: preprocess(b, size)),
        "decode_only_images_per_second_per_core": (images, decode_only),
        "resize_only_images_per_second_per_core": (decoded, lambda im: resize_normalise(im, size)),
        "draft_images_per_second_per_core": (images, lambda b: preprocess(b, size, True)),
    }
    best = dict.fromkeys(work, 0.0)
    for _ in range(max(windows, 1)):
        for name, (items, f) in work.items():
            t0 = time.perf_counter()
            n = 0
            while True:
                for x in items:
                    f(x)
                n += len(items)
                if time.perf_counter() - t0 >= 1.0:
                    break
            best[name] = max(best[name], n / (time.perf_counter() - t0))
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--captioner", required=True, help="captioner bundle folder (its checkpoint/ is loaded)")
    p.add_argument("--filter", required=True, help="filter bundle folder")
    p.add_argument("--data", required=True, help="Parquet file with key, caption, jpg")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="model weights and activations (fp16: CUDA only; int8: PyTorch's dynamic quantisation of "
                        "every nn.Linear, torch.ao quantize_dynamic, CPU only)")
    p.add_argument("--windows", type=int, default=5,
                   help="each preprocessing figure is the best of this many one-second windows, the four "
                        "measurements taking turns")
    p.add_argument("--preprocess-only", action="store_true",
                   help="measure the preprocessing lines only (no model is loaded or run)")
    p.add_argument("--default-heap", action="store_true",
                   help="leave glibc's thresholds as they are (see keep_freed_memory): Pillow slower")
    args = p.parse_args()
    heap_kept = not args.default_heap and keep_freed_memory()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    cap_dir, fil_dir = Path(args.captioner), Path(args.filter)
    cap_manifest = json.loads((cap_dir / "bundle.json").read_text())
    fil_manifest = json.loads((fil_dir / "bundle.json").read_text())
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    if not args.preprocess_only:
        captioner = BlipForConditionalGeneration.from_pretrained(str(cap_dir / "checkpoint")).eval().to(dev, dtype)
        filt = BlipForImageTextRetrieval.from_pretrained(str(fil_dir / "checkpoint")).eval().to(dev, dtype)
    if args.dtype == "int8" and not args.preprocess_only:
        # PyTorch's own dynamic int8 on the CPU, set up as capfilt's int8 graphs are: every
        # nn.Linear with int8 weights per output channel, activations quantised at run time.
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        qconfig = {torch.nn.Linear: per_channel_dynamic_qconfig}
        captioner, filt = quantize_dynamic(captioner, qconfig), quantize_dynamic(filt, qconfig)
    cap_tok = Tokenizer.from_file(str(cap_dir / "tokenizer.json"))
    fil_tok = Tokenizer.from_file(str(fil_dir / "tokenizer.json"))
    csp = cap_manifest["tokenizer"]["special_tokens"]
    fsp = fil_manifest["tokenizer"]["special_tokens"]
    gen = cap_manifest["generation"]
    size = cap_manifest["preprocessing"]["image_size"]
    fsize = fil_manifest["preprocessing"]["image_size"]
    prompt = cap_tok.encode(cap_manifest.get("prompt", "")).ids[:-1]
    prompt[0] = csp["dec"]["id"]

    table = pq.read_table(args.data, columns=["caption", "jpg"]).slice(0, args.images)
    images = [b.as_py() for b in table["jpg"]]
    captions = [c.as_py() or "" for c in table["caption"]]

    rates = preprocessing_rates(images, size, args.windows)
    draft_diff = [np.abs(preprocess(b, size, True) - preprocess(b, size)) for b in images]

    def step(batch_imgs: list[bytes], batch_caps: list[str]) -> None:
        px = torch.from_numpy(np.stack([preprocess(b, size) for b in batch_imgs])).to(dev, dtype)
        ids = torch.tensor([prompt] * len(batch_imgs), device=dev)
        out = captioner.generate(pixel_values=px, input_ids=ids, do_sample=True, top_p=gen["top_p"],
                                 repetition_penalty=gen["repetition_penalty"], min_length=gen["min_length"],
                                 max_length=gen["max_length"])
        synthetic = [cap_tok.decode(o.tolist(), skip_special_tokens=True) for o in out]
        fpx = px if fsize == size else torch.from_numpy(np.stack([preprocess(b, fsize) for b in batch_imgs])).to(dev, dtype)
        emb = filt.vision_model(pixel_values=fpx).last_hidden_state
        texts = batch_caps + synthetic
        tids, tmask = encode_texts(fil_tok, texts, fsp["cls"]["id"], fil_manifest["tokenizer"]["max_length"])
        tids, tmask = tids.to(dev), tmask.to(dev)
        emb2 = torch.cat([emb, emb], 0)
        enc = tids.clone()
        enc[:, 0] = fsp["enc"]["id"]
        atts = torch.ones(emb2.shape[:-1], dtype=torch.long, device=dev)
        fused = filt.text_encoder(input_ids=enc, attention_mask=tmask, encoder_hidden_states=emb2,
                                  encoder_attention_mask=atts).last_hidden_state
        itm = torch.softmax(filt.itm_head(fused[:, 0, :]), -1)[:, 1]
        text = filt.text_encoder(input_ids=tids, attention_mask=tmask).last_hidden_state
        img_feat = F.normalize(filt.vision_proj(emb2[:, 0, :]), dim=-1)
        txt_feat = F.normalize(filt.text_proj(text[:, 0, :]), dim=-1)
        _ = (itm > 0.5).tolist(), (img_feat * txt_feat).sum(-1).tolist()

    results = []
    batch_sizes = [] if args.preprocess_only else [int(x) for x in args.batch_sizes.split(",")]
    with torch.inference_mode():
        for bs in batch_sizes:
            step(images[:bs], captions[:bs])  # warm-up
            t0 = time.perf_counter()
            for i in range(0, len(images), bs):
                step(images[i : i + bs], captions[i : i + bs])
            secs = time.perf_counter() - t0
            results.append({"batch_size": bs, "images_per_second": len(images) / secs, "seconds": secs})
            print(f"[bench_hf] batch {bs}: {len(images) / secs:.2f} images/s", file=sys.stderr, flush=True)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": args.threads,
        "dtype": args.dtype,
        "images": len(images),
        "windows": args.windows,
        "heap_kept": heap_kept,
        **rates,
        "draft_max_abs_diff": float(max(d.max() for d in draft_diff)),
        "draft_mean_abs_diff": float(np.mean([d.mean() for d in draft_diff])),
        "step": results,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
