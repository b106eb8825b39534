"""Alt-text augmentation for filter training.

A filter trained only on clean, human-style captions ("a red circle on a blue background")
judges by style: web alt-text that says the same thing in another form ("red circle, blue
background", "image of ...", "... - stock photo") looks foreign to it, so it scores style rather
than content. BLIP's filter avoids this by pre-training on web text; a seed filter trained from
scratch gets the same robustness from rewriting some of its clean training captions into common
alt-text forms. The meaning never changes, so a rewritten caption stays a positive for its image
(and for ITC, a positive of every caption with the same original text)."""
from __future__ import annotations

import numpy as np

ARTICLES = {"a", "an", "the"}
PREFIXES = ["image of ", "photo of ", "picture of ", "illustration of "]
SUFFIXES = [" - stock illustration", " - stock photo", " | free download", " hd"]


def alt_text(text: str, rng: np.random.Generator) -> str:
    """One random alt-text rendering of ``text`` (a clean caption)."""
    out = text
    if rng.random() < 0.5:
        out = " ".join(w for w in out.split(" ") if w not in ARTICLES)
    if rng.random() < 0.3:
        out = out.replace(" and ", ", ").replace(" on ", ", ")
    if rng.random() < 0.2:
        out = PREFIXES[rng.integers(len(PREFIXES))] + out
    if rng.random() < 0.2:
        out = out + SUFFIXES[rng.integers(len(SUFFIXES))]
    return out


def augment(texts: list[str], share: float, rng: np.random.Generator) -> list[str]:
    """Rewrites each text with probability ``share``."""
    if share <= 0:
        return texts
    return [alt_text(t, rng) if rng.random() < share else t for t in texts]


def vocabulary_extra() -> list[str]:
    """Texts whose words a tokenizer for augmented training should know."""
    return PREFIXES + SUFFIXES
