"""Train, export (with its self-check) and evaluate tiny models end to end, and the committed
seed bundles: hashes, re-export from their checkpoints, HF vs ONNX-only greedy captions on real
photos."""
import hashlib
import subprocess
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SEED_BUNDLES, run_trainer


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def assert_hashes_match(bundle: Path):
    manifest = json.loads((bundle / "bundle.json").read_text())
    for name in [g["file"] for g in manifest["graphs"].values()] + [manifest["tokenizer"]["file"]]:
        assert name in manifest["files"], name
    for name, digest in manifest["files"].items():
        assert sha(bundle / name) == digest, name
    return manifest


@pytest.mark.parametrize("kind", ["captioner", "filter"])
def test_train_export_eval_round_trip(bench, tmp_path, kind):
    ckpt, bundle = tmp_path / "ckpt", tmp_path / "bundle"
    r = run_trainer("train", "--kind", kind, "--data", str(bench / "seed"), "--out", str(ckpt), "--steps", "12", "--batch-size", "16", "--log-every", "4")
    assert r.returncode == 0, r.stderr
    assert "step 12/12" in r.stderr
    record = json.loads((ckpt / "train.json").read_text())
    assert record["pairs"] == 256 and record["steps"] == 12
    r = run_trainer("export", "--checkpoint", str(ckpt), "--kind", kind, "--out", str(bundle), "--verify-images", str(bench / "eval"), "--eval", str(bench / "eval"))
    assert r.returncode == 0, r.stderr
    assert "max abs diff" in r.stderr
    manifest = assert_hashes_match(bundle)
    assert manifest["kind"] == kind
    checks = manifest["provenance"]["export_checks"]["max_abs_diff"]
    assert all(v <= 1e-4 for v in checks.values()), checks
    metrics = manifest["provenance"]["metrics"]
    assert metrics["eval_rows"] == 64
    assert ("exact_match" in metrics) if kind == "captioner" else ("auc" in metrics)
    if kind == "captioner":
        assert manifest["prompt"] == "a picture of "
        assert manifest["tokenizer"]["special_tokens"]["dec"]["token"] == "[DEC]"
    else:
        assert manifest["tokenizer"]["special_tokens"]["enc"]["token"] == "[ENC]"


def test_training_is_deterministic(bench, tmp_path):
    for name in ["a", "b"]:
        r = run_trainer("train", "--kind", "captioner", "--data", str(bench / "seed"), "--out", str(tmp_path / name), "--steps", "3", "--batch-size", "8", "--seed", "5")
        assert r.returncode == 0, r.stderr
    assert sha(tmp_path / "a" / "tokenizer.json") == sha(tmp_path / "b" / "tokenizer.json")
    assert sha(tmp_path / "a" / "model.safetensors") == sha(tmp_path / "b" / "model.safetensors")


def test_bad_inputs_are_clear_errors(tmp_path):
    r = run_trainer("export", "--checkpoint", str(tmp_path / "nope"), "--kind", "filter", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "config.json" in r.stderr
    r = run_trainer("train", "--kind", "filter", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "no such file" in r.stderr


needs_seed = pytest.mark.skipif(not (SEED_BUNDLES / "captioner" / "bundle.json").exists(), reason="seed bundles not built")


@needs_seed
@pytest.mark.parametrize("kind", ["captioner", "filter"])
def test_seed_bundles_hashes_and_metrics(kind):
    manifest = assert_hashes_match(SEED_BUNDLES / kind)
    metrics = manifest["provenance"]["metrics"]
    assert metrics["eval_rows"] >= 100
    assert manifest["provenance"]["training_data"], "provenance names the training data"


@needs_seed
@pytest.mark.parametrize("kind", ["captioner", "filter"])
def test_export_reproduces_seed_bundle_from_its_checkpoint(tmp_path, kind):
    seed = SEED_BUNDLES / kind
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in ["config.json", "model.safetensors", "tokenizer.json"]:
        (ckpt / f).write_bytes((seed / "checkpoint" / f).read_bytes())
    r = run_trainer("export", "--checkpoint", str(ckpt), "--kind", kind, "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    new = assert_hashes_match(tmp_path / "b")
    old = json.loads((seed / "bundle.json").read_text())
    assert new["graphs"] == old["graphs"]
    assert new["files"]["checkpoint/model.safetensors"] == old["files"]["checkpoint/model.safetensors"]


@needs_seed
def test_seed_captioner_hf_generate_equals_onnx_only_greedy_on_real_photos():
    from PIL import Image
    from skimage import data as skdata
    from transformers import BlipForConditionalGeneration

    from capfilt_trainer import tokenizer as toks
    from capfilt_trainer.export import greedy_onnx, strip_ids
    from capfilt_trainer.preprocess import pixel_values, prompt_ids

    bundle = SEED_BUNDLES / "captioner"
    manifest = json.loads((bundle / "bundle.json").read_text())
    tok = toks.load(bundle / "tokenizer.json")
    special = toks.special_ids(tok)
    photos = []
    for name in ["astronaut", "coffee", "chelsea", "rocket"]:
        buf = io.BytesIO()
        Image.fromarray(getattr(skdata, name)()).save(buf, format="PNG")
        photos.append(buf.getvalue())
    px = pixel_values(photos, manifest["preprocessing"]["image_size"])
    gen = manifest["generation"]
    onnx_ids = greedy_onnx(bundle, tok, px.numpy(), gen["max_length"], gen["min_length"])
    model = BlipForConditionalGeneration.from_pretrained(str(bundle / "checkpoint")).eval()
    pid = prompt_ids(tok, special["[DEC]"])
    with torch.no_grad():
        hf = model.generate(px, input_ids=torch.tensor([pid + [special["[SEP]"]]] * len(photos)),
                            max_length=gen["max_length"], min_length=gen["min_length"], do_sample=False, num_beams=1)
    assert onnx_ids == [strip_ids(r.tolist(), special) for r in hf]


# Per variant: the largest and the mean ITM probability difference from the fp32 graphs on the
# same (image, web text) pairs, and the share of greedy captions that must equal fp32's. int8
# moves a few texts near the decision boundary by up to 0.17 (README "Performance").
VARIANT_TOLERANCES = {"fp16": (0.01, 0.01, 0.9), "int8": (0.3, 0.01, 0.9)}


@needs_seed
@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_a_variant_passes_its_check_and_the_worker_runs_it_close_to_fp32(tmp_path, bench, variant):
    """``export --precision fp32,<variant>`` writes both graph sets with the variant check's
    figures in bundle.json; ``capfilt infer --precision <variant>`` loads the variant's graphs (on
    the CPU here) and its greedy captions and ITM probabilities stay close to the fp32 graphs'."""
    import pyarrow.parquet as pq

    from conftest import BIN

    itm_tolerance, itm_mean_tolerance, caption_share = VARIANT_TOLERANCES[variant]
    bundles = {}
    for kind in ["captioner", "filter"]:
        ckpt = SEED_BUNDLES / kind / "checkpoint"
        out = tmp_path / kind
        r = run_trainer("export", "--checkpoint", str(ckpt), "--kind", kind, "--out", str(out), "--precision", variant)
        assert r.returncode == 0, r.stderr
        manifest = assert_hashes_match(out)
        assert manifest["precision"] == "fp32" and set(manifest["variants"]) == {variant}
        graphs = manifest["variants"][variant]
        assert set(graphs["graphs"]) == set(manifest["graphs"])
        for g in graphs["graphs"].values():
            assert g["file"].endswith(f".{variant}.onnx") and g["file"] in manifest["files"]
        checks = graphs["checks"]
        assert 0 < max(checks["max_relative_diff"].values()) <= checks["relative_tolerance"], checks
        if kind == "captioner":
            assert checks["greedy_captions_checked"] >= 1
        else:
            assert checks["itm_prob_max_abs_diff"] < itm_tolerance
        bundles[kind] = out

    eval_file = sorted((bench / "eval").glob("*.parquet"))[0]
    outputs = {}
    for precision in ["fp32", variant]:
        out = tmp_path / f"out-{precision}"
        r = subprocess.run([BIN, "infer", "--captioner", str(bundles["captioner"]), "--filter", str(bundles["filter"]),
                            "--input", str(eval_file), "--output", str(out), "--decoding", "greedy",
                            "--precision", precision, "--cache-dir", str(tmp_path / "cache")],
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stderr
        assert f"captioner_precision={precision}" in r.stderr and f"filter_precision={precision}" in r.stderr, r.stderr
        scored = pq.read_table(out / "scored").to_pylist()
        outputs[precision] = {(row["key"], row["origin"]): row for row in scored}
    a, b = outputs["fp32"], outputs[variant]
    web = [k for k in a if k[1] == "web"]
    synthetic = [k for k in a if k[1] == "synthetic"]
    assert web and synthetic and set(web) <= set(b)
    # ITM probabilities of the same (image, web text) close to fp32's.
    diffs = [abs(a[k]["itm_prob"] - b[k]["itm_prob"]) for k in web]
    assert max(diffs) < itm_tolerance and sum(diffs) / len(diffs) < itm_mean_tolerance, (max(diffs), sum(diffs) / len(diffs))
    # Greedy captions: the large majority identical.
    same = sum(a[k]["text"] == b.get(k, {}).get("text") for k in synthetic)
    assert same >= caption_share * len(synthetic), f"{same} of {len(synthetic)} greedy captions equal"


def test_precision_list_is_parsed_and_refused_clearly(tmp_path):
    r = run_trainer("export", "--checkpoint", str(tmp_path), "--kind", "filter", "--out", str(tmp_path / "b"), "--precision", "fp8")
    assert r.returncode == 2 and "'fp8'" in r.stderr and "fp32, fp16 or int8" in r.stderr
