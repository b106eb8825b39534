"""Training loops for the captioner (LM loss) and the filter (ITC + ITM with hard negatives).

Deterministic for a given seed and data on the same machine (single-process data pipeline,
seeded torch and numpy generators). Output: a HF checkpoint folder (config.json,
model.safetensors) with tokenizer.json and train.json (data, steps, losses, command)."""
from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import PROMPT
from . import tokenizer as toks
from .augment import augment, contentless, swapped_attribute, vocabulary_extra
from .data import Example, progress, read_examples, read_round_cleaned
from .models import build, captioner_loss, filter_losses, image_size
from .preprocess import encode_texts, mask_blend, normalise, resized_uint8_all

CAPTION_MAX_TOKENS = 40
FILTER_MAX_TOKENS = 35


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_count() -> int:
    """The cores this process may run on (its affinity: a container's or `taskset`'s cpuset), not
    the machine's: more threads than cores make PyTorch's CPU kernels spin against each other."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def load_training_data(data: list[str], rounds: list[str]) -> list[Example]:
    examples: list[Example] = []
    for url in data:
        got = read_examples(url)
        progress(f"[train] {len(got)} pairs from {url}")
        examples += got
    for url in rounds:
        got = read_round_cleaned(url)
        progress(f"[train] {len(got)} kept pairs from round {url}")
        examples += got
    if not examples:
        raise ValueError("no training pairs: give --data and/or --round with at least one row")
    return examples


def checkpoint_dir(path: str | Path) -> Path:
    """A HF checkpoint folder, or a bundle folder's ``checkpoint/``."""
    path = Path(path)
    return path / "checkpoint" if (path / "bundle.json").exists() else path


def shared_tokenizer(checkpoint: str) -> Path | None:
    candidate = checkpoint_dir(checkpoint) / "tokenizer.json"
    return candidate if candidate.exists() else None


def optimiser_step(model, opt, sched, loss) -> float:
    """One update: backward, gradient norm clipped to 1, optimiser and schedule step; the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()


LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


def repeated_layers(weights: dict, own: dict) -> dict:
    """``weights`` of a text transformer laid out for ``own``'s depth when ``own`` is deeper
    (``--text-layers``): layer i starts from layer i mod the source's depth, i.e. the source's
    stack repeated in order. Same depth: ``weights`` unchanged."""
    depth = lambda keys: 1 + max((int(m.group(1)) for k in keys if (m := LAYER.match(k))), default=-1)
    have, want = depth(weights), depth(own)
    if have == 0 or want <= have:
        return weights
    out = {k: v for k, v in weights.items() if not LAYER.match(k)}
    for k, v in weights.items():
        if m := LAYER.match(k):
            i = int(m.group(1))
            for j in range(i, want, have):
                out[LAYER.sub(f"encoder.layer.{j}.", k, count=1)] = v.clone()
    return out


def init_shared(model, checkpoint: str) -> None:
    """Starts ``model`` from a trained captioner, as BLIP's captioner and filter both start from
    one pre-trained model: the vision tower (``vision_model.*``) is copied, and for a filter the
    text transformer too (the captioner's ``text_decoder.bert.*`` has the filter text encoder's
    layout; only the attention mask differs). Shapes must match: same size preset and tokenizer."""
    from safetensors.torch import load_file

    path = checkpoint_dir(checkpoint)
    weights = path / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"--init-shared {checkpoint}: no model.safetensors (expected a HF checkpoint folder)")
    source = load_file(str(weights))
    parts = [("vision_model.", "vision_model.", model.vision_model)]
    if hasattr(model, "text_encoder"):
        parts.append(("text_decoder.bert.", "text_encoder.", model.text_encoder))
    for prefix, target, module in parts:
        weights_of = {k.removeprefix(prefix): v for k, v in source.items() if k.startswith(prefix)}
        own = module.state_dict()
        if target == "text_encoder.":
            weights_of = repeated_layers(weights_of, own)
        if not weights_of:
            raise ValueError(f"--init-shared {checkpoint}: no {prefix}* weights (expected a captioner checkpoint)")
        mismatched = [k for k, v in weights_of.items() if k not in own or own[k].shape != v.shape]
        if mismatched or len(weights_of) != len(own):
            raise ValueError(f"--init-shared {checkpoint}: its {prefix}* tensors do not fit this model's {target}* "
                             f"({len(mismatched)} differ); use the same --size and its tokenizer")
        module.load_state_dict(weights_of)
        progress(f"[train] {target}* initialised from {path} ({prefix}*)")


def curriculum_alpha(step: int, steps: int, span: tuple[float, float] | None) -> float:
    """How much of the real image a training step sees under the mask curriculum ``span``
    (start, end as fractions of the steps): 0 (shape masks only) until start, rising linearly to 1
    (real images only) at end. No curriculum: always 1."""
    if span is None:
        return 1.0
    start, end = span
    t = step / max(steps, 1)
    if t >= end:
        return 1.0
    return max(0.0, (t - start) / max(end - start, 1e-9))


# The most memory a frozen tower's image embeddings may take to be kept for the whole run (the
# small preset's 40,000 training images: 380 MB; the base shape's would be 70 GB).
EMBED_CACHE_BYTES = 4 << 30


def frozen_image_embeds(model, images: np.ndarray, dev: torch.device, chunk: int = 256) -> torch.Tensor | None:
    """The frozen vision tower's output for every training image, computed once (a frozen tower
    gives the same embeddings at every step, and the filter has no image augmentation): the
    filter's steps then run only the text side. None when they would not fit in
    ``EMBED_CACHE_BYTES`` (each step then runs the tower on its batch)."""
    cfg = model.config.vision_config
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    need = len(images) * tokens * cfg.hidden_size * 4
    if need > EMBED_CACHE_BYTES:
        progress(f"[train] frozen tower's image embeddings would take {need >> 20} MiB: computing them at every step")
        return None
    t0 = time.time()
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), chunk):
            pixels = normalise(images[start : start + chunk]).to(dev)
            parts.append(model.vision_model(pixel_values=pixels).last_hidden_state.cpu())
    progress(f"[train] frozen tower: image embeddings of {len(images)} images ({need >> 20} MiB) in {time.time() - t0:.1f}s")
    return torch.cat(parts)


def train(args) -> Path:
    torch.manual_seed(args.seed)
    # Same seed and data, same weights: without this, multi-threaded CPU kernels make two runs
    # of the filter differ after a few steps (CUDA needs the cuBLAS workspace setting too).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(cpu_count())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    examples = load_training_data(args.data or [], args.round or [])

    if args.init_from and (Path(args.init_from) / "tokenizer.json").exists():
        tok = toks.load(Path(args.init_from) / "tokenizer.json")
    elif args.tokenizer:
        tok = toks.load(args.tokenizer)
    elif args.init_shared and (shared_tok := shared_tokenizer(args.init_shared)) is not None:
        tok = toks.load(shared_tok)
    else:
        # The alt-text words too, so that a filter can share a captioner's tokenizer.
        tok = toks.build([e.text for e in examples] + vocabulary_extra(), vocab_size=args.vocab_size)
    special = toks.special_ids(tok)
    model = build(args.kind, args.size, args.init_from, tok.get_vocab_size(), special, args.seed, args.patch_size, args.text_layers)
    if args.init_shared:
        init_shared(model, args.init_shared)
    dev = device()
    model.to(dev).train()
    size = image_size(model)

    t0 = time.time()
    images = resized_uint8_all([e.image for e in examples], size, cpu_count())
    texts = [e.text for e in examples]
    # Equal texts share an id: ITC counts them as positives of each other.
    text_index = {t: i for i, t in enumerate(sorted(set(texts)))}
    text_ids_all = np.array([text_index[t] for t in texts])
    progress(f"[train] {args.kind}: {len(examples)} pairs, images {size}px preprocessed in {time.time() - t0:.1f}s, device {dev}")

    # Alt-text augmentation of filter texts (see augment.py); the captioner learns clean captions.
    text_augment = args.text_augment if args.text_augment is not None else (0.5 if args.kind == "filter" else 0.0)
    if args.freeze_vision:
        # Keep a shared tower's shape features: ITM's gradient alone wears them away.
        for param in model.vision_model.parameters():
            param.requires_grad_(False)
    embeds = frozen_image_embeds(model, images, dev) if args.kind == "filter" and args.freeze_vision and args.mask_curriculum is None else None
    tower = {id(p) for p in model.vision_model.parameters()}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in tower]}]
    if not args.freeze_vision:
        groups.append({"params": list(model.vision_model.parameters()), "lr": args.lr * args.vision_lr_scale})
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.05)
    # --steps 0 saves the freshly initialised model (random weights, e.g. the base shape for
    # performance work).
    if args.steps >= 20:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=args.steps, pct_start=0.1)
    else:  # too few steps for a warm-up: a constant rate
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    prompt_len = len(tok.encode(PROMPT).ids) - 1  # [DEC] + prompt tokens
    order = rng.permutation(len(examples))
    pos = 0
    losses: list[float] = []
    t0 = time.time()
    for step in range(1, args.steps + 1):
        if pos + args.batch_size > len(order):
            order, pos = rng.permutation(len(examples)), 0
        idx = order[pos : pos + args.batch_size]
        pos += args.batch_size
        pixels = None if embeds is not None else normalise(mask_blend(images[idx], curriculum_alpha(step, args.steps, args.mask_curriculum))).to(dev)
        batch_texts = [texts[i] for i in idx]
        # bf16 autocast: matmuls in bfloat16, weights and optimiser state in fp32 (--bf16).
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            if args.kind == "captioner":
                ids, mask = encode_texts(tok, batch_texts, special["[DEC]"], CAPTION_MAX_TOKENS, prompt=PROMPT)
                loss = captioner_loss(model, pixels, ids.to(dev), mask.to(dev), prompt_len)
            else:
                batch_texts = augment(batch_texts, text_augment, rng)
                ids, mask = encode_texts(tok, batch_texts, special["[CLS]"], FILTER_MAX_TOKENS)
                swapped = None
                if args.swap_negatives > 0:
                    picked = [(r, contentless(t, rng) if rng.random() < args.contentless_share
                               else swapped_attribute(t, rng, args.swap_shape_share, args.swap_binding_share))
                              for r, t in enumerate(batch_texts) if rng.random() < args.swap_negatives]
                    picked = [(r, t) for r, t in picked if t is not None]
                    if picked:
                        s_ids, s_mask = encode_texts(tok, [t for _, t in picked], special["[CLS]"], FILTER_MAX_TOKENS)
                        swapped = (torch.tensor([r for r, _ in picked]).to(dev), s_ids.to(dev), s_mask.to(dev))
                itc, itm = filter_losses(model, pixels, ids.to(dev), mask.to(dev), torch.from_numpy(text_ids_all[idx]).to(dev), special["[ENC]"],
                                         swapped=swapped, image_embeds=None if embeds is None else embeds[idx].to(dev))
                loss = itc + itm
        losses.append(optimiser_step(model, opt, sched, loss))
        if step % args.log_every == 0 or step == args.steps:
            recent = float(np.mean(losses[-args.log_every :]))
            rate = step / (time.time() - t0)
            progress(f"[train] {args.kind} step {step}/{args.steps} loss {recent:.4f} ({rate:.1f} steps/s)")

    model.eval()
    model.save_pretrained(str(out))
    tok.save(str(out / "tokenizer.json"))
    record = {
        "kind": args.kind,
        "size": args.size,
        "patch_size": args.patch_size,
        "text_layers": args.text_layers,
        "contentless_share": args.contentless_share,
        "init_from": args.init_from,
        "init_shared": args.init_shared,
        "data": args.data or [],
        "rounds": args.round or [],
        "pairs": len(examples),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "text_augment": text_augment,
        "swap_negatives": args.swap_negatives,
        "swap_shape_share": args.swap_shape_share,
        "swap_binding_share": args.swap_binding_share,
        "freeze_vision": args.freeze_vision,
        "vision_lr_scale": args.vision_lr_scale,
        "bf16": args.bf16,
        "mask_curriculum": list(args.mask_curriculum) if args.mask_curriculum else None,
        "final_loss": float(np.mean(losses[-args.log_every :])) if losses else None,
        "seconds": round(time.time() - t0, 1),
        "command": "python -m capfilt_trainer " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    progress(f"[train] wrote checkpoint {out}")
    return out
