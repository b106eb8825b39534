"""Export a captioner or filter checkpoint as a capfilt bundle, and verify it: ONNX Runtime
against PyTorch on every graph (max abs diff <= 1e-4, past length 0 and left-padded batches
included) and, for a captioner, identical greedy captions from an ONNX-only loop and HF's
``generate``. A failed check removes nothing but fails the export (exit code 1).

``--precision fp16`` adds a second set of graphs for GPU workers (``variants.fp16`` in
bundle.json): the fp32 graphs converted by ONNX Runtime's float16 converter with fp32 inputs and
outputs kept (so the worker feeds and reads them exactly as the fp32 ones), checked against the
same PyTorch fp32 references with the relative tolerance recorded next to them; the captioner's
check also records how many greedy captions of the fp16 graphs equal HF ``generate``'s."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

from . import PROMPT
from . import tokenizer as toks
from .data import progress, read_examples
from .graphs import CaptionerVision, DecoderStep, FilterItm, FilterVision, kv_names
from .models import CLIP_MEAN, CLIP_STD, image_size
from .preprocess import decode_caption, encode_texts, pixel_values, prompt_ids

OPSET = 18
TOLERANCE = 1e-4
# fp16 graphs against PyTorch fp32: max abs diff / max |reference| of each output.
FP16_RELATIVE_TOLERANCE = 2e-2
PRECISIONS = ("fp32", "fp16")
GENERATION = {"decoding": "nucleus", "top_p": 0.9, "temperature": 1.0, "num_beams": 3, "repetition_penalty": 1.1, "min_length": 10, "max_length": 30}
FILTER_MAX_TOKENS = 35


class ExportCheckFailed(RuntimeError):
    pass


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _export(module, args, path: Path, inputs, outputs, dynamic):
    torch.onnx.export(
        module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
        opset_version=OPSET, dynamo=False, do_constant_folding=True, external_data=False,
    )


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _check(name: str, got, want) -> float:
    diff = float(np.max(np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64))))
    progress(f"[export] check {name}: max abs diff {diff:.2e}")
    if not diff <= TOLERANCE:
        raise ExportCheckFailed(f"{name}: ONNX Runtime differs from PyTorch by {diff:.3e} > {TOLERANCE}")
    return diff


def _check_relative(name: str, got, want, tolerance: float) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if not np.all(np.isfinite(got)):
        raise ExportCheckFailed(f"{name}: the fp16 graph gives non-finite values")
    rel = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-6))
    progress(f"[export] check {name}: max abs diff / max |ref| {rel:.2e}")
    if not rel <= tolerance:
        raise ExportCheckFailed(f"{name}: the fp16 graph differs from PyTorch fp32 by {rel:.3e} of the output's range > {tolerance}")
    return rel


def to_fp16(src: Path, dst: Path) -> None:
    """``src`` converted to float16 weights and arithmetic, inputs and outputs kept float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def fp16_file(file: str) -> str:
    return file.removesuffix(".onnx") + ".fp16.onnx"


def verify_images(url: str | None, count: int = 6) -> list[bytes]:
    if url:
        return [e.image for e in read_examples(url, limit=count)]
    # Built-in: a few drawn images so an export can check itself with no data at hand.
    from PIL import Image, ImageDraw
    import io

    out = []
    for i in range(count):
        im = Image.new("RGB", (80 + 37 * i, 120 - 9 * i), ((50 * i) % 255, 120, 200 - 20 * i))
        d = ImageDraw.Draw(im)
        d.ellipse((10, 10, 60, 60 + i), fill=(230, 40 * i % 255, 30))
        buf = io.BytesIO()
        im.save(buf, format="PNG" if i % 2 else "JPEG")
        out.append(buf.getvalue())
    return out


# --- captioner ----------------------------------------------------------------------------------


def export_captioner(model, tok, out: Path, images: list[bytes], fp16: bool = False) -> tuple[dict, dict, dict | None]:
    cfg = model.config.text_config
    n, heads = cfg.num_hidden_layers, cfg.num_attention_heads
    size = image_size(model)
    special = toks.special_ids(tok)
    px = pixel_values(images, size)
    vision, step = CaptionerVision(model).eval(), DecoderStep(model).eval()
    cross_names = kv_names("cross", n)
    past_names, present_names = kv_names("past", n), kv_names("present", n)

    v_out = ["image_embeds", *cross_names]
    _export(vision, (px[:2],), out / "vision.onnx", ["pixel_values"], v_out,
            {"pixel_values": {0: "batch"}, **{k: {0: "batch"} for k in v_out}})
    with torch.no_grad():
        v_ref = vision(px)
    v_ort = _session(out / "vision.onnx").run(None, {"pixel_values": px.numpy()})
    checks = {"vision": max(_check(f"vision {name}", o, r) for name, o, r in zip(v_out, v_ort, v_ref))}

    # Example inputs with a non-empty past so no dimension is traced as a constant.
    b, p, t = 2, 3, 1
    d = cfg.hidden_size // heads
    ex_past = [torch.zeros(b, heads, p, d) for _ in range(2 * n)]
    ex_cross = [c[:b] for c in v_ref[1:]]
    ex = (torch.full((b, t), special["[DEC]"]), torch.full((b, t), p), torch.ones(b, p + t, dtype=torch.long), *ex_past, *ex_cross)
    d_in = ["input_ids", "position_ids", "attention_mask", *past_names, *cross_names]
    d_out = ["logits", *present_names]
    dyn = {"input_ids": {0: "batch", 1: "step"}, "position_ids": {0: "batch", 1: "step"}, "attention_mask": {0: "batch", 1: "total"}}
    dyn.update({k: {0: "batch", 2: "past"} for k in past_names})
    dyn.update({k: {0: "batch"} for k in cross_names})
    dyn.update({"logits": {0: "batch"}, **{k: {0: "batch", 2: "total"} for k in present_names}})
    _export(step, ex, out / "decoder.onnx", d_in, d_out, dyn)
    dec = _session(out / "decoder.onnx")
    decoder_cases = []  # (label, feed, reference outputs), for the fp16 check

    def run_both(ids, pos, mask, past, cross, label):
        with torch.no_grad():
            ref = step(ids, pos, mask, *past, *cross)
        feed = {"input_ids": ids.numpy(), "position_ids": pos.numpy(), "attention_mask": mask.numpy()}
        feed.update({k: x.numpy() for k, x in zip(past_names + cross_names, list(past) + list(cross))})
        got = dec.run(None, feed)
        decoder_cases.append((label, feed, ref))
        return max(_check(f"decoder {label} {name}", g, r) for name, g, r in zip(d_out, got, ref)), ref

    pid = prompt_ids(tok, special["[DEC]"])
    bsz = px.shape[0]
    cross = list(v_ref[1:])
    ids = torch.tensor([pid] * bsz)
    pos = torch.arange(len(pid)).repeat(bsz, 1)
    empty = [torch.zeros(bsz, heads, 0, d) for _ in range(2 * n)]
    c0, ref0 = run_both(ids, pos, torch.ones_like(ids), empty, cross, "past=0")
    # The wrapper itself against HF's own forward pass (no cache): same last-position logits.
    with torch.no_grad():
        hf = model.text_decoder(input_ids=ids, attention_mask=torch.ones_like(ids), encoder_hidden_states=v_ref[0]).logits[:, -1]
    _check("decoder wrapper vs HF text_decoder", ref0[0], hf)
    nxt = ref0[0].argmax(-1, keepdim=True)
    c1, _ = run_both(nxt, torch.full_like(nxt, len(pid)), torch.ones(bsz, len(pid) + 1, dtype=torch.long), list(ref0[1:]), cross, "past>0")
    # Left-padded batch: sequences of different lengths, padded on the left with masked [PAD]s.
    lp = torch.tensor([[special["[PAD]"], special["[PAD]"]] + pid, pid + [nxt[1, 0].item(), nxt[1, 0].item()]])
    lmask = torch.tensor([[0, 0] + [1] * len(pid), [1] * (len(pid) + 2)])
    lpos = (lmask.cumsum(1) - 1).clamp(min=0)
    c2, _ = run_both(lp, lpos, lmask, [e[:2] for e in empty], [c[:2] for c in cross], "left-padded")
    checks["decoder"] = max(c0, c1, c2)

    # Greedy captions: ONNX-only loop vs HF generate.
    onnx_caps = greedy_onnx(out, tok, px.numpy(), GENERATION["max_length"], GENERATION["min_length"])
    with torch.no_grad():
        hf_ids = model.generate(px, input_ids=torch.tensor([pid + [special["[SEP]"]]] * bsz),
                                max_length=GENERATION["max_length"], min_length=GENERATION["min_length"],
                                do_sample=False, num_beams=1, repetition_penalty=1.0)
    hf_caps = [strip_ids(r.tolist(), special) for r in hf_ids]
    for i, (a, bb) in enumerate(zip(onnx_caps, hf_caps)):
        if a != bb:
            raise ExportCheckFailed(f"greedy caption of image {i} differs: ONNX {a} vs HF generate {bb}")
    progress(f"[export] check greedy captions: {len(hf_caps)} identical to HF generate, e.g. '{decode_caption(tok, hf_caps[0])}'")

    graphs = {
        "vision": {"file": "vision.onnx", "inputs": ["pixel_values"], "outputs": v_out},
        "decoder": {"file": "decoder.onnx", "inputs": d_in, "outputs": d_out},
    }
    if not fp16:
        return graphs, checks, None

    graphs16 = {role: {**g, "file": fp16_file(g["file"])} for role, g in graphs.items()}
    for role, g in graphs.items():
        to_fp16(out / g["file"], out / graphs16[role]["file"])
    tol = FP16_RELATIVE_TOLERANCE
    v16 = _session(out / graphs16["vision"]["file"]).run(None, {"pixel_values": px.numpy()})
    checks16 = {"vision": max(_check_relative(f"fp16 vision {name}", o, r, tol) for name, o, r in zip(v_out, v16, v_ref))}
    dec16 = _session(out / graphs16["decoder"]["file"])
    def real_positions(name, x, feed):
        # Cache entries of masked (left-padding) positions are never attended to; in fp16 they
        # hold whatever the masked rows computed, so only real positions are compared.
        if not name.startswith("present"):
            return np.asarray(x)
        mask = feed["attention_mask"].astype(bool)
        return np.concatenate([np.asarray(x)[b][:, mask[b]] for b in range(mask.shape[0])], axis=1)

    checks16["decoder"] = max(
        _check_relative(f"fp16 decoder {label} {name}", real_positions(name, g, feed), real_positions(name, r, feed), tol)
        for label, feed, ref in decoder_cases
        for name, g, r in zip(d_out, dec16.run(None, feed), ref)
    )
    caps16 = greedy_onnx(out, tok, px.numpy(), GENERATION["max_length"], GENERATION["min_length"],
                         vision_file=graphs16["vision"]["file"], decoder_file=graphs16["decoder"]["file"])
    same = sum(a == b for a, b in zip(caps16, hf_caps))
    progress(f"[export] check fp16 greedy captions: {same} of {len(hf_caps)} identical to HF generate (fp32)")
    variant = {
        "graphs": graphs16,
        "checks": {"relative_tolerance": tol, "max_relative_diff": checks16,
                   "greedy_captions_equal": same, "greedy_captions_checked": len(hf_caps)},
    }
    return graphs, checks, variant


def strip_ids(ids: list[int], special: dict[str, int]) -> list[int]:
    """Generated ids up to and including the first [SEP] (HF pads finished rows)."""
    sep = special["[SEP]"]
    return ids[: ids.index(sep) + 1] if sep in ids else ids


def greedy_onnx(bundle: Path, tok, pixels: np.ndarray, max_length: int, min_length: int,
                vision_file: str = "vision.onnx", decoder_file: str = "decoder.onnx") -> list[list[int]]:
    """Greedy decoding with the bundle's two ONNX graphs only (one image at a time)."""
    special = toks.special_ids(tok)
    vision, dec = _session(bundle / vision_file), _session(bundle / decoder_file)
    names = [i.name for i in dec.get_inputs()]
    n = sum(1 for x in names if x.startswith("past_")) // 2
    out = []
    for img in pixels:
        v = vision.run(None, {"pixel_values": img[None]})
        cross = dict(zip(kv_names("cross", n), v[1:]))
        ids = prompt_ids(tok, special["[DEC]"])
        heads, d = v[1].shape[1], v[1].shape[3]
        past = {k: np.zeros((1, heads, 0, d), np.float32) for k in kv_names("past", n)}
        feed_ids = ids
        while len(ids) < max_length:
            p = next(iter(past.values())).shape[2]
            feed = {"input_ids": np.array([feed_ids], np.int64), "position_ids": np.arange(p, p + len(feed_ids), dtype=np.int64)[None],
                    "attention_mask": np.ones((1, p + len(feed_ids)), np.int64), **past, **cross}
            logits, *present = dec.run(None, feed)
            logits = logits[0].copy()
            if len(ids) < min_length:
                logits[special["[SEP]"]] = -np.inf
            nxt = int(np.argmax(logits))
            ids.append(nxt)
            if nxt == special["[SEP]"]:
                break
            past = dict(zip(kv_names("past", n), present))
            feed_ids = [nxt]
        out.append(ids)
    return out


# --- filter -------------------------------------------------------------------------------------


def export_filter(model, tok, out: Path, images: list[bytes], fp16: bool = False) -> tuple[dict, dict, dict | None]:
    special = toks.special_ids(tok)
    px = pixel_values(images, image_size(model))
    vision = FilterVision(model).eval()
    itm = FilterItm(model, special["[ENC]"]).eval()
    _export(vision, (px[:2],), out / "vision.onnx", ["pixel_values"], ["image_embeds"],
            {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}})
    with torch.no_grad():
        emb = vision(px)
    got = _session(out / "vision.onnx").run(None, {"pixel_values": px.numpy()})[0]
    checks = {"vision": _check("vision image_embeds", got, emb)}

    texts = ["a red circle on a blue background", "logo", "a green star and a yellow square on a black background",
             "", "free hd wallpaper download cheap design art", "a picture of something"] * 2
    texts = texts[: px.shape[0]] if px.shape[0] <= len(texts) else texts + [texts[0]] * (px.shape[0] - len(texts))
    ids, mask = encode_texts(tok, texts, special["[CLS]"], FILTER_MAX_TOKENS)  # right-padded, varied lengths
    _export(itm, (emb[:2], ids[:2], mask[:2]), out / "itm.onnx", ["image_embeds", "input_ids", "attention_mask"],
            ["itm_logits", "itc_sim"],
            {"image_embeds": {0: "batch"}, "input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
             "itm_logits": {0: "batch"}, "itc_sim": {0: "batch"}})
    sess = _session(out / "itm.onnx")
    logits, sim = sess.run(None, {"image_embeds": emb.numpy(), "input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    # Against HF's own forward pass (use_itm_head True / False), one pair at a time.
    enc_ids = ids.clone()
    enc_ids[:, 0] = special["[ENC]"]
    with torch.no_grad():
        ref_logits, ref_sim = [], []
        for i in range(len(texts)):
            length = int(mask[i].sum())
            ref_logits.append(model(pixel_values=px[i : i + 1], input_ids=enc_ids[i : i + 1, :length], use_itm_head=True).itm_score[0])
            ref_sim.append(model(pixel_values=px[i : i + 1], input_ids=ids[i : i + 1, :length], use_itm_head=False).itm_score[0, 0])
    checks["itm"] = max(_check("itm logits vs HF", logits, torch.stack(ref_logits)), _check("itc sim vs HF", sim, torch.stack(ref_sim)))
    graphs = {
        "vision": {"file": "vision.onnx", "inputs": ["pixel_values"], "outputs": ["image_embeds"]},
        "itm": {"file": "itm.onnx", "inputs": ["image_embeds", "input_ids", "attention_mask"], "outputs": ["itm_logits", "itc_sim"]},
    }
    if not fp16:
        return graphs, checks, None

    graphs16 = {role: {**g, "file": fp16_file(g["file"])} for role, g in graphs.items()}
    for role, g in graphs.items():
        to_fp16(out / g["file"], out / graphs16[role]["file"])
    tol = FP16_RELATIVE_TOLERANCE
    emb16 = _session(out / graphs16["vision"]["file"]).run(None, {"pixel_values": px.numpy()})[0]
    checks16 = {"vision": _check_relative("fp16 vision image_embeds", emb16, emb, tol)}
    # The fp16 ITM graph on the fp16 vision graph's embeddings: the whole fp16 path, as a GPU worker runs it.
    logits16, sim16 = _session(out / graphs16["itm"]["file"]).run(
        None, {"image_embeds": emb16, "input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    ref_logits = torch.stack(ref_logits).numpy()
    checks16["itm"] = max(_check_relative("fp16 itm logits", logits16, ref_logits, tol),
                          _check_relative("fp16 itc sim", sim16, torch.stack(ref_sim), tol))
    prob = lambda l: 1.0 / (1.0 + np.exp(l[:, 0] - l[:, 1]))  # noqa: E731
    prob_diff = float(np.max(np.abs(prob(np.asarray(logits16, np.float64)) - prob(ref_logits.astype(np.float64)))))
    progress(f"[export] check fp16 ITM probability: max abs diff {prob_diff:.2e}")
    variant = {
        "graphs": graphs16,
        "checks": {"relative_tolerance": tol, "max_relative_diff": checks16, "itm_prob_max_abs_diff": prob_diff},
    }
    return graphs, checks, variant


# --- bundle -------------------------------------------------------------------------------------


def token(tok, t: str) -> dict:
    return {"token": t, "id": tok.token_to_id(t)}


def write_bundle_json(out: Path, manifest: dict) -> None:
    files = {}
    for f in sorted(out.rglob("*")):
        if f.is_file() and f.name != "bundle.json":
            files[f.relative_to(out).as_posix()] = sha256(f)
    manifest["files"] = files
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")


def export(args) -> Path:
    ckpt, out = Path(args.checkpoint), Path(args.out)
    if not (ckpt / "config.json").exists():
        raise FileNotFoundError(f"{ckpt}: no config.json (give a checkpoint folder written by `train` or a HF BLIP checkpoint)")
    if not (ckpt / "tokenizer.json").exists():
        raise FileNotFoundError(f"{ckpt}: no tokenizer.json")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "checkpoint").mkdir(parents=True)
    tok = toks.load(ckpt / "tokenizer.json")
    cls = BlipForConditionalGeneration if args.kind == "captioner" else BlipForImageTextRetrieval
    model = cls.from_pretrained(str(ckpt)).eval()
    images = verify_images(args.verify_images)
    try:
        fp16 = "fp16" in args.precision
        if args.kind == "captioner":
            graphs, checks, fp16_variant = export_captioner(model, tok, tmp, images, fp16)
        else:
            graphs, checks, fp16_variant = export_filter(model, tok, tmp, images, fp16)
    except ExportCheckFailed as e:
        print(f"error: export check failed: {e}", file=sys.stderr)
        sys.exit(1)
    for f in ["config.json", "model.safetensors"]:
        shutil.copy2(ckpt / f, tmp / "checkpoint" / f)
    shutil.copy2(ckpt / "tokenizer.json", tmp / "tokenizer.json")
    shutil.copy2(ckpt / "tokenizer.json", tmp / "checkpoint" / "tokenizer.json")
    train_record = json.loads((ckpt / "train.json").read_text()) if (ckpt / "train.json").exists() else {}
    tcfg, vcfg = model.config.text_config, model.config.vision_config
    special = {"pad": token(tok, "[PAD]"), "sep": token(tok, "[SEP]"), "unk": token(tok, "[UNK]"), "cls": token(tok, "[CLS]")}
    special["dec" if args.kind == "captioner" else "enc"] = token(tok, "[DEC]" if args.kind == "captioner" else "[ENC]")
    manifest = {
        "format_version": 1,
        "kind": args.kind,
        "name": args.name or out.name,
        "preprocessing": {"image_size": image_size(model), "resample": "bicubic", "rescale_factor": 1.0 / 255.0, "mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
        "tokenizer": {"file": "tokenizer.json", "max_length": GENERATION["max_length"] if args.kind == "captioner" else FILTER_MAX_TOKENS, "special_tokens": special},
        "architecture": {
            "vision_hidden_size": vcfg.hidden_size, "patch_size": vcfg.patch_size if isinstance(vcfg.patch_size, int) else vcfg.patch_size[0],
            "text_hidden_size": tcfg.hidden_size, "text_layers": tcfg.num_hidden_layers, "text_heads": tcfg.num_attention_heads, "vocab_size": tcfg.vocab_size,
        },
        "graphs": graphs,
        "precision": "fp32",
        "provenance": {
            "parent": args.parent,
            "training_data": train_record.get("data", []) + train_record.get("rounds", []),
            "command": train_record.get("command"),
            "metrics": {},
            "export_checks": {"opset": OPSET, "tolerance": TOLERANCE, "max_abs_diff": checks},
            "train": train_record,
        },
    }
    if fp16_variant is not None:
        manifest["variants"] = {"fp16": fp16_variant}
    if args.kind == "captioner":
        manifest["prompt"] = PROMPT
        manifest["generation"] = GENERATION
    write_bundle_json(tmp, manifest)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    progress(f"[export] wrote bundle {out}")
    if args.eval_data:
        from .evaluate import evaluate_bundle, record_metrics

        metrics = evaluate_bundle(out, args.eval_data, None)
        record_metrics(out, metrics)
    return out
