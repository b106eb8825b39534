"""Why a captioner does not name shapes: the experiments behind the trainer README's "Why the seed
models do not see shapes".

``probe``
    A linear probe (multinomial logistic regression) on a bundle's or checkpoint's vision tower:
    can the first shape's colour and kind be read linearly from its CLS token, its mean patch
    token and all its patch tokens? If the kind cannot be read from the tower, no decoder on top
    of it can name it.
``classify``
    A BLIP vision tower (HF's ``BlipVisionModel``, the same class and initialisation as the
    captioner's) trained from scratch to classify the first shape's kind, with nothing else to
    learn: the upper bound of what the captioner's tower can learn from the same images in the
    same number of steps. ``--binarise`` replaces every image by its shape mask (white shapes on
    black), ``--gray`` by its luminance: the controls that tell what makes the task hard.
    ``--cnn`` trains a 4-layer CNN instead (the inductive-bias control). ``--mask-curriculum``
    trains on shape masks first and blends to the real images (evaluated on real images), as
    ``train --mask-curriculum`` does for the seed captioner.

``errors``
    Where a trained checkpoint (or a bundle's) goes wrong on the held-out split. A captioner:
    its greedy captions' figures, its shape errors by how large the generator may draw the shape
    in the 96 px model input (the largest radius it allows along the squashed axis: narrow bands
    of two-shape images and elongated images make small shapes) and the most frequent
    (true, said) shape pairs. A filter: ROC-AUC and the share kept at 0.5 per kind of wrong
    text, precision / recall at several thresholds, the best recall at 97, 98 and 99% precision,
    and its mistakes at ``--threshold`` by number of objects, alt-text form and binding.

Each prints one line per evaluation; ``--json`` prints the final figures as one JSON line.

    python -m capfilt_trainer diagnose probe --checkpoint CKPT --train BENCH/seed --eval BENCH/eval
    python -m capfilt_trainer diagnose classify --train BENCH/seed --eval BENCH/eval --steps 1200
    python -m capfilt_trainer diagnose errors --checkpoint CKPT --eval BENCH/eval --eval-limit 2000
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import ATTRIBUTE_WORDS, COLOURS, SHAPES
from .data import progress, read_examples
from .evaluate import parse
from .preprocess import mask_blend, normalise, resized_uint8, shape_masks
from .train import checkpoint_dir, curriculum_alpha, optimiser_step



def labelled(url: str, limit: int | None, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[N,3,size,size] uint8 images and the first shape's (colour, kind) indices from gt_caption."""
    examples = read_examples(url, limit=limit)
    images, colours, kinds = [], [], []
    for e in examples:
        parsed = parse(e.gt_caption or "")
        if parsed is None:
            continue
        colour, kind = parsed[1][0]
        images.append(resized_uint8(e.image, size))
        colours.append(COLOURS.index(colour))
        kinds.append(SHAPES.index(kind))
    if not images:
        raise ValueError(f"{url}: no rows with a canonical gt_caption")
    return np.stack(images), np.array(colours), np.array(kinds)


def logistic_probe(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray, classes: int) -> float:
    """Held-out accuracy of an L2-regularised multinomial logistic regression (LBFGS) on
    standardised features."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    x, xt = (train_x - mu) / sd, (test_x - mu) / sd
    y = torch.from_numpy(train_y)
    lin = nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=300)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + 1e-3 * (lin.weight**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(xt).argmax(1).numpy() == test_y).mean())


def load_checkpoint(path: str):
    """(checkpoint folder, model in eval mode) of a bundle or HF checkpoint folder: a filter
    (``BlipForImageTextRetrieval``) or a captioner, as its config says."""
    from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval

    ckpt = checkpoint_dir(path)
    config = json.loads((ckpt / "config.json").read_text())
    cls = BlipForImageTextRetrieval if "BlipForImageTextRetrieval" in config.get("architectures", []) else BlipForConditionalGeneration
    return ckpt, cls.from_pretrained(str(ckpt)).eval()


def probe(args) -> dict:
    ckpt, model = load_checkpoint(args.checkpoint)
    size = model.config.vision_config.image_size

    def features(images: np.ndarray) -> dict[str, torch.Tensor]:
        parts: dict[str, list[torch.Tensor]] = {"cls": [], "mean_patch": [], "all_patches": []}
        with torch.no_grad():
            for i in range(0, len(images), 128):
                h = model.vision_model(pixel_values=normalise(images[i : i + 128])).last_hidden_state
                parts["cls"].append(h[:, 0])
                parts["mean_patch"].append(h[:, 1:].mean(1))
                parts["all_patches"].append(h[:, 1:].flatten(1))
        return {k: torch.cat(v) for k, v in parts.items()}

    tr_img, tr_col, tr_kind = labelled(args.train, args.limit, size)
    te_img, te_col, te_kind = labelled(args.eval, args.eval_limit, size)
    ftr, fte = features(tr_img), features(te_img)
    out: dict = {"checkpoint": str(ckpt), "train_rows": len(tr_img), "eval_rows": len(te_img)}
    for name in ftr:
        out[f"{name}_colour_acc"] = logistic_probe(ftr[name], tr_col, fte[name], te_col, len(COLOURS))
        out[f"{name}_shape_acc"] = logistic_probe(ftr[name], tr_kind, fte[name], te_kind, len(SHAPES))
        print(f"{name:<12} colour {out[f'{name}_colour_acc']:.3f}  shape {out[f'{name}_shape_acc']:.3f}", flush=True)
    out["shape_chance"] = float(np.bincount(te_kind).max() / len(te_kind))
    return out


def grayscale(images: np.ndarray) -> np.ndarray:
    return np.repeat(images.mean(1, keepdims=True).astype(np.uint8), 3, 1)


class Cnn(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in [(3, 32), (32, 64), (64, 64), (64, 64)]:
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.body(x))


class VitClassifier(nn.Module):
    """HF's BlipVisionModel (as in the captioner) + a linear head on the mean patch token."""

    def __init__(self, size: int, patch: int, width: int, layers: int, classes: int):
        super().__init__()
        from transformers import BlipVisionConfig, BlipVisionModel

        config = BlipVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                                  num_attention_heads=max(2, width // 32), image_size=size, patch_size=patch, initializer_range=0.02)
        self.vision = BlipVisionModel(config)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.vision(pixel_values=x).last_hidden_state[:, 1:].mean(1))


def classify(args) -> dict:
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    tr_img, _, tr_kind = labelled(args.train, args.limit, args.image_size)
    te_img, _, te_kind = labelled(args.eval, args.eval_limit, args.image_size)
    variant = "raw" if args.mask_curriculum is None else "mask curriculum %g:%g" % tuple(args.mask_curriculum)
    if args.binarise:
        tr_img, te_img, variant = shape_masks(tr_img), shape_masks(te_img), "binarised"
    elif args.gray:
        tr_img, te_img, variant = grayscale(tr_img), grayscale(te_img), "gray"
    model: nn.Module = Cnn(len(SHAPES)) if args.cnn else VitClassifier(args.image_size, args.patch, args.width, args.layers, len(SHAPES))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    labels = torch.from_numpy(tr_kind)
    test_labels = torch.from_numpy(te_kind)

    def accuracy() -> float:
        model.eval()
        hits = 0
        with torch.no_grad():
            for i in range(0, len(te_img), 256):
                hits += int((model(normalise(te_img[i : i + 256])).argmax(1) == test_labels[i : i + 256]).sum())
        model.train()
        return hits / len(te_img)

    t0 = time.time()
    curve = []
    losses: list[float] = []
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, len(tr_img), args.batch_size)
        batch = mask_blend(tr_img[idx], curriculum_alpha(step, args.steps, args.mask_curriculum))
        loss = F.cross_entropy(model(normalise(batch)), labels[idx])
        losses.append(optimiser_step(model, opt, sched, loss))
        if step % args.eval_every == 0 or step == args.steps:
            acc = accuracy()
            curve.append({"step": step, "train_loss": float(np.mean(losses[-args.eval_every :])), "eval_shape_acc": acc})
            print(f"[{variant}] step {step}/{args.steps} train loss {curve[-1]['train_loss']:.3f} eval shape acc {acc:.3f} ({time.time() - t0:.0f}s)", flush=True)
    return {"model": "cnn" if args.cnn else f"blip-vit p{args.patch} w{args.width} L{args.layers} {args.image_size}px",
            "images": variant, "train_rows": len(tr_img), "eval_rows": len(te_img), "steps": args.steps,
            "final_eval_shape_acc": curve[-1]["eval_shape_acc"], "curve": curve}


def largest_radius(image: bytes, shapes: int, size: int = 96) -> float:
    """The largest radius the benchmark's generator (synth/src/scene.rs) allows a shape of this
    image, in model-input pixels along the axis the square resize shrinks most."""
    from PIL import Image
    import io

    w, h = Image.open(io.BytesIO(image)).size
    return 0.45 * min(w / shapes, h) * min(size / w, size / h)


def text_form(text: str, caption: str) -> str:
    """Which web alt-text form ``text`` (a matching text) takes of its canonical ``caption``:
    the caption itself, "image of ...", comma-separated, the stock-photo form (articles dropped
    from the list of things, kept before the background, "- stock illustration"), or the
    caption without articles."""
    if text == caption:
        return "caption"
    if text.startswith("image of "):
        return "image of"
    if text.endswith("- stock illustration"):
        return "stock"
    if ", " in text:
        return "commas"
    return "no articles"


def filter_breakdown(examples, probs: np.ndarray, threshold: float) -> dict:
    """The filter's mistakes at ``threshold`` by what the image and text hold: matching texts
    rejected by number of objects and alt-text form; wrong texts kept by noise kind, number of
    objects and whether the wrong word is one the image does hold elsewhere (a "binding" error:
    "a red star and a blue star" of a red circle and a blue star) or a new one."""
    counts: dict[str, list[int]] = {}
    for e, p in zip(examples, probs):
        gt = parse(e.gt_caption or "")
        if gt is None:
            continue
        objects = len(gt[1])
        if e.gt_match:
            key, wrong = f"matching, {objects} object(s), {text_form(e.text, e.gt_caption)}", p < threshold
        else:
            truth = set(e.gt_caption.split())
            named = {w.strip(",") for w in e.text.split()} & ATTRIBUTE_WORDS
            kind = ("binding" if named <= truth else "new word") if named else "no attribute word"
            key, wrong = f"{e.noise}, {objects} object(s), {kind}", p >= threshold
        entry = counts.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += int(wrong)
    return {k: {"texts": n, "wrong": w} for k, (n, w) in sorted(counts.items())}


def errors(args) -> dict:
    from collections import Counter

    from transformers import BlipForImageTextRetrieval

    from . import tokenizer as toks
    from .evaluate import caption_metrics, filter_metrics, generate_captions, itm_probs, noise_breakdown
    from .metrics import best_recall_at_precision

    ckpt, model = load_checkpoint(args.checkpoint)
    tok = toks.load(ckpt / "tokenizer.json")
    size = model.config.vision_config.image_size
    examples = read_examples(args.eval, limit=args.eval_limit)
    out: dict = {"checkpoint": str(ckpt), "eval_rows": len(examples)}
    if isinstance(model, BlipForImageTextRetrieval):
        labels = np.array([bool(e.gt_match) for e in examples])
        probs = itm_probs(model, tok, [e.image for e in examples], [e.text for e in examples], size)
        out.update(filter_metrics(probs, labels))
        out.update(noise_breakdown(probs, labels, [e.noise for e in examples]))
        for t in (0.3, 0.5, 0.7, 0.9):
            m = filter_metrics(probs, labels, t)
            out[f"precision_at_{t}"], out[f"recall_at_{t}"] = m[f"precision_at_{t}"], m[f"recall_at_{t}"]
            print(f"threshold {t}: precision {m[f'precision_at_{t}']:.3f} recall {m[f'recall_at_{t}']:.3f}", flush=True)
        for target in (0.97, 0.98, 0.99):
            best = best_recall_at_precision(probs, labels, target)
            out[f"best_recall_at_precision_{target}"] = best
            print(f"precision at least {target}: recall {best['recall']:.3f} from threshold {best['threshold']:.3f}", flush=True)
        print("  ".join(f"{k} {v:.3f}" for k, v in out.items() if k.startswith(("auc", "kept"))), flush=True)
        out["breakdown"] = filter_breakdown(examples, probs, args.threshold)
        print(f"at threshold {args.threshold}: matching texts rejected, wrong texts kept", flush=True)
        for k, v in out["breakdown"].items():
            if v["texts"] >= 10:
                print(f"  {k:<48} {v['texts']:>5} texts, {100 * v['wrong'] / v['texts']:5.1f}% "
                      f"{'rejected' if k.startswith('matching') else 'kept'}", flush=True)
        return out
    truth = [e.gt_caption or "" for e in examples]
    preds = generate_captions(model, tok, [e.image for e in examples], size)
    out.update(caption_metrics(preds, truth))
    buckets: dict[int, list[int]] = {}
    confusions: Counter = Counter()
    for e, p, t in zip(examples, preds, truth):
        gt, said = parse(t), parse(p)
        if gt is None:
            continue
        bucket = int(largest_radius(e.image, len(gt[1]), size) // 10 * 10)
        for i, (_, kind) in enumerate(gt[1]):
            got = said[1][i][1] if said is not None and i < len(said[1]) else None
            entry = buckets.setdefault(bucket, [0, 0])
            entry[0] += 1
            if got != kind:
                entry[1] += 1
                confusions[f"{kind}->{got}"] += 1
    out["shape_error_by_radius"] = {f"{b}-{b + 10}px": {"shapes": n, "error": wrong / n} for b, (n, wrong) in sorted(buckets.items())}
    out["top_confusions"] = dict(confusions.most_common(6))
    print(f"exact {out['exact_match']:.3f} shape {out['shape_acc']:.3f} colour {out['colour_acc']:.3f}", flush=True)
    for k, v in out["shape_error_by_radius"].items():
        print(f"  largest radius {k:>9}: {v['shapes']:>5} shapes, {100 * v['error']:.1f}% named wrong", flush=True)
    print("  most frequent: " + ", ".join(f"{k} {v}" for k, v in out["top_confusions"].items()), flush=True)
    return out


def diagnose(args) -> None:
    result = {"probe": probe, "classify": classify, "errors": errors}[args.what](args)
    progress(f"[diagnose] {args.what} done")
    if args.json:
        print(json.dumps(result))
