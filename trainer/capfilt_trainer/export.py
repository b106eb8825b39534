"""Export a captioner or filter checkpoint as a capfilt bundle, and verify it: ONNX Runtime
against PyTorch on every graph (max abs diff <= 1e-4, past length 0 and left-padded batches
included) and, for a captioner, identical greedy captions from an ONNX-only loop and HF's
``generate``. A failed check removes nothing but fails the export (exit code 1).

``--precision fp16`` adds a second set of graphs for GPU workers (``variants.fp16`` in
bundle.json): the fp32 graphs converted by ONNX Runtime's float16 converter with fp32 inputs and
outputs kept (so the worker feeds and reads them exactly as the fp32 ones). ``--precision int8``
adds one for CPU workers (``variants.int8``): ONNX Runtime's dynamic quantisation of every
MatMul with a constant weight (int8 weights in a 7-bit range, per output channel; activations
quantised per tensor at run time; attention's activation-by-activation MatMuls and everything
else stay fp32), which ONNX Runtime runs with VNNI dot products where the CPU has them. Each variant is checked
against the same PyTorch fp32 references with the relative tolerance recorded next to it; the
captioner's check also records how many greedy captions of the variant equal HF ``generate``'s,
the filter's the largest ITM probability difference."""
from __future__ import annotations

import hashlib
import json
import logging
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
# Variant graphs against PyTorch fp32: max abs diff / max |reference| of each output.
RELATIVE_TOLERANCE = {"fp16": 2e-2, "int8": 0.1}
PRECISIONS = ("fp32", "fp16", "int8")
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
    """``name`` is "<precision> <graph> <output>"; the variant's output against PyTorch fp32."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    precision = name.split()[0]
    if not np.all(np.isfinite(got)):
        raise ExportCheckFailed(f"{name}: the {precision} graph gives non-finite values")
    rel = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-6))
    progress(f"[export] check {name}: max abs diff / max |ref| {rel:.2e}")
    if not rel <= tolerance:
        raise ExportCheckFailed(f"{name}: the {precision} graph differs from PyTorch fp32 by {rel:.3e} of the output's largest absolute value > {tolerance}")
    return rel


def to_fp16(src: Path, dst: Path) -> None:
    """``src`` converted to float16 weights and arithmetic, inputs and outputs kept float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def to_int8(src: Path, dst: Path) -> None:
    """``src`` with every MatMul by a constant weight dynamically quantised: int8 weights (7-bit
    range) with a scale per output channel, activations quantised per tensor at run time (uint8),
    so inputs and outputs stay float32. MatMuls of two activations (attention scores and their
    weighted sum) stay fp32, as do embeddings, LayerNorm and softmax."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    untied = dst.with_name(dst.name + ".untied.onnx")
    onnx.save(untie_weights(onnx.load(str(src))), str(untied))
    # The quantiser logs advice to run its shape-inference pre-processing first, which matters
    # for static quantisation of convolutions, not for these MatMuls.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # 7-bit weights (reduce_range): on x86 CPUs without VNNI, ONNX Runtime multiplies uint8
        # activations by int8 weights with VPMADDUBSW, whose 16-bit pair sums saturate with 8-bit
        # weights; a bundle runs on whatever CPU a worker has. On the seed bundles this costs
        # nothing measurable against 8-bit weights (README "int8 graphs for CPU workers").
        quantize_dynamic(str(untied), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=["MatMul"], extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
        untied.unlink(missing_ok=True)


def untie_weights(model):
    """``model`` with weights passed on by Identity nodes read directly, and each initializer that
    nodes of different kinds read given one copy per kind after the first. The captioner's LM
    head (a Gemm) reads the word-embedding matrix its Gather reads; ONNX Runtime's quantiser rewrites a weight in place for its MatMul, which would
    hand the Gather a transposed int8 matrix. Readers of one kind keep sharing (the quantiser
    quantises a weight that several MatMuls read once)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    # The exporter hands a weight that two passes read (the filter's text encoder, run for ITM
    # and for ITC) to the second through an Identity node; the quantiser sees that MatMul's
    # weight as an activation and keeps it fp32. Readers take the initializer itself instead.
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity" and n.input[0] in inits}
    graph_outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in alias:
                node.input[k] = alias[name]
    kept = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias and n.output[0] not in graph_outputs)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    first_kind: dict[str, str] = {}
    copies: dict[tuple[str, str], str] = {}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name not in inits:
                continue
            kind = first_kind.setdefault(name, node.op_type)
            if kind == node.op_type:
                continue
            if (name, node.op_type) not in copies:
                copy = numpy_helper.from_array(numpy_helper.to_array(inits[name]), f"{name}.{node.op_type}")
                model.graph.initializer.append(copy)
                copies[(name, node.op_type)] = copy.name
            node.input[k] = copies[(name, node.op_type)]
    return model


CONVERTERS = {"fp16": to_fp16, "int8": to_int8}


def variant_file(file: str, precision: str) -> str:
    return file.removesuffix(".onnx") + f".{precision}.onnx"


def variant_graphs(out: Path, graphs: dict, precision: str) -> dict:
    """Writes ``graphs`` at ``precision`` next to the fp32 ones; the variant's graph table."""
    converted = {role: {**g, "file": variant_file(g["file"], precision)} for role, g in graphs.items()}
    for role, g in graphs.items():
        CONVERTERS[precision](out / g["file"], out / converted[role]["file"])
    return converted


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


def export_captioner(model, tok, out: Path, images: list[bytes], extra: tuple[str, ...] = ()) -> tuple[dict, dict, dict]:
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
    decoder_cases = []  # (label, feed, reference outputs), for the variants' checks

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
    return graphs, checks, {p: captioner_variant(out, tok, graphs, p, px, v_out, v_ref, d_out, decoder_cases, hf_caps) for p in extra}


def captioner_variant(out: Path, tok, graphs: dict, precision: str, px, v_out, v_ref, d_out, decoder_cases, hf_caps) -> dict:
    """The captioner's graphs at ``precision``, checked against the fp32 export's PyTorch references."""
    converted = variant_graphs(out, graphs, precision)
    tol = RELATIVE_TOLERANCE[precision]
    got = _session(out / converted["vision"]["file"]).run(None, {"pixel_values": px.numpy()})
    checks = {"vision": max(_check_relative(f"{precision} vision {name}", o, r, tol) for name, o, r in zip(v_out, got, v_ref))}
    dec = _session(out / converted["decoder"]["file"])

    def real_positions(name, x, feed):
        # Cache entries of masked (left-padding) positions are never attended to; in a variant
        # they hold whatever the masked rows computed, so only real positions are compared.
        if not name.startswith("present"):
            return np.asarray(x)
        mask = feed["attention_mask"].astype(bool)
        return np.concatenate([np.asarray(x)[b][:, mask[b]] for b in range(mask.shape[0])], axis=1)

    checks["decoder"] = max(
        _check_relative(f"{precision} decoder {label} {name}", real_positions(name, g, feed), real_positions(name, r, feed), tol)
        for label, feed, ref in decoder_cases
        for name, g, r in zip(d_out, dec.run(None, feed), ref)
    )
    caps = greedy_onnx(out, tok, px.numpy(), GENERATION["max_length"], GENERATION["min_length"],
                       vision_file=converted["vision"]["file"], decoder_file=converted["decoder"]["file"])
    same = sum(a == b for a, b in zip(caps, hf_caps))
    progress(f"[export] check {precision} greedy captions: {same} of {len(hf_caps)} identical to HF generate (fp32)")
    return {
        "graphs": converted,
        "checks": {"relative_tolerance": tol, "max_relative_diff": checks,
                   "greedy_captions_equal": same, "greedy_captions_checked": len(hf_caps)},
    }


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


def export_filter(model, tok, out: Path, images: list[bytes], extra: tuple[str, ...] = ()) -> tuple[dict, dict, dict]:
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
    ref_logits, ref_sim = torch.stack(ref_logits).numpy(), torch.stack(ref_sim).numpy()
    return graphs, checks, {p: filter_variant(out, graphs, p, px, emb, ids, mask, ref_logits, ref_sim) for p in extra}


def filter_variant(out: Path, graphs: dict, precision: str, px, emb, ids, mask, ref_logits, ref_sim) -> dict:
    """The filter's graphs at ``precision``, checked against the fp32 export's PyTorch references."""
    converted = variant_graphs(out, graphs, precision)
    tol = RELATIVE_TOLERANCE[precision]
    emb_v = _session(out / converted["vision"]["file"]).run(None, {"pixel_values": px.numpy()})[0]
    checks = {"vision": _check_relative(f"{precision} vision image_embeds", emb_v, emb, tol)}
    # The variant's ITM graph on the variant's vision embeddings: the whole path, as a worker runs it.
    logits, sim = _session(out / converted["itm"]["file"]).run(
        None, {"image_embeds": emb_v, "input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    checks["itm"] = max(_check_relative(f"{precision} itm logits", logits, ref_logits, tol),
                        _check_relative(f"{precision} itc sim", sim, ref_sim, tol))
    prob = lambda l: 1.0 / (1.0 + np.exp(l[:, 0] - l[:, 1]))  # noqa: E731
    prob_diff = float(np.max(np.abs(prob(np.asarray(logits, np.float64)) - prob(ref_logits.astype(np.float64)))))
    progress(f"[export] check {precision} ITM probability: max abs diff {prob_diff:.2e}")
    return {
        "graphs": converted,
        "checks": {"relative_tolerance": tol, "max_relative_diff": checks, "itm_prob_max_abs_diff": prob_diff},
    }


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
        extra = tuple(p for p in args.precision if p != "fp32")
        if args.kind == "captioner":
            graphs, checks, variants = export_captioner(model, tok, tmp, images, extra)
        else:
            graphs, checks, variants = export_filter(model, tok, tmp, images, extra)
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
    if variants:
        manifest["variants"] = variants
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
