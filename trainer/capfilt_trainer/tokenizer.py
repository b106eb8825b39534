"""BERT-style WordPiece tokenizer (a Hugging Face ``tokenizer.json``, loadable by the Rust
``tokenizers`` crate) with BLIP's extra special tokens [DEC] (decoder start) and [ENC] (ITM)."""
from __future__ import annotations

from pathlib import Path
from collections import Counter
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from . import PROMPT, SPECIAL_TOKENS


def build(captions: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    """A lower-casing WordPiece tokenizer for ``captions`` (and the prompt): every character, as a
    word start and as a ``##`` continuation (so no word is ever unknown), then whole words by
    frequency (ties by spelling) up to ``vocab_size``. Deterministic: the same captions always
    give the same ``tokenizer.json`` (the tokenizers library's trainer breaks ties by hash order)."""
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in _with_prompt(captions):
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] += 1
    chars = sorted({ch for word in counts for ch in word})
    tokens = list(SPECIAL_TOKENS) + chars + ["##" + ch for ch in chars]
    known = set(tokens)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in known]
    tokens += words[: max(0, vocab_size - len(tokens))]
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(SPECIAL_TOKENS)
    finish(tok)
    return tok


def finish(tok: Tokenizer) -> None:
    """[CLS] text [SEP] post-processing, as BERT (BLIP swaps [CLS] for [DEC] / [ENC] itself)."""
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )


def _with_prompt(captions: Iterable[str]) -> Iterable[str]:
    yield PROMPT
    yield from captions


def special_ids(tok: Tokenizer) -> dict[str, int]:
    ids = {}
    for t in SPECIAL_TOKENS:
        i = tok.token_to_id(t)
        if i is None:
            raise ValueError(f"tokenizer has no {t} token: BLIP needs {', '.join(SPECIAL_TOKENS)}")
        ids[t] = i
    return ids


def load(path: str | Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    special_ids(tok)
    return tok
