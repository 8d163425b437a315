"""Pseudo labels and their selection: pure functions over arrays and DataFrames.

A pseudo-label frame has one row per unlabeled image:
  id (int), probs (list[float], softmax(logits / T)), label (argmax), confidence (max prob).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def pseudo_label_frame(ids: np.ndarray, logits: np.ndarray, temperature: float = 1.0) -> pd.DataFrame:
    z = logits.astype(np.float64) / temperature
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    p = p.astype(np.float32)
    return pd.DataFrame(
        {"id": np.asarray(ids, dtype=np.int64), "probs": list(p), "label": p.argmax(1).astype(np.int64), "confidence": p.max(1)}
    )


def filter_confident(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    return frame[frame["confidence"] >= threshold]


def copies_per_image(confidence: np.ndarray, per_class: int, min_threshold: float, rng: np.random.Generator) -> np.ndarray:
    """The official balancing for ONE class (filter_unlabel.py in google-research/noisystudent).

    Thresholds are scanned from 1.00 down to `min_threshold` in steps of 0.01 until at least
    `per_class` images lie at or above the threshold; each such image then gets
    per_class / kept copies: the integer part, plus one more with probability equal to the
    fractional part. An over-full class is thus randomly down-sampled among its most
    confident images, an under-full one duplicated. Returns copies per input image.

    One change: the official code draws the extra copy independently per image, so a class
    holds per_class images only on average (an over-full class can even end up empty). Here
    exactly round(frac * kept) images, chosen uniformly without replacement, get the extra
    copy: every image keeps the official probability of an extra copy, and every class holds
    exactly `per_class` images.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    copies = np.zeros(len(conf), dtype=np.int64)
    if len(conf) == 0:
        return copies
    # integer hundredths avoid float drift in the 1.00, 0.99, ... scan
    lo = int(np.ceil(round(min_threshold * 100, 6)))
    for t in range(100, lo - 1, -1):
        keep = conf >= t / 100 - 1e-12
        if keep.sum() >= per_class:
            break
    kept_idx = np.flatnonzero(keep)
    if len(kept_idx) == 0:
        return copies
    whole, rest = divmod(per_class, len(kept_idx))
    copies[kept_idx] = whole
    copies[rng.choice(kept_idx, size=rest, replace=False)] += 1
    return copies


def balance(frame: pd.DataFrame, per_class: int, num_classes: int, min_threshold: float, seed: int) -> pd.DataFrame:
    """Class-balanced selection; rows repeat when an image is duplicated. Order: by class, then
    by the input order, so the result is a pure function of (frame, params, seed)."""
    rng = np.random.default_rng(seed)
    parts = []
    for c in range(num_classes):
        rows = frame[frame["label"] == c]
        n = copies_per_image(rows["confidence"].to_numpy(), per_class, min_threshold, rng)
        parts.append(rows.loc[rows.index.repeat(n)])
    out = pd.concat(parts, ignore_index=True) if parts else frame.iloc[:0]
    return out


def select(frame: pd.DataFrame, threshold: float, per_class: int, num_classes: int, seed: int) -> pd.DataFrame:
    return balance(filter_confident(frame, threshold), per_class, num_classes, threshold, seed)


def selection_stats(
    labeled: pd.DataFrame, kept: int, selected: pd.DataFrame, num_classes: int, truth: pd.DataFrame | None
) -> dict:
    """Figures for metrics/<iteration>/select.json."""
    per_class = selected["label"].value_counts().reindex(range(num_classes), fill_value=0)
    unique = selected.drop_duplicates("id")
    stats = {
        "pseudo_labeled": int(len(labeled)),
        "kept_after_threshold": int(kept),
        "selected": int(len(selected)),
        "unique": int(len(unique)),
        "per_class": {str(c): int(n) for c, n in per_class.items()},
        "mean_confidence": float(labeled["confidence"].mean()) if len(labeled) else 0.0,
    }
    if truth is not None:
        t = truth.set_index("id")["label"]
        stats["pseudo_label_acc_all"] = float((labeled["label"].to_numpy() == t.loc[labeled["id"]].to_numpy()).mean())
        stats["pseudo_label_acc_selected"] = (
            float((unique["label"].to_numpy() == t.loc[unique["id"]].to_numpy()).mean()) if len(unique) else 0.0
        )
    return stats
