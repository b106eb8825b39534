#!/usr/bin/env python3
"""The CapFilt step done by HF transformers in PyTorch: the baseline `capfilt-bench` prints next
to capfilt's own figures (it runs this script itself; see README "Performance").

Same work as capfilt per image: decode + RGB + bicubic resize + normalise (Pillow + numpy, as
HF's BlipImageProcessor), one nucleus-sampled caption (top-p 0.9, repetition penalty 1.1, min 10 /
max 30 tokens) with HF `generate` (KV cache on), then the filter on the web text and the
synthetic caption: vision once per image, ITM head and ITC similarity for both texts. In fp32,
fp16 (CUDA) or PyTorch's dynamic int8 (CPU, `--dtype int8`). Prints one JSON object on stdout.

    python scripts/bench_hf.py --captioner models/shapes-seed/captioner \
        --filter models/shapes-seed/filter --data BENCH/web/part-00000.parquet \
        --images 64 --batch-sizes 1,8,32 --threads 2
"""
from __future__ import annotations

import argparse
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
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    cap_dir, fil_dir = Path(args.captioner), Path(args.filter)
    cap_manifest = json.loads((cap_dir / "bundle.json").read_text())
    fil_manifest = json.loads((fil_dir / "bundle.json").read_text())
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    captioner = BlipForConditionalGeneration.from_pretrained(str(cap_dir / "checkpoint")).eval().to(dev, dtype)
    filt = BlipForImageTextRetrieval.from_pretrained(str(fil_dir / "checkpoint")).eval().to(dev, dtype)
    if args.dtype == "int8":
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

    # Decode + resize + normalise, one thread; also with Pillow's JPEG draft mode.
    def per_second(draft: bool) -> float:
        t0 = time.perf_counter()
        n = 0
        while True:
            for b in images:
                preprocess(b, size, draft)
                n += 1
            if time.perf_counter() - t0 >= 1.0:
                break
        return n / (time.perf_counter() - t0)

    def decode_only() -> float:
        t0 = time.perf_counter()
        n = 0
        while True:
            for b in images:
                with Image.open(io.BytesIO(b)) as im:
                    im.load()
                n += 1
            if time.perf_counter() - t0 >= 1.0:
                break
        return n / (time.perf_counter() - t0)

    def resize_only() -> float:
        decoded = []
        for b in images:
            with Image.open(io.BytesIO(b)) as im:
                decoded.append(im.convert("RGB"))
        t0 = time.perf_counter()
        n = 0
        while True:
            for im in decoded:
                resize_normalise(im, size)
                n += 1
            if time.perf_counter() - t0 >= 1.0:
                break
        return n / (time.perf_counter() - t0)

    decode_only_ips = decode_only()
    resize_only_ips = resize_only()
    decode_ips = per_second(False)
    draft_ips = per_second(True)
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
    with torch.inference_mode():
        for bs in [int(x) for x in args.batch_sizes.split(",")]:
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
        "decode_images_per_second_per_core": decode_ips,
        "decode_only_images_per_second_per_core": decode_only_ips,
        "resize_only_images_per_second_per_core": resize_only_ips,
        "draft_images_per_second_per_core": draft_ips,
        "draft_max_abs_diff": float(max(d.max() for d in draft_diff)),
        "draft_mean_abs_diff": float(np.mean([d.mean() for d in draft_diff])),
        "step": results,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
