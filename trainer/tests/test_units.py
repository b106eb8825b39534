"""Unit tests: metrics, caption parsing, tokenizer, preprocessing parity with HF."""
import io

import numpy as np
import pytest
from PIL import Image

from capfilt_trainer import PROMPT
from capfilt_trainer import tokenizer as toks
from capfilt_trainer.evaluate import caption_metrics, filter_metrics, parse, roc_auc
from capfilt_trainer.preprocess import decode_caption, encode_texts, pixel_values, prompt_ids


def test_auc_matches_definition_with_ties():
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([True, True, False, False])) == 1.0
    assert roc_auc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([True, True, False, False])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    m = filter_metrics(np.array([0.9, 0.6, 0.4, 0.7]), np.array([True, False, True, False]))
    assert m["precision_at_0.5"] == pytest.approx(1 / 3)
    assert m["recall_at_0.5"] == 0.5


def test_caption_parsing_and_attribute_accuracy():
    assert parse("an orange star and a red circle on a blue background") == ("blue", [("orange", "star"), ("red", "circle")])
    assert parse("free shipping") is None
    m = caption_metrics(
        ["a red circle on a blue background", "a red square on a green background", "junk"],
        ["a red circle on a blue background", "a red circle on a blue background", "a red circle on a blue background"],
    )
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["colour_acc"] == pytest.approx(2 / 3)
    assert m["shape_acc"] == pytest.approx(1 / 3)
    assert m["background_acc"] == pytest.approx(1 / 3)


def test_tokenizer_has_blip_tokens_and_round_trips():
    tok = toks.build(["a red circle on a blue background", "an orange star"], vocab_size=200)
    special = toks.special_ids(tok)
    assert {"[DEC]", "[ENC]", "[SEP]", "[PAD]"} <= set(special)
    pid = prompt_ids(tok, special["[DEC]"])
    assert pid[0] == special["[DEC]"] and special["[SEP]"] not in pid
    ids = pid + tok.encode("a red circle").ids[1:]
    assert decode_caption(tok, ids) == "a red circle"
    enc, mask = encode_texts(tok, ["a red circle", "a"], special["[ENC]"], 35)
    assert enc[0, 0] == special["[ENC]"] and mask[1].sum() < mask[0].sum()
    assert tok.decode(tok.encode(PROMPT).ids, skip_special_tokens=True) == PROMPT.strip()


def test_preprocessing_matches_hf_blip_image_processor(bench):
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    from capfilt_trainer.data import read_examples

    images = [e.image for e in read_examples(str(bench / "eval"), limit=6)]
    gray = io.BytesIO()
    Image.fromarray((np.arange(50 * 70) % 255).astype(np.uint8).reshape(50, 70)).save(gray, format="PNG")
    images.append(gray.getvalue())
    ours = pixel_values(images, 96).numpy()
    proc = BlipImageProcessorPil(size={"height": 96, "width": 96})
    for i, data in enumerate(images):
        with Image.open(io.BytesIO(data)) as im:
            ref = proc(images=im, return_tensors="np")["pixel_values"][0]
        assert np.max(np.abs(ours[i] - ref)) < 1e-5


def test_diagnose_probe_and_classifier_run_and_report_accuracies(bench):
    """The shape diagnosis commands (trainer README) run end to end on a small benchmark."""
    import json as _json

    from conftest import SEED_BUNDLES, run_trainer

    r = run_trainer("diagnose", "probe", "--checkpoint", str(SEED_BUNDLES / "captioner"), "--train", str(bench / "seed"),
                    "--eval", str(bench / "eval"), "--json")
    assert r.returncode == 0, r.stderr
    out = _json.loads(r.stdout.strip().splitlines()[-1])
    for part in ("cls", "mean_patch", "all_patches"):
        assert 0.0 <= out[f"{part}_shape_acc"] <= 1.0 and 0.0 <= out[f"{part}_colour_acc"] <= 1.0
    # the seed captioner's tower carries colour: far above chance (1/12) from all patch tokens
    assert out["all_patches_colour_acc"] > 0.3
    r = run_trainer("diagnose", "classify", "--train", str(bench / "seed"), "--eval", str(bench / "eval"), "--binarise",
                    "--steps", "20", "--eval-every", "10", "--json")
    assert r.returncode == 0, r.stderr
    out = _json.loads(r.stdout.strip().splitlines()[-1])
    assert out["images"] == "binarised" and [c["step"] for c in out["curve"]] == [10, 20]
    r = run_trainer("diagnose", "probe", "--train", str(bench / "seed"), "--eval", str(bench / "eval"))
    assert r.returncode == 2 and "needs --checkpoint" in r.stderr
