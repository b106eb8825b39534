"""Image and text preprocessing shared by training, evaluation, export checks and golden files.

Images: decode, ``convert("RGB")``, bicubic resize to the model's square size (PIL, as HF's
BlipImageProcessor), rescale by 1/255, normalise with CLIP's mean and std."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

from . import PROMPT
from .data import decode_rgb
from .models import CLIP_MEAN, CLIP_STD

MEAN = np.array(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
STD = np.array(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)


def resized_uint8(data: bytes, size: int) -> np.ndarray:
    """[3, size, size] uint8, after decode + RGB + bicubic resize."""
    img = decode_rgb(data).resize((size, size), resample=Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def resized_uint8_all(images: list[bytes], size: int, threads: int) -> np.ndarray:
    """[N, 3, size, size] uint8 of every image, decoded on ``threads`` threads (Pillow's decoder
    and resampler release the GIL): a 40,000-image training set is a minute on one core."""
    if threads <= 1 or len(images) < 256:
        return np.stack([resized_uint8(b, size) for b in images])
    with ThreadPoolExecutor(threads) as pool:
        return np.stack(list(pool.map(lambda b: resized_uint8(b, size), images)))


def shape_masks(batch_uint8: np.ndarray, threshold: int = 40) -> np.ndarray:
    """[N, 3, H, W] uint8 -> the same images as white-on-black masks: white where a pixel differs
    from the image's top-left (background) pixel by more than ``threshold`` (summed over RGB)."""
    c = batch_uint8.astype(np.int16)
    mask = np.abs(c - c[:, :, :1, :1]).sum(1, keepdims=True) > threshold
    return np.repeat(mask.astype(np.uint8) * 255, 3, 1)


def mask_blend(batch_uint8: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha`` * images + (1 - ``alpha``) * their shape masks (the mask curriculum)."""
    if alpha >= 1.0:
        return batch_uint8
    masks = shape_masks(batch_uint8).astype(np.float32)
    return (alpha * batch_uint8.astype(np.float32) + (1.0 - alpha) * masks).round().astype(np.uint8)


def normalise(batch_uint8: np.ndarray) -> torch.Tensor:
    """[N, 3, H, W] uint8 -> float32 pixel_values."""
    x = batch_uint8.astype(np.float32) * np.float32(1.0 / 255.0)
    return torch.from_numpy((x - MEAN) / STD)


def pixel_values(images: list[bytes], size: int) -> torch.Tensor:
    return normalise(np.stack([resized_uint8(b, size) for b in images]))


def encode_texts(tok: Tokenizer, texts: list[str], first_id: int, max_len: int, prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[first_id] (prompt) text [SEP]`` ids and attention mask, truncated to
    ``max_len`` tokens (keeping the final [SEP])."""
    sep = tok.token_to_id("[SEP]")
    pad = tok.token_to_id("[PAD]")
    rows = []
    for t in texts:
        ids = tok.encode(prompt + t).ids
        if len(ids) > max_len:
            ids = ids[: max_len - 1] + [sep]
        ids[0] = first_id
        rows.append(ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def prompt_ids(tok: Tokenizer, dec_id: int, prompt: str = PROMPT) -> list[int]:
    """[DEC] + prompt tokens (no trailing [SEP]): what caption generation starts from."""
    ids = tok.encode(prompt).ids[:-1]
    ids[0] = dec_id
    return ids


def decode_caption(tok: Tokenizer, ids: list[int], prompt: str = PROMPT) -> str:
    """Generated ids (prompt included) -> caption text with the prompt stripped."""
    text = tok.decode(ids, skip_special_tokens=True).strip()
    p = prompt.strip()
    return text[len(p) :].strip() if text.startswith(p) else text
