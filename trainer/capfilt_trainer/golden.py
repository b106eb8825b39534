"""Golden outputs for the Rust side's parity tests, computed with HF transformers as the
reference: for benchmark images and real photos from scikit-image (astronaut, coffee, chelsea,
rocket; public domain / CC0), the encoded image, HF BlipImageProcessor's pixel tensor, the greedy
caption of HF ``generate`` and the filter's ITM probability and ITC similarity for a few texts.

    python -m capfilt_trainer golden --captioner models/shapes-seed/captioner \
        --filter models/shapes-seed/filter --data BENCH/eval --out testdata/golden
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from . import tokenizer as toks
from .data import read_examples
from .export import strip_ids
from .preprocess import decode_caption, encode_texts, prompt_ids

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]


def _photos() -> list[tuple[str, bytes]]:
    from skimage import data as skdata

    out = []
    for name in PHOTOS:
        im = Image.fromarray(getattr(skdata, name)())
        im.thumbnail((256, 256), Image.LANCZOS)  # keeps the fixtures small
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append((f"{name}.png", buf.getvalue()))
    # One JPEG too, for the decoder's JPEG path (PIL's libjpeg-turbo vs the Rust decoder).
    buf = io.BytesIO()
    jpeg = Image.fromarray(skdata.chelsea())
    jpeg.thumbnail((256, 256), Image.LANCZOS)
    jpeg.save(buf, format="JPEG", quality=90)
    out.append(("chelsea.jpg", buf.getvalue()))
    # Grayscale and RGBA, for the conversions to RGB.
    buf = io.BytesIO()
    gray = Image.fromarray(skdata.camera())
    gray.thumbnail((256, 256), Image.LANCZOS)
    gray.save(buf, format="PNG")
    out.append(("camera-gray.png", buf.getvalue()))
    rgba = Image.fromarray(skdata.coffee()).convert("RGBA")
    rgba.thumbnail((256, 256), Image.LANCZOS)
    rgba.putalpha(128)
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    out.append(("coffee-rgba.png", buf.getvalue()))
    return out


def golden(args) -> None:
    cap_dir, fil_dir, out = Path(args.captioner), Path(args.filter), Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "pixels").mkdir(parents=True, exist_ok=True)
    cap_manifest = json.loads((cap_dir / "bundle.json").read_text())
    fil_manifest = json.loads((fil_dir / "bundle.json").read_text())
    cap_tok, fil_tok = toks.load(cap_dir / "tokenizer.json"), toks.load(fil_dir / "tokenizer.json")
    captioner = BlipForConditionalGeneration.from_pretrained(str(cap_dir / "checkpoint")).eval()
    filt = BlipForImageTextRetrieval.from_pretrained(str(fil_dir / "checkpoint")).eval()
    size = cap_manifest["preprocessing"]["image_size"]
    if fil_manifest["preprocessing"]["image_size"] != size:
        raise ValueError("captioner and filter bundles must share the image size for one golden set")
    processor = BlipImageProcessorPil(size={"height": size, "width": size})
    gen = cap_manifest["generation"]
    special = toks.special_ids(cap_tok)
    fspecial = toks.special_ids(fil_tok)

    items = []
    for e in read_examples(args.data, limit=args.count):
        ext = "png" if e.image[:4] == b"\x89PNG" else "jpg"
        items.append((f"bench-{e.key}.{ext}", e.image, e.text))
    items += [(n, b, "a picture of a cat") for n, b in _photos()]

    records = []
    for name, data, web_text in items:
        (out / "images" / name).write_bytes(data)
        with Image.open(io.BytesIO(data)) as im:
            px = processor(images=im, return_tensors="pt")["pixel_values"]
        np.save(out / "pixels" / f"{name}.npy", px[0].numpy().astype(np.float32))
        pid = prompt_ids(cap_tok, special["[DEC]"])
        with torch.no_grad():
            ids = captioner.generate(px, input_ids=torch.tensor([pid + [special["[SEP]"]]]), max_length=gen["max_length"],
                                     min_length=gen["min_length"], do_sample=False, num_beams=1)
        greedy = strip_ids(ids[0].tolist(), special)
        caption = decode_caption(cap_tok, greedy)
        texts = [web_text, caption, "free shipping on all orders"]
        tids, tmask = encode_texts(fil_tok, texts, fspecial["[CLS]"], fil_manifest["tokenizer"]["max_length"])
        enc = tids.clone()
        enc[:, 0] = fspecial["[ENC]"]
        pxs = px.repeat(len(texts), 1, 1, 1)
        with torch.no_grad():
            itm = torch.softmax(filt(pixel_values=pxs, input_ids=enc, attention_mask=tmask, use_itm_head=True).itm_score, -1)[:, 1]
            itc = filt(pixel_values=px, input_ids=tids, attention_mask=tmask, use_itm_head=False).itm_score[0]
        records.append({
            "image": f"images/{name}", "pixels": f"pixels/{name}.npy",
            "greedy_ids": greedy, "greedy_caption": caption,
            "texts": texts, "itm_prob": [float(x) for x in itm], "itc_sim": [float(x) for x in itc],
        })
    meta = {
        "captioner_bundle_json_sha256": _sha(cap_dir / "bundle.json"),
        "filter_bundle_json_sha256": _sha(fil_dir / "bundle.json"),
        "image_size": size,
        "generation": {"decoding": "greedy", "max_length": gen["max_length"], "min_length": gen["min_length"], "repetition_penalty": 1.0},
        "reference": "HF transformers BlipImageProcessorPil + BlipForConditionalGeneration.generate + BlipForImageTextRetrieval",
        "records": records,
    }
    (out / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {len(records)} golden records to {out}")


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()
