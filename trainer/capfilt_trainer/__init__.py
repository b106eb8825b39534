"""capfilt's trainer: builds BLIP captioner and filter models with HF transformers' own BLIP
classes, trains them on img2dataset-style Parquet (the synthetic benchmark's seed split, plus a
round's cleaned output), exports them as ONNX bundles for capfilt's Rust workers, and evaluates
them on a held-out split."""

__version__ = "0.1.0"

PROMPT = "a picture of "
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
