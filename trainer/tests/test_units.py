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
    # (256 training rows, 64 eval rows: a small probe, so the bar is low but well above chance)
    assert out["all_patches_colour_acc"] > 0.2
    r = run_trainer("diagnose", "classify", "--train", str(bench / "seed"), "--eval", str(bench / "eval"), "--binarise",
                    "--steps", "20", "--eval-every", "10", "--json")
    assert r.returncode == 0, r.stderr
    out = _json.loads(r.stdout.strip().splitlines()[-1])
    assert out["images"] == "binarised" and [c["step"] for c in out["curve"]] == [10, 20]
    r = run_trainer("diagnose", "probe", "--train", str(bench / "seed"), "--eval", str(bench / "eval"))
    assert r.returncode == 2 and "needs --checkpoint" in r.stderr


def test_diagnose_errors_breaks_down_a_captioners_and_a_filters_mistakes(bench):
    """`diagnose errors` on the seed bundles: the captioner's shape errors by shape size add up to
    its shape accuracy, the filter's figures cover every kind of wrong text in the split."""
    import json as _json

    from conftest import SEED_BUNDLES, run_trainer

    r = run_trainer("diagnose", "errors", "--checkpoint", str(SEED_BUNDLES / "captioner"), "--eval", str(bench / "eval"), "--json")
    assert r.returncode == 0, r.stderr
    out = _json.loads(r.stdout.strip().splitlines()[-1])
    by_size = out["shape_error_by_radius"].values()
    shapes = sum(b["shapes"] for b in by_size)
    wrong = sum(round(b["error"] * b["shapes"]) for b in by_size)
    assert shapes > 64 and out["shape_acc"] == pytest.approx(1 - wrong / shapes)
    assert sum(out["top_confusions"].values()) <= wrong
    r = run_trainer("diagnose", "errors", "--checkpoint", str(SEED_BUNDLES / "filter"), "--eval", str(bench / "eval"), "--json")
    assert r.returncode == 0, r.stderr
    out = _json.loads(r.stdout.strip().splitlines()[-1])
    assert 0.5 < out["auc"] <= 1.0 and {"precision_at_0.9", "recall_at_0.3"} <= set(out)
    assert any(k.startswith("kept_wrong_") for k in out)
    r = run_trainer("diagnose", "errors", "--eval", str(bench / "eval"))
    assert r.returncode == 2 and "needs --checkpoint" in r.stderr


def test_largest_radius_follows_the_generators_bands():
    from capfilt_trainer.diagnose import largest_radius

    def png(w, h):
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, format="PNG")
        return buf.getvalue()

    assert largest_radius(png(200, 200), 1) == pytest.approx(0.45 * 96)
    assert largest_radius(png(200, 200), 2) == pytest.approx(0.45 * 48)  # two bands of half the width
    assert largest_radius(png(100, 200), 1) == pytest.approx(0.45 * 100 * 96 / 200)  # squashed vertically


def test_swapped_attribute_changes_one_word_of_its_kind_and_fixes_the_article():
    from capfilt_trainer.augment import COLOURS, SHAPES, swapped_attribute

    rng = np.random.default_rng(0)
    text = "a red circle and a green star on a blue background"
    seen_kinds = set()
    for _ in range(200):
        out = swapped_attribute(text, rng)
        assert out is not None and out != text
        parsed = parse(out)
        assert parsed is not None, out  # still a canonical caption: the article was fixed
        diff = [(a, b) for a, b in zip(text.split(), out.split()) if a != b and a not in ("a", "an")]
        assert len(diff) == 1
        old, new = diff[0]
        kind = SHAPES if old in SHAPES else COLOURS
        assert new in kind
        seen_kinds.add(kind is SHAPES)
    assert seen_kinds == {True, False}  # both shapes and colours get swapped
    assert swapped_attribute("an unrelated alt text", rng) is None


def test_swapped_attribute_swaps_shapes_at_the_asked_share():
    from capfilt_trainer.augment import SHAPES, swapped_attribute

    rng = np.random.default_rng(1)
    text = "a red circle on a blue background"  # one shape word, two colour words

    def shape_swaps(share):
        outs = [swapped_attribute(text, rng, share) for _ in range(2000)]
        return sum(o.split()[2] != "circle" and o.split()[2] in SHAPES for o in outs) / len(outs)

    assert abs(shape_swaps(None) - 1 / 3) < 0.04  # uniform over the three attribute words
    assert abs(shape_swaps(0.6) - 0.6) < 0.04
    assert shape_swaps(1.0) == 1.0
    # A caption without a shape word still gets a colour swapped.
    out = swapped_attribute("a red thing on a blue background", rng, 1.0)
    assert out is not None and out != "a red thing on a blue background" and "thing" in out


def test_swapped_attribute_binds_the_other_objects_word_at_the_asked_share():
    from capfilt_trainer.augment import SHAPES, swapped_attribute

    rng = np.random.default_rng(2)
    text = "a red circle and a green star on a blue background"

    def bound_share(share):
        outs = [swapped_attribute(text, rng, 1.0, share) for _ in range(2000)]
        # A shape swap that names the other object's shape: "a red star and a green star".
        return sum(o.split().count("star") == 2 or o.split().count("circle") == 2 for o in outs) / len(outs)

    assert abs(bound_share(0.0) - 1 / 6) < 0.04  # a uniform draw over the six other shapes
    assert abs(bound_share(0.5) - (0.5 + 0.5 / 6)) < 0.04
    assert bound_share(1.0) == 1.0
    # One object: no other word to bind, the swap stays uniform over its kind.
    out = swapped_attribute("a red circle on a blue background", rng, 1.0, 1.0)
    assert out is not None and out.split()[2] in SHAPES and out.split()[2] != "circle"


def test_alt_text_drops_articles_one_by_one():
    from capfilt_trainer.augment import alt_text

    rng = np.random.default_rng(3)
    text = "a red circle and a green star on a blue background"
    outs = {alt_text(text, rng) for _ in range(3000)}
    # The web's stock-photo form: articles gone from the list of things, kept before the background.
    assert "red circle and green star on a blue background" in outs
    assert "red circle and green star on blue background" in outs
    assert text in outs
    for out in outs:  # only articles, commas and prefixes/suffixes change: the attribute words stay
        words = [w.strip(",") for w in out.split()]
        assert [w for w in words if w in ("red", "circle", "green", "star", "blue")] == ["red", "circle", "green", "star", "blue"]


def test_best_recall_at_precision_is_the_lowest_threshold_that_keeps_the_precision():
    from capfilt_trainer.metrics import best_recall_at_precision

    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.6, 0.5, 0.4, 0.1])
    labels = np.array([1, 1, 0, 1, 0, 1, 1, 0], dtype=bool)
    # Keeping >= 0.8: 2/2 precise; >= 0.7: 2/3; >= 0.6 (a tie, both kept): 3/5; >= 0.5: 4/6; >= 0.4: 5/7.
    assert best_recall_at_precision(probs, labels, 1.0) == {"threshold": 0.8, "precision": 1.0, "recall": 0.4}
    best = best_recall_at_precision(probs, labels, 0.7)
    assert best["threshold"] == 0.4 and best["recall"] == 1.0 and best["precision"] == pytest.approx(5 / 7)
    assert best_recall_at_precision(probs, ~labels, 1.0)["recall"] == 0.0  # no threshold is precise enough


def test_frozen_tower_embeddings_give_the_same_filter_loss():
    import torch

    from capfilt_trainer.models import build, filter_losses
    from capfilt_trainer.train import frozen_image_embeds

    tok = toks.build(["a red circle on a blue background", "a green star on a white background"], vocab_size=64)
    special = toks.special_ids(tok)
    model = build("filter", "tiny", None, tok.get_vocab_size(), special, 0)
    model.eval()  # dropout off: the same loss twice
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 96, 96), dtype=np.uint8)
    embeds = frozen_image_embeds(model, images, torch.device("cpu"), chunk=3)
    assert embeds is not None and embeds.shape == (4, 145, 64)
    ids, mask = encode_texts(tok, ["a red circle on a blue background"] * 2 + ["a green star on a white background"] * 2, special["[CLS]"], 35)
    text_ids = torch.tensor([0, 0, 1, 1])
    from capfilt_trainer.preprocess import normalise

    torch.manual_seed(0)
    direct = filter_losses(model, normalise(images), ids, mask, text_ids, special["[ENC]"])
    torch.manual_seed(0)
    cached = filter_losses(model, None, ids, mask, text_ids, special["[ENC]"], image_embeds=embeds)
    for a, b in zip(direct, cached):
        assert torch.allclose(a, b, atol=1e-5)


def test_mask_curriculum_runs_from_masks_to_images():
    from capfilt_trainer.preprocess import mask_blend, shape_masks
    from capfilt_trainer.train import curriculum_alpha

    assert curriculum_alpha(10, 100, None) == 1.0
    assert curriculum_alpha(10, 100, (0.2, 0.6)) == 0.0
    assert curriculum_alpha(40, 100, (0.2, 0.6)) == pytest.approx(0.5)
    assert curriculum_alpha(60, 100, (0.2, 0.6)) == 1.0
    img = np.zeros((1, 3, 8, 8), dtype=np.uint8)
    img[:, 0] = 200  # red background
    img[:, :, 2:5, 2:5] = np.array([20, 40, 220], dtype=np.uint8).reshape(3, 1, 1)  # a blue square
    mask = shape_masks(img)
    assert mask[0, :, 3, 3].tolist() == [255, 255, 255] and mask[0, :, 0, 0].tolist() == [0, 0, 0]
    assert int(mask.sum()) == 9 * 3 * 255
    assert np.array_equal(mask_blend(img, 0.0), mask) and np.array_equal(mask_blend(img, 1.0), img)
    half = mask_blend(img, 0.5)
    assert half[0, 0, 3, 3] == round(0.5 * 20 + 0.5 * 255)


def test_init_shared_copies_the_captioners_tower_and_text_into_a_filter(tmp_path):
    import torch

    from capfilt_trainer.models import build
    from capfilt_trainer.train import init_shared

    tok = toks.build(["a red circle on a blue background"], vocab_size=200)
    special = toks.special_ids(tok)
    captioner = build("captioner", "tiny", None, tok.get_vocab_size(), special, seed=1)
    captioner.save_pretrained(str(tmp_path / "cap"))
    flt = build("filter", "tiny", None, tok.get_vocab_size(), special, seed=2)
    init_shared(flt, str(tmp_path / "cap"))
    assert torch.equal(flt.vision_model.embeddings.patch_embedding.weight, captioner.vision_model.embeddings.patch_embedding.weight)
    assert torch.equal(flt.text_encoder.encoder.layer[1].crossattention.self.query.weight,
                       captioner.text_decoder.bert.encoder.layer[1].crossattention.self.query.weight)
    other = build("filter", "small", None, tok.get_vocab_size(), special, seed=2)  # 16 px patches: another tower
    with pytest.raises(ValueError, match="do not fit"):
        init_shared(other, str(tmp_path / "cap"))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        init_shared(flt, str(tmp_path))


def test_init_shared_repeats_the_captioners_layers_into_a_deeper_filter(tmp_path):
    import torch

    from capfilt_trainer.models import build
    from capfilt_trainer.train import init_shared

    tok = toks.build(["a red circle on a blue background"], vocab_size=200)
    special = toks.special_ids(tok)
    captioner = build("captioner", "tiny", None, tok.get_vocab_size(), special, seed=1)
    captioner.save_pretrained(str(tmp_path / "cap"))
    deep = build("filter", "tiny", None, tok.get_vocab_size(), special, seed=2, text_layers=5)
    assert len(deep.text_encoder.encoder.layer) == 5
    init_shared(deep, str(tmp_path / "cap"))
    source = captioner.text_decoder.bert.encoder.layer
    for i, layer in enumerate(deep.text_encoder.encoder.layer):  # layers 0 1 0 1 0
        assert torch.equal(layer.crossattention.self.query.weight, source[i % 2].crossattention.self.query.weight), i
        assert torch.equal(layer.output.dense.bias, source[i % 2].output.dense.bias), i
    # Copies, not views: training one layer leaves its repeats alone.
    assert layer.output.dense.bias.data_ptr() != deep.text_encoder.encoder.layer[0].output.dense.bias.data_ptr()
    assert torch.equal(deep.text_encoder.embeddings.word_embeddings.weight, captioner.text_decoder.bert.embeddings.word_embeddings.weight)
    with pytest.raises(ValueError, match="at least 1"):
        build("filter", "tiny", None, tok.get_vocab_size(), special, seed=2, text_layers=0)


def test_contentless_negatives_state_no_attribute():
    from capfilt_trainer.augment import COLOURS, SHAPES, contentless

    rng = np.random.default_rng(0)
    caption = "a red circle and a blue star on a green background"
    texts = [contentless(caption, rng) for _ in range(200)]
    stripped = [t for t in texts if t == "a and a on a background"]
    made_up = [t for t in texts if t not in stripped]
    assert 60 < len(stripped) < 140 and made_up
    attribute_words = set(SHAPES) | set(COLOURS)
    for t in made_up:
        words = t.split(" ")
        assert 1 <= len(words) <= 5 and all(3 <= len(w) <= 9 and w.isalpha() for w in words), t
        assert not attribute_words & set(words), t
    # A text with no attribute word never comes back as its own negative.
    assert all(contentless("untitled photo", rng) != "untitled photo" for _ in range(50))


def test_noise_breakdown_names_the_kinds_a_filter_cannot_see():
    from capfilt_trainer.evaluate import noise_breakdown

    labels = np.array([True, True, True, False, False, False, False])
    noise = [None, None, None, "wrong_shape", "wrong_shape", "unrelated", "unrelated"]
    probs = np.array([0.9, 0.8, 0.7, 0.85, 0.6, 0.1, 0.2])
    out = noise_breakdown(probs, labels, noise)
    assert out["auc_vs_unrelated"] == 1.0 and out["kept_unrelated"] == 0.0
    assert out["auc_vs_wrong_shape"] == pytest.approx(4 / 6) and out["kept_wrong_shape"] == 1.0
    assert noise_breakdown(probs, labels, [None] * 7) == {}
