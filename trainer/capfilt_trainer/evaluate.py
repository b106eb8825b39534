"""Held-out evaluation of bundles: captioner exact match and per-attribute accuracy (colour,
shape, background) of greedy captions against ``gt_caption``; filter ROC-AUC and precision /
recall at 0.5 of the ITM "match" probability against ``gt_match``."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

from . import tokenizer as toks
from .data import progress, read_examples
from .metrics import best_recall_at_precision, roc_auc
from .preprocess import decode_caption, encode_texts, pixel_values, prompt_ids

CAPTION_RE = re.compile(r"^an? (\w+) (\w+)(?: and an? (\w+) (\w+))? on an? (\w+) background$")
BATCH = 64
# The precisions whose thresholds a filter bundle's figures record.
PRECISION_TARGETS = (0.95, 0.97, 0.98, 0.99)


def parse(caption: str):
    """(background, [(colour, shape), ...]) of a canonical caption, or None."""
    m = CAPTION_RE.match(caption.strip())
    if not m:
        return None
    shapes = [(m.group(1), m.group(2))] + ([(m.group(3), m.group(4))] if m.group(3) else [])
    return m.group(5), shapes


def caption_metrics(predicted: list[str], truth: list[str]) -> dict[str, float]:
    exact = colour = shape = bg = total_shapes = 0
    for p, t in zip(predicted, truth):
        exact += p == t
        gt, pr = parse(t), parse(p)
        if gt is None:
            continue
        total_shapes += len(gt[1])
        if pr is None:
            continue
        bg += pr[0] == gt[0]
        for i, (c, s) in enumerate(gt[1]):
            if i < len(pr[1]):
                colour += pr[1][i][0] == c
                shape += pr[1][i][1] == s
    n = max(len(truth), 1)
    return {"exact_match": exact / n, "colour_acc": colour / max(total_shapes, 1), "shape_acc": shape / max(total_shapes, 1), "background_acc": bg / n}


def filter_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    kept = probs >= threshold
    tp = int((kept & labels).sum())
    precision = tp / max(int(kept.sum()), 1)
    recall = tp / max(int(labels.sum()), 1)
    return {"auc": roc_auc(probs, labels), f"precision_at_{threshold}": precision, f"recall_at_{threshold}": recall,
            f"accuracy_at_{threshold}": float((kept == labels).mean())}


def noise_breakdown(probs: np.ndarray, labels: np.ndarray, noise: list[str | None], threshold: float = 0.5) -> dict[str, float]:
    """Per noise kind of the non-matching texts: ROC-AUC of the matching texts against that kind
    alone (``auc_vs_{kind}``) and the share of that kind kept at ``threshold``
    (``kept_{kind}``). Which kinds of wrong text a filter cannot see."""
    out: dict[str, float] = {}
    kinds = np.array([n or "" for n in noise])
    for kind in sorted(set(kinds[~labels]) - {""}):
        of_kind = (kinds == kind) & ~labels
        sel = labels | of_kind
        if labels.any():
            out[f"auc_vs_{kind}"] = roc_auc(probs[sel], labels[sel])
        out[f"kept_{kind}"] = float((probs[of_kind] >= threshold).mean())
    return out


def generate_captions(model, tok, images: list[bytes], size: int, max_length: int = 30, min_length: int = 10) -> list[str]:
    special = toks.special_ids(tok)
    pid = prompt_ids(tok, special["[DEC]"])
    out: list[str] = []
    for i in range(0, len(images), BATCH):
        px = pixel_values(images[i : i + BATCH], size)
        ids = torch.tensor([pid + [special["[SEP]"]]] * px.shape[0])
        with torch.no_grad():
            gen = model.generate(px, input_ids=ids, max_length=max_length, min_length=min_length, do_sample=False, num_beams=1)
        out += [decode_caption(tok, g.tolist()) for g in gen]
    return out


def itm_probs(model, tok, images: list[bytes], texts: list[str], size: int, max_tokens: int = 35) -> np.ndarray:
    special = toks.special_ids(tok)
    out = []
    for i in range(0, len(images), BATCH):
        px = pixel_values(images[i : i + BATCH], size)
        ids, mask = encode_texts(tok, texts[i : i + BATCH], special["[ENC]"], max_tokens)
        with torch.no_grad():
            logits = model(pixel_values=px, input_ids=ids, attention_mask=mask, use_itm_head=True).itm_score
        out.append(torch.softmax(logits, -1)[:, 1].numpy())
    return np.concatenate(out)


def evaluate_bundle(bundle: Path, data: str, limit: int | None) -> dict[str, float]:
    manifest = json.loads((bundle / "bundle.json").read_text())
    kind = manifest["kind"]
    tok = toks.load(bundle / manifest["tokenizer"]["file"])
    size = manifest["preprocessing"]["image_size"]
    examples = read_examples(data, limit=limit)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if kind == "captioner":
        model = BlipForConditionalGeneration.from_pretrained(str(bundle / "checkpoint")).eval()
        truth = [e.gt_caption for e in examples]
        if any(t is None for t in truth):
            raise ValueError(f"{data}: captioner evaluation needs a gt_caption column")
        gen = manifest.get("generation", {})
        preds = generate_captions(model, tok, [e.image for e in examples], size, gen.get("max_length", 30), gen.get("min_length", 10))
        metrics = caption_metrics(preds, truth)
    else:
        model = BlipForImageTextRetrieval.from_pretrained(str(bundle / "checkpoint")).eval()
        labels = np.array([bool(e.gt_match) for e in examples])
        if any(e.gt_match is None for e in examples):
            raise ValueError(f"{data}: filter evaluation needs a gt_match column")
        probs = itm_probs(model, tok, [e.image for e in examples], [e.text for e in examples], size, manifest["tokenizer"]["max_length"])
        metrics = filter_metrics(probs, labels)
        metrics.update(noise_breakdown(probs, labels, [e.noise for e in examples]))
        # Operating points: the lowest threshold that keeps the cleaned texts this precise here
        # (`capfilt run --threshold-at-precision` takes a round's threshold from them).
        for target in PRECISION_TARGETS:
            best = best_recall_at_precision(probs, labels, target)
            if best["recall"] > 0:
                metrics[f"threshold_at_precision_{target}"] = best["threshold"]
                metrics[f"recall_at_precision_{target}"] = best["recall"]
    metrics["eval_rows"] = float(len(examples))
    print_table(f"{kind} {manifest['name']} on {data}", metrics)
    return metrics


def print_table(title: str, metrics: dict[str, float]) -> None:
    print(title)
    for k, v in metrics.items():
        print(f"  {k:<18} {v:>8.4f}" if k != "eval_rows" else f"  {k:<18} {int(v):>8d}")


def record_metrics(bundle: Path, metrics: dict[str, float]) -> None:
    path = bundle / "bundle.json"
    manifest = json.loads(path.read_text())
    manifest.setdefault("provenance", {}).setdefault("metrics", {}).update(metrics)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    progress(f"[eval] recorded metrics in {path}")


def evaluate_cli(args) -> None:
    bundle = Path(args.bundle)
    if not (bundle / "bundle.json").exists():
        raise FileNotFoundError(f"{bundle}: no bundle.json")
    metrics = evaluate_bundle(bundle, args.data, args.limit)
    if not args.no_record:
        record_metrics(bundle, metrics)
    if getattr(args, "json", False):
        print(json.dumps(metrics, sort_keys=True))
