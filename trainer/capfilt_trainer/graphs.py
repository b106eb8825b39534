"""The torch modules that become a bundle's ONNX graphs, built around HF's BLIP modules (their
weights, their sub-layers) so that an export of a user's own BLIP checkpoint works the same way.

Captioner:
  ``vision``:  pixel_values -> image_embeds, cross_k_{l}, cross_v_{l} (each decoder layer's
               cross-attention keys/values, computed once per image and reused at every step)
  ``decoder``: one decoding step with a self-attention KV cache:
               input_ids [B,T], position_ids [B,T], attention_mask [B,P+T] (1 = real token, 0 = left
               padding), past_k_{l}/past_v_{l} [B,H,P,d], cross_k_{l}/cross_v_{l} [B,H,S,d]
               -> logits [B,V] (of the last position), present_k_{l}/present_v_{l} [B,H,P+T,d]
Filter:
  ``vision``:  pixel_values -> image_embeds
  ``itm``:     image_embeds [B,S,D], input_ids [B,T] ([CLS] first), attention_mask [B,T]
               -> itm_logits [B,2] (BLIP's [ENC] replaces [CLS] inside the graph), itc_sim [B]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, d = x.shape
    return x.view(b, s, heads, d // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


class CaptionerVision(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.vision = model.vision_model
        self.layers = model.text_decoder.bert.encoder.layer
        self.heads = model.config.text_config.num_attention_heads

    def forward(self, pixel_values):
        emb = self.vision(pixel_values=pixel_values).last_hidden_state
        out = [emb]
        for layer in self.layers:
            ca = layer.crossattention.self
            out += [_heads(ca.key(emb), self.heads), _heads(ca.value(emb), self.heads)]
        return tuple(out)


class DecoderStep(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.bert = model.text_decoder.bert
        self.cls = model.text_decoder.cls
        self.layers = self.bert.encoder.layer
        self.heads = model.config.text_config.num_attention_heads
        self.n = len(self.layers)

    def forward(self, input_ids, position_ids, attention_mask, *kv):
        past, cross = kv[: 2 * self.n], kv[2 * self.n :]
        h = self.bert.embeddings(input_ids=input_ids, position_ids=position_ids)
        t = input_ids.shape[1]
        p = past[0].shape[2]
        cols = torch.arange(p + t, device=h.device)
        rows = torch.arange(t, device=h.device) + p
        allowed = (cols.unsqueeze(0) <= rows.unsqueeze(1)).unsqueeze(0).unsqueeze(0) & (attention_mask > 0).unsqueeze(1).unsqueeze(1)
        neg = torch.tensor(torch.finfo(h.dtype).min, dtype=h.dtype, device=h.device)
        mask = torch.where(allowed, torch.zeros((), dtype=h.dtype, device=h.device), neg)
        presents = []
        for i, layer in enumerate(self.layers):
            sa = layer.attention.self
            d = sa.attention_head_size
            q = _heads(sa.query(h), self.heads)
            k = torch.cat([past[2 * i], _heads(sa.key(h), self.heads)], dim=2)
            v = torch.cat([past[2 * i + 1], _heads(sa.value(h), self.heads)], dim=2)
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask, dim=-1)
            a = layer.attention.output(_merge(probs @ v), h)
            ca = layer.crossattention.self
            q2 = _heads(ca.query(a), self.heads)
            probs2 = torch.softmax(q2 @ cross[2 * i].transpose(-1, -2) / math.sqrt(d), dim=-1)
            a2 = layer.crossattention.output(_merge(probs2 @ cross[2 * i + 1]), a)
            h = layer.output(layer.intermediate(a2), a2)
            presents += [k, v]
        logits = self.cls(h[:, -1, :])
        return (logits, *presents)


class FilterVision(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.vision = model.vision_model

    def forward(self, pixel_values):
        return self.vision(pixel_values=pixel_values).last_hidden_state


class FilterItm(nn.Module):
    def __init__(self, model, enc_id: int):
        super().__init__()
        self.m = model
        self.enc_id = enc_id

    def forward(self, image_embeds, input_ids, attention_mask):
        b = input_ids.shape[0]
        enc = torch.full((b, 1), self.enc_id, dtype=input_ids.dtype, device=input_ids.device)
        enc_ids = torch.cat([enc, input_ids[:, 1:]], dim=1)
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        fused = self.m.text_encoder(
            input_ids=enc_ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts
        ).last_hidden_state
        itm_logits = self.m.itm_head(fused[:, 0, :])
        text = self.m.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        img_feat = F.normalize(self.m.vision_proj(image_embeds[:, 0, :]), dim=-1)
        txt_feat = F.normalize(self.m.text_proj(text[:, 0, :]), dim=-1)
        return itm_logits, (img_feat * txt_feat).sum(-1)


def kv_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(layers) for kind in ("k", "v")]
