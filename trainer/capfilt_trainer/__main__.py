"""``python -m capfilt_trainer {train,export,eval,stage,diagnose,golden}``."""
from __future__ import annotations

import argparse
import sys


def span(text: str) -> tuple[float, float]:
    """``START:END`` with 0 <= START <= END <= 1."""
    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected START:END, two fractions such as 0.3:0.8") from None
    if not 0.0 <= start <= end <= 1.0:
        raise argparse.ArgumentTypeError(f"'{text}': need 0 <= START <= END <= 1")
    return start, end


def precisions(text: str) -> list[str]:
    """Any of ``fp32``, ``fp16``, ``int8``, comma-separated; fp32 graphs are always written."""
    from .export import PRECISIONS

    got = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in got if p not in PRECISIONS]
    if bad or not got:
        raise argparse.ArgumentTypeError(f"'{text}': use {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, comma-separated")
    return sorted(set(got) | {"fp32"}, key=PRECISIONS.index)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m capfilt_trainer", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a captioner or filter; writes a HF checkpoint folder")
    t.add_argument("--kind", choices=["captioner", "filter"], required=True)
    t.add_argument("--data", action="append", help="input Parquet file or prefix (local or s3://); repeatable")
    t.add_argument("--round", action="append", help="a finished capfilt round's output URL: its cleaned pairs are added; repeatable")
    t.add_argument("--out", required=True, help="checkpoint folder to write")
    t.add_argument("--size", default="tiny", help="size preset: tiny, small or base (ignored with --init-from)")
    t.add_argument("--patch-size", type=int, help="override the size preset's patch size (must divide its image size)")
    t.add_argument("--text-layers", type=int,
                   help="override the size preset's text transformer depth; with --init-shared, a deeper filter "
                        "repeats the captioner's layers in order (layer i starts from layer i mod depth)")
    t.add_argument("--init-from", help="start from this local HF checkpoint folder")
    t.add_argument("--init-shared", help="start from this trained captioner checkpoint (or bundle) folder: its vision tower, "
                   "for a filter its text transformer too, and its tokenizer (BLIP's shared pre-trained start)")
    t.add_argument("--tokenizer", help="tokenizer.json to use (default: built from the training captions)")
    t.add_argument("--vocab-size", type=int, default=1000, help="vocabulary size of a tokenizer built from the captions")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--text-augment", type=float, default=None,
                   help="share of training texts rewritten into web alt-text forms (default: 0.5 for filter, 0 for captioner)")

    t.add_argument("--swap-negatives", type=float, default=0.0,
                   help="filter: share of each batch's texts that also appear with one attribute word swapped, as extra ITM negatives")
    t.add_argument("--swap-shape-share", type=float, default=None, metavar="P",
                   help="filter: a swapped-attribute negative swaps a shape word with probability P (default: any attribute word, uniformly)")
    t.add_argument("--bf16", action="store_true",
                   help="compute in bfloat16 (autocast; weights, optimiser and checkpoint stay fp32): about 1.6x faster steps on "
                        "CPUs with AVX-512 BF16 or AMX and on CUDA GPUs, slower elsewhere")
    t.add_argument("--contentless-share", type=float, default=0.0, metavar="P",
                   help="filter: a swapped-attribute negative is replaced, with probability P, by a text that states "
                        "nothing (the caption without its colour and shape words, or made-up words)")
    t.add_argument("--swap-binding-share", type=float, default=0.0, metavar="P",
                   help="filter: a swapped-attribute negative takes the new word from the caption's other object with probability P "
                        "(an attribute-binding negative), when it has one")
    t.add_argument("--vision-lr-scale", type=float, default=1.0, metavar="F",
                   help="the vision tower learns at F times --lr (without --freeze-vision)")
    t.add_argument("--freeze-vision", action="store_true", help="train everything but the vision tower (e.g. one taken with --init-shared)")
    t.add_argument("--mask-curriculum", type=span, metavar="START:END",
                   help="train first on the images' shape masks, blending to the real images from START to END "
                        "(fractions of --steps, e.g. 0.3:0.8); see the trainer README")

    e = sub.add_parser("export", help="export a checkpoint folder as an ONNX bundle and verify it")
    e.add_argument("--checkpoint", required=True, help="HF checkpoint folder made by train (or a user's own)")
    e.add_argument("--kind", choices=["captioner", "filter"], required=True)
    e.add_argument("--out", required=True, help="bundle folder to write")
    e.add_argument("--name", help="bundle name (default: folder name)")
    e.add_argument("--eval", dest="eval_data", help="held-out Parquet to evaluate on; figures go into bundle.json")
    e.add_argument("--parent", help="parent bundle (URL or sha256) for provenance")
    e.add_argument("--verify-images", help="Parquet with images for the export check (default: synthetic shapes)")
    e.add_argument("--precision", type=precisions, default=["fp32"], metavar="LIST",
                   help="graph precisions to write, comma-separated: fp32 (always written), fp16 (for GPU workers), int8 (dynamic quantisation, for CPU workers)")

    v = sub.add_parser("eval", help="evaluate a bundle on a held-out split; prints a table, records it in bundle.json")
    v.add_argument("--bundle", required=True)
    v.add_argument("--data", required=True, help="held-out Parquet with gt_caption / gt_match")
    v.add_argument("--limit", type=int, help="evaluate at most this many rows")
    v.add_argument("--no-record", action="store_true", help="print only; leave bundle.json unchanged")
    v.add_argument("--json", action="store_true", help="also print the figures as one JSON line on stdout")

    s = sub.add_parser("stage", help="run one trainer-stage job of a bootstrap run (its spec names every input and output by URL)")
    s.add_argument("--spec", required=True, help="URL of the job's spec JSON (written by the coordinator)")
    s.add_argument("--work", help="local work folder (default: a temporary one)")

    d = sub.add_parser("diagnose", help="experiments on why a model does not see shapes (linear probe, from-scratch classifier, error breakdown)")
    d.add_argument("what", choices=["probe", "classify", "errors"])
    d.add_argument("--train", help="probe, classify: Parquet with gt_caption to fit on")
    d.add_argument("--eval", required=True, help="held-out Parquet with gt_caption")
    d.add_argument("--limit", type=int, help="training rows at most")
    d.add_argument("--eval-limit", type=int, default=1000, help="evaluation rows at most")
    d.add_argument("--threshold", type=float, default=0.5, help="errors: the filter's keep threshold for the breakdown of its mistakes")
    d.add_argument("--checkpoint", help="probe, errors: a bundle folder or HF checkpoint folder")
    d.add_argument("--steps", type=int, default=1200, help="classify: training steps")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--mask-curriculum", type=span, metavar="START:END", help="classify: shape masks first, real images from END on")
    d.add_argument("--eval-every", type=int, default=400)
    d.add_argument("--image-size", type=int, default=96)
    d.add_argument("--patch", type=int, default=16)
    d.add_argument("--width", type=int, default=64)
    d.add_argument("--layers", type=int, default=2)
    d.add_argument("--binarise", action="store_true", help="classify shape masks instead of the images")
    d.add_argument("--gray", action="store_true", help="classify luminance images")
    d.add_argument("--cnn", action="store_true", help="a 4-layer CNN instead of the BLIP vision tower")
    d.add_argument("--json", action="store_true", help="print the figures as one JSON line on stdout")

    g = sub.add_parser("golden", help="write golden outputs (HF reference) for the Rust parity tests")
    g.add_argument("--captioner", required=True)
    g.add_argument("--filter", required=True)
    g.add_argument("--data", required=True, help="Parquet to take benchmark images from")
    g.add_argument("--out", required=True)
    g.add_argument("--count", type=int, default=8)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "train":
            from .train import train

            train(args)
        elif args.command == "export":
            from .export import export

            export(args)
        elif args.command == "eval":
            from .evaluate import evaluate_cli

            evaluate_cli(args)
        elif args.command == "stage":
            from .stage import stage

            stage(args)
        elif args.command == "diagnose":
            if args.what in ("probe", "errors") and not args.checkpoint:
                raise ValueError(f"diagnose {args.what} needs --checkpoint (a bundle or HF checkpoint folder)")
            if args.what in ("probe", "classify") and not args.train:
                raise ValueError(f"diagnose {args.what} needs --train (Parquet with gt_caption to fit on)")
            from .diagnose import diagnose

            diagnose(args)
        elif args.command == "golden":
            from .golden import golden

            golden(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
