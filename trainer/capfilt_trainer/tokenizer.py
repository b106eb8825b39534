"""BERT-style WordPiece tokenizer (a Hugging Face ``tokenizer.json``, loadable by the Rust
``tokenizers`` crate) with BLIP's extra special tokens [DEC] (decoder start) and [ENC] (ITM)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from . import PROMPT, SPECIAL_TOKENS


def build(captions: Iterable[str], vocab_size: int = 1000) -> Tokenizer:
    """Trains a lower-casing WordPiece tokenizer on ``captions`` (and the prompt)."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tok.train_from_iterator(_with_prompt(captions), trainer=trainer)
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
