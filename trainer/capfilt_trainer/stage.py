"""The trainer stage of a bootstrap run, as the coordinator launches it: one command
(``python -m capfilt_trainer stage --spec URL``) whose spec names every input and output by
object-store URL (local paths, ``file://``, ``s3://`` and the other schemes pyarrow knows), so
the coordinator and the trainer share no filesystem: the same command runs as a child process
of the coordinator or as a Kubernetes Job.

Tasks:

``train``
    For each model (captioner, filter): train on the seed set plus the round's cleaned pairs,
    export an ONNX bundle (self-check against PyTorch, figures on the eval split) and upload it
    to ``model.out`` (``bundle.json`` last, so a bundle with a ``bundle.json`` is complete).
    Finished work is reused: a model whose bundle is already uploaded is skipped, and a finished
    training (its checkpoint uploaded under ``{round}/trainer/ckpt/{kind}/`` with ``train.json``
    last, made with the same settings) is exported without training again.
``eval``
    Figures of a captioner and a filter bundle on the eval split, written to ``out`` as
    ``[captioner_figures, filter_figures]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs

from .data import _fs, progress


def _watch_parent() -> None:
    """Exit when the coordinator that started us dies (it sets CAPFILT_TRAINER_WATCH_PARENT)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                print("[stage] the coordinator that started this stage is gone: exiting", file=sys.stderr, flush=True)
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def read_text(url: str) -> str | None:
    fs, path = _fs(url)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as fh:
        return fh.read().decode()


def write_text(url: str, text: str) -> None:
    fs, path = _fs(url)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(text.encode())


def download_dir(url: str, dest: Path) -> Path:
    """Copies the folder at ``url`` to ``dest``."""
    fs, path = _fs(url)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{url}: not found")
    dest.mkdir(parents=True, exist_ok=True)
    for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if f.type != pafs.FileType.File:
            continue
        rel = f.path[len(path.rstrip("/")) + 1 :]
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(f.path) as src, open(target, "wb") as out:
            out.write(src.read())
    return dest


def upload_dir(src: Path, url: str, last: str) -> None:
    """Copies folder ``src`` to ``url``, file ``last`` after every other file."""
    fs, path = _fs(url)
    path = path.rstrip("/")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(src).as_posix() == last)
    for f in files:
        rel = f.relative_to(src).as_posix()
        target = f"{path}/{rel}"
        fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with open(f, "rb") as fh, fs.open_output_stream(target) as out:
            out.write(fh.read())


def _filter_recipe(model: dict) -> list[str]:
    """The seed filter's recipe, kept when a round retrains it (scripts/make-seed-bundles.sh):
    its vision tower frozen (unless it starts from scratch) and an extra negative for every text:
    a swapped-attribute caption (60% of them shape swaps, half of those of a two-object caption
    binding the other object's word) or, one time in ten, a text that states nothing; a spec may
    override any of them. The depth of a filter's text transformer comes with the checkpoint it
    starts from."""
    if model["kind"] != "filter":
        return []
    args = ["--swap-negatives", str(model.get("swap_negatives", 1.0)), "--swap-shape-share", str(model.get("swap_shape_share", 0.6)),
            "--swap-binding-share", str(model.get("swap_binding_share", 0.5)),
            "--contentless-share", str(model.get("contentless_share", 0.1))]
    freeze = model.get("freeze_vision", model["init"] != "scratch")
    return args + (["--freeze-vision"] if freeze else [])


def _train_settings(spec: dict, model: dict) -> dict:
    return {k: model.get(k) for k in ("kind", "steps", "lr", "init", "size", "batch_size")} | {
        "recipe": _filter_recipe(model), "seed": spec.get("seed", 0), "seed_data": spec["seed_data"], "round": spec["round_url"], "current": model["current"],
    }


def train_task(spec: dict, work: Path) -> None:
    from .evaluate import evaluate_bundle, record_metrics
    from .export import export, sha256
    from .train import train

    round_url = spec["round_url"].rstrip("/")
    for model in spec["models"]:
        kind = model["kind"]
        out_url = model["out"].rstrip("/")
        if read_text(f"{out_url}/bundle.json") is not None:
            progress(f"[stage] {kind}: bundle {out_url} already uploaded: reusing it")
            continue
        current = download_dir(model["current"], work / "current" / kind)
        ckpt = work / "ckpt" / kind
        ckpt_url = f"{round_url}/trainer/ckpt/{kind}"
        settings = _train_settings(spec, model)
        marker = read_text(f"{ckpt_url}/stage.json")
        if marker is not None and json.loads(marker) == settings and read_text(f"{ckpt_url}/train.json") is not None:
            progress(f"[stage] {kind}: training already finished: reusing checkpoint {ckpt_url}")
            download_dir(ckpt_url, ckpt)
        else:
            progress(f"[stage] training {kind}: {model['steps']} steps from {model['init']}")
            init = ["--size", model.get("size", "small")] if model["init"] == "scratch" else ["--init-from", str(current / "checkpoint")]
            args = _parser().parse_args(
                ["train", "--kind", kind, "--data", spec["seed_data"], "--round", round_url, "--out", str(ckpt), *init,
                 "--steps", str(model["steps"]), "--batch-size", str(model.get("batch_size", 64)), "--lr", str(model["lr"]),
                 "--seed", str(spec.get("seed", 0)), *_filter_recipe(model)]
            )
            train(args)
            (ckpt / "stage.json").write_text(json.dumps(settings, indent=2) + "\n")
            upload_dir(ckpt, ckpt_url, last="train.json")
        bundle = work / "bundles" / kind
        parent = sha256(current / "bundle.json")
        # A retrained bundle keeps the precisions of the one it replaces (GPU workers pick fp16).
        variants = json.loads((current / "bundle.json").read_text()).get("variants", {})
        precision = ",".join(["fp32", *sorted(variants)])
        args = _parser().parse_args(
            ["export", "--checkpoint", str(ckpt), "--kind", kind, "--out", str(bundle), "--name", model["name"],
             "--verify-images", spec["eval_data"], "--parent", parent, "--precision", precision]
        )
        export(args)
        record_metrics(bundle, evaluate_bundle(bundle, spec["eval_data"], None))
        upload_dir(bundle, out_url, last="bundle.json")
        progress(f"[stage] {kind}: uploaded bundle {out_url}")


def eval_task(spec: dict, work: Path) -> None:
    from .evaluate import evaluate_bundle

    figures = []
    for kind in ("captioner", "filter"):
        url = spec["bundles"][kind]
        local = download_dir(url, work / "eval" / kind)
        progress(f"[stage] evaluating {kind} {url}")
        figures.append(evaluate_bundle(local, spec["eval_data"], spec.get("limit")))
    write_text(spec["out"], json.dumps(figures, indent=2, sort_keys=True) + "\n")
    progress(f"[stage] wrote {spec['out']}")


def _parser() -> argparse.ArgumentParser:
    from .__main__ import parser

    return parser()


def stage(args) -> None:
    if os.environ.get("CAPFILT_TRAINER_WATCH_PARENT") == "1":
        _watch_parent()
    text = read_text(args.spec)
    if text is None:
        raise FileNotFoundError(f"{args.spec}: no stage spec there")
    spec = json.loads(text)
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        ctx = None
    else:
        ctx = tempfile.TemporaryDirectory(prefix="capfilt-stage-")
        work = Path(ctx.name)
    try:
        if spec.get("task") == "train":
            train_task(spec, work)
        elif spec.get("task") == "eval":
            eval_task(spec, work)
        else:
            raise ValueError(f"{args.spec}: unknown task {spec.get('task')!r} (train or eval)")
    finally:
        if ctx is not None:
            ctx.cleanup()
