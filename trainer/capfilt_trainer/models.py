"""BLIP captioner and filter built from HF transformers' own classes, at a size preset or from a
local checkpoint folder, plus BLIP's training losses (transformers ships none for ITC/ITM)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preset:
    image_size: int
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    text_hidden: int
    text_layers: int
    text_heads: int
    max_positions: int
    vocab_size: int | None  # None: the tokenizer's own size


PRESETS = {
    # Seconds to minutes on 2 CPU cores: the seed bundles, the demo and the tests.
    "tiny": Preset(96, 8, 64, 2, 2, 64, 2, 2, 64, None),
    # The seed bundles: tiny's widths with 16 px patches (36 image tokens instead of 144: four
    # times less cross-attention work per decoding step, and no worse on the benchmark).
    "small": Preset(96, 16, 64, 2, 2, 64, 2, 2, 64, None),
    # BLIP-base shape (ViT-B/16 at 384, BERT-base text, BLIP's 30524-token vocabulary): random
    # weights, for performance work.
    "base": Preset(384, 16, 768, 12, 12, 768, 12, 12, 512, 30524),
}


def blip_config(preset: Preset, vocab_size: int, special: dict[str, int]) -> BlipConfig:
    text = dict(
        vocab_size=vocab_size,
        hidden_size=preset.text_hidden,
        encoder_hidden_size=preset.vision_hidden,
        intermediate_size=preset.text_hidden * 4,
        num_hidden_layers=preset.text_layers,
        num_attention_heads=preset.text_heads,
        max_position_embeddings=preset.max_positions,
        bos_token_id=special["[DEC]"],
        eos_token_id=special["[SEP]"],
        sep_token_id=special["[SEP]"],
        pad_token_id=special["[PAD]"],
        label_smoothing=0.1,
    )
    vision = dict(
        hidden_size=preset.vision_hidden,
        intermediate_size=preset.vision_hidden * 4,
        num_hidden_layers=preset.vision_layers,
        num_attention_heads=preset.vision_heads,
        image_size=preset.image_size,
        patch_size=preset.patch_size,
        # HF's default (1e-10) leaves the vision embeddings almost zero for a from-scratch model.
        initializer_range=0.02,
    )
    proj = min(256, preset.text_hidden)
    return BlipConfig(
        text_config=text,
        vision_config=vision,
        projection_dim=proj,
        image_text_hidden_size=proj,
        label_smoothing=0.1,
    )


def build(kind: str, preset_name: str | None, init_from: str | None, vocab_size: int, special: dict[str, int], seed: int,
          patch_size: int | None = None, text_layers: int | None = None):
    """A captioner (``BlipForConditionalGeneration``) or filter (``BlipForImageTextRetrieval``);
    ``patch_size`` and ``text_layers`` override the preset's (experiment knobs: trainer README)."""
    torch.manual_seed(seed)
    cls = BlipForConditionalGeneration if kind == "captioner" else BlipForImageTextRetrieval
    if init_from:
        path = Path(init_from)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"--init-from {init_from}: no config.json (expected a HF checkpoint folder)")
        model = cls.from_pretrained(str(path))
    else:
        if preset_name not in PRESETS:
            raise ValueError(f"unknown size preset '{preset_name}' (choose {', '.join(PRESETS)})")
        preset = PRESETS[preset_name]
        if patch_size is not None:
            if patch_size < 1 or preset.image_size % patch_size:
                raise ValueError(f"--patch-size {patch_size}: must divide the preset's image size {preset.image_size}")
            preset = replace(preset, patch_size=patch_size)
        if text_layers is not None:
            if text_layers < 1:
                raise ValueError(f"--text-layers {text_layers}: must be at least 1")
            preset = replace(preset, text_layers=text_layers)
        model = cls(blip_config(preset, preset.vocab_size or vocab_size, special))
    model.config.text_config.label_smoothing = 0.1
    return model


def image_size(model) -> int:
    s = model.config.vision_config.image_size
    return s if isinstance(s, int) else int(s[0])


# --- losses -----------------------------------------------------------------------------------


def captioner_loss(model: BlipForConditionalGeneration, pixel_values, input_ids, attention_mask, prompt_len: int):
    """BLIP's LM loss: [DEC] prompt caption [SEP], prompt and padding masked out of the labels,
    label smoothing 0.1 (HF's BlipTextLMHeadModel applies it and the one-token shift)."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :prompt_len] = -100
    out = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    return out.loss


def filter_losses(model: BlipForImageTextRetrieval, pixel_values, input_ids, attention_mask, text_ids, enc_id: int, temp: float = 0.07,
                  swapped=None, image_embeds=None):
    """BLIP's ITC (in-batch contrastive, texts that are equal count as positives) and ITM with
    hard negatives sampled from the in-batch similarity; returns (itc, itm). ``swapped``:
    optional (rows, ids, mask) of swapped-attribute captions of images ``rows``, extra ITM
    negatives of those images. ``image_embeds``: the vision tower's output for ``pixel_values``
    when the caller has it already (a frozen tower's, computed once per image)."""
    if image_embeds is None:
        image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    text_out = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    img_feat = F.normalize(model.vision_proj(image_embeds[:, 0, :]), dim=-1)
    txt_feat = F.normalize(model.text_proj(text_out[:, 0, :]), dim=-1)
    sim_i2t = img_feat @ txt_feat.t() / temp
    sim_t2i = sim_i2t.t()
    pos = (text_ids.unsqueeze(0) == text_ids.unsqueeze(1)).float()
    targets = pos / pos.sum(1, keepdim=True)
    itc = (-(F.log_softmax(sim_i2t, 1) * targets).sum(1).mean() - (F.log_softmax(sim_t2i, 1) * targets).sum(1).mean()) / 2

    enc_ids = input_ids.clone()
    enc_ids[:, 0] = enc_id
    b = input_ids.shape[0]
    with torch.no_grad():
        w_i2t = F.softmax(sim_i2t.float(), dim=1).masked_fill(pos.bool(), 0) + 1e-9
        w_t2i = F.softmax(sim_t2i.float(), dim=1).masked_fill(pos.bool(), 0) + 1e-9
        neg_text = torch.multinomial(w_i2t, 1).squeeze(1)  # a hard negative text per image
        neg_image = torch.multinomial(w_t2i, 1).squeeze(1)  # a hard negative image per text
    all_images = [image_embeds, image_embeds, image_embeds[neg_image]]
    all_ids = [enc_ids, enc_ids[neg_text], enc_ids]
    all_mask = [attention_mask, attention_mask[neg_text], attention_mask]
    negatives = 2 * b
    if swapped is not None:
        rows, s_ids, s_mask = swapped
        s_ids = s_ids.clone()
        s_ids[:, 0] = enc_id
        # Pad both id sets to one width before stacking them.
        width = max(enc_ids.shape[1], s_ids.shape[1])
        all_ids = [F.pad(t, (0, width - t.shape[1])) for t in all_ids] + [F.pad(s_ids, (0, width - s_ids.shape[1]))]
        all_mask = [F.pad(t, (0, width - t.shape[1])) for t in all_mask] + [F.pad(s_mask, (0, width - s_mask.shape[1]))]
        all_images.append(image_embeds[rows])
        negatives += len(rows)
    all_images = torch.cat(all_images, 0)
    all_ids = torch.cat(all_ids, 0)
    all_mask = torch.cat(all_mask, 0)
    all_atts = torch.ones(all_images.shape[:-1], dtype=torch.long, device=image_embeds.device)
    hidden = model.text_encoder(
        input_ids=all_ids, attention_mask=all_mask, encoder_hidden_states=all_images, encoder_attention_mask=all_atts
    ).last_hidden_state
    logits = model.itm_head(hidden[:, 0, :])
    labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(negatives, dtype=torch.long)]).to(logits.device)
    itm = F.cross_entropy(logits, labels)
    return itc, itm
