"""Score metrics with numpy only (no torch): ROC-AUC and the best recall a threshold gives at a
precision target. ``scripts/round_quality.py`` uses them on a round's scored texts."""
from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted half."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def best_recall_at_precision(probs: np.ndarray, labels: np.ndarray, min_precision: float) -> dict[str, float]:
    """The lowest threshold whose kept texts are at least ``min_precision`` precise, and the
    recall there: the best a threshold alone can do for that precision (NaN threshold and recall
    0 when no threshold reaches it)."""
    order = np.argsort(-probs, kind="stable")
    p, y = probs[order], labels[order].astype(np.int64)
    tp, kept = np.cumsum(y), np.arange(1, len(y) + 1)
    # A threshold keeps every text with a probability at least as high: cut after ties only.
    cut = np.append(p[1:] != p[:-1], True)
    ok = cut & (tp / kept >= min_precision)
    if not ok.any():
        return {"threshold": float("nan"), "precision": 0.0, "recall": 0.0}
    i = int(np.flatnonzero(ok)[-1])
    return {"threshold": float(p[i]), "precision": float(tp[i] / kept[i]), "recall": float(tp[i] / max(int(y.sum()), 1))}
