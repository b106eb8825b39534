"""Text augmentation for filter training: alt-text rewrites (positives) and attribute-swapped
captions (hard negatives).

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
# The attribute words of the synthetic benchmark, by kind: a swapped-attribute negative replaces
# one of them by another word of the same kind.
SHAPES = ["circle", "square", "triangle", "diamond", "star", "cross", "hexagon"]
COLOURS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "cyan"]
ATTRIBUTE_KINDS = (SHAPES, COLOURS)
ATTRIBUTE_WORDS = frozenset(SHAPES) | frozenset(COLOURS)
LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
PREFIXES = ["image of ", "photo of ", "picture of ", "illustration of "]
SUFFIXES = [" - stock illustration", " - stock photo", " | free download", " hd"]


def alt_text(text: str, rng: np.random.Generator) -> str:
    """One random alt-text rendering of ``text`` (a clean caption). Articles are dropped one by
    one, not all or none: web alt text often drops them in a list of things and keeps the one
    before the background ("red star and blue circle on a pink background - stock
    illustration"), a form that an all-or-none rewrite never writes and that a filter trained on
    it rejected two times in three (trainer README)."""
    out = text
    if rng.random() < 0.5:
        words = out.split(" ")
        drop = rng.random(len(words)) < 0.7
        out = " ".join(w for w, d in zip(words, drop) if not (d and w in ARTICLES))
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


def contentless(text: str, rng: np.random.Generator) -> str:
    """A text that states nothing about any image, as a negative for ``text``'s image: half the
    time ``text`` with every attribute word removed ("a on a background"; when it has none,
    made-up words instead, never ``text`` itself), half the time one to
    five made-up words of 3-9 letters, the way web alt text holds titles, file names and words
    outside the filter's small vocabulary (its tokenizer spells them letter by letter). A filter
    trained only on captions that all name colours and shapes never sees such a text, and a deep
    one can keep them (trainer README, "A deeper filter")."""
    stripped = " ".join(w for w in text.split(" ") if w.strip(",") not in ATTRIBUTE_WORDS)
    if rng.random() < 0.5 and stripped != text:  # a text without attribute words would be its own negative
        return stripped
    return " ".join("".join(rng.choice(LETTERS, int(rng.integers(3, 10)))) for _ in range(int(rng.integers(1, 6))))


def vocabulary_extra() -> list[str]:
    """Texts whose words a tokenizer for augmented training should know."""
    return PREFIXES + SUFFIXES


def swapped_attribute(text: str, rng: np.random.Generator, shape_share: float | None = None,
                      binding_share: float = 0.0) -> str | None:
    """``text`` with one attribute word (a shape or a colour) replaced by another of its kind,
    the article before it fixed ("a red" -> "an orange"): a caption that no longer matches its
    image but differs from the truth in one word, as BLIP's hardest web noise does (and as
    NegCLIP's swapped-attribute negatives). None when ``text`` has no attribute word.

    The word is drawn uniformly from the caption's attribute words, or, with ``shape_share``, a
    shape word with that probability (when the caption has both kinds): a one-shape caption has
    one shape word and two colour words, so a uniform draw swaps shapes only a third of the time.

    With ``binding_share``, when the caption has another word of the same kind (two shapes, or a
    shape's colour and the background's), the new word is that other word with this probability:
    "a red circle and a blue star" -> "a red star and a blue star". Every word of such a
    negative names something in the image, bound to the wrong object (ARO's attribute-binding
    negatives); a uniform draw makes one only a sixth of the time."""
    words = text.split(" ")
    slots = [(i, kind) for i, w in enumerate(words) for kind in ATTRIBUTE_KINDS if w in kind]
    if not slots:
        return None
    if shape_share is not None:
        shape_slots = [s for s in slots if s[1] is SHAPES]
        other_slots = [s for s in slots if s[1] is not SHAPES]
        if shape_slots and other_slots:
            slots = shape_slots if rng.random() < shape_share else other_slots
    i, kind = slots[rng.integers(len(slots))]
    others = [w for w in kind if w != words[i]]
    bound = sorted({w for w in words if w in kind and w != words[i]})
    if bound and binding_share > 0 and rng.random() < binding_share:
        others = bound
    words[i] = others[rng.integers(len(others))]
    if i > 0 and words[i - 1] in ("a", "an"):
        words[i - 1] = "an" if words[i][0] in "aeiou" else "a"
    return " ".join(words)
