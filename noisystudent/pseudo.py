"""Pseudo labels and their selection: pure functions over arrays and DataFrames.

A pseudo-label row per unlabeled image: id, probs (softmax(logits / T)), label (argmax),
confidence (max prob). `shards.py` streams them to Parquet and selects out of core.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def soft_labels(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) in float32: the soft pseudo label (its argmax is the hard one)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def label_rows(logits: np.ndarray, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(softmax(logits / T), max softmax(logits)): the soft target at T, and the confidence the
    threshold and the balancing see, at T = 1 as in the official code (predict_label.py stores
    T = 1 probabilities, filter_unlabel.py filters on them; T shapes the training targets only)."""
    return soft_labels(logits, temperature), soft_labels(logits, 1.0).max(1)


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
    lo = int(np.ceil(round(min_threshold * 100, 6)))
    # The 1.00, 0.99, ... scan stops at the first t with count(conf >= t) >= per_class, i.e.
    # at the largest grid value not above the per_class-th largest confidence; found by a
    # partial sort (O(n)) rather than 100 passes, so it serves tens of millions of rows.
    if len(conf) >= per_class:
        kth = -np.partition(-conf, per_class - 1)[per_class - 1]
        t = max(lo, min(100, int(np.floor(kth * 100 + 1e-9))))
    else:
        t = lo
    kept_idx = np.flatnonzero(conf >= t / 100 - 1e-12)
    if len(kept_idx) == 0:
        return copies
    whole, rest = divmod(per_class, len(kept_idx))
    copies[kept_idx] = whole
    copies[rng.choice(kept_idx, size=rest, replace=False)] += 1
    return copies


def balance_copies(labels: np.ndarray, confidence: np.ndarray, per_class: int, num_classes: int, min_threshold: float, seed: int) -> np.ndarray:
    """Copies per row for all classes (rows already past the threshold); classes are visited
    in order 0..C-1 with one generator, so the result is a pure function of its inputs."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    copies = np.zeros(len(labels), dtype=np.int64)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    for c in range(num_classes):
        idx = order[bounds[c] : bounds[c + 1]]
        copies[idx] = copies_per_image(np.asarray(confidence)[idx], per_class, min_threshold, rng)
    return copies


def balance(frame: pd.DataFrame, per_class: int, num_classes: int, min_threshold: float, seed: int) -> pd.DataFrame:
    """Class-balanced selection as repeated rows (in memory; `shards.select_dataset` is the
    out-of-core version). Order: by class, then input order."""
    copies = balance_copies(frame["label"].to_numpy(), frame["confidence"].to_numpy(), per_class, num_classes, min_threshold, seed)
    out = frame.loc[frame.index.repeat(copies)]
    return out.iloc[np.argsort(out["label"].to_numpy(), kind="stable")].reset_index(drop=True)


def select(frame: pd.DataFrame, threshold: float, per_class: int, num_classes: int, seed: int) -> pd.DataFrame:
    return balance(filter_confident(frame, threshold), per_class, num_classes, threshold, seed)


def pseudo_label_accuracy(frame: pd.DataFrame, truth: pd.Series) -> float:
    """Share of (unique) pseudo labels equal to the hidden label, `truth` indexed by id."""
    if len(frame) == 0:
        return 0.0
    return float((frame["label"].to_numpy() == truth.loc[frame["id"]].to_numpy()).mean())


def targets(selected: pd.DataFrame, num_classes: int, mode: str, smoothing: float) -> np.ndarray:
    """A student's training targets for its selected rows: the soft labels as they are, or
    one-hot hard labels with the same label smoothing as labeled images (official code)."""
    if mode == "soft":
        return np.stack(selected["probs"].to_numpy()).astype(np.float32)
    from .data import one_hot

    return one_hot(selected["label"].to_numpy(), num_classes, smoothing)
