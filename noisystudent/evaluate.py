"""Metrics from predictions, and which predictions a figure shows: pure functions."""
from __future__ import annotations

import numpy as np
import pandas as pd


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: sum_b |B|/n * |acc(B) - conf(B)|."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling (Guo et al., 2017): the T in [0.05, 20] minimising the NLL of
    softmax(logits / T). Fit it on validation, apply it to test: it moves confidences, never a
    prediction, so a scaled ECE tells how much of a raw ECE one number would fix."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    if len(y) == 0:
        return 1.0
    nll = lambda log_t: -log_softmax(z / np.exp(log_t), axis=1)[np.arange(len(y)), y].mean()  # noqa: E731
    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-5}).x))


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int, ece_bins: int = 15) -> dict:
    from sklearn.metrics import confusion_matrix, top_k_accuracy_score

    probs = softmax(logits.astype(np.float64))
    preds = probs.argmax(1)
    classes = np.arange(num_classes)
    cm = confusion_matrix(labels, preds, labels=classes)
    support = cm.sum(1)
    per_class = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return {
        "top1": float((preds == labels).mean()),
        # top-5 of 5 classes or fewer is every class: 1 (sklearn would warn and say the same)
        "top5": 1.0 if num_classes <= 5 else float(top_k_accuracy_score(labels, probs, k=5, labels=classes)),
        "ece": expected_calibration_error(probs, labels, ece_bins),
        "nll": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()),
        "n": int(len(labels)),
        "per_class_acc": {str(c): (None if np.isnan(a) else float(a)) for c, a in enumerate(per_class)},
    }


def gallery_kinds(frame: pd.DataFrame) -> np.ndarray:
    """Per image predicted by a teacher and its student (`teacher`, `student`, `truth` = -1
    when unknown): corrected (the student fixes the teacher), regressed (it breaks a right
    label), disagree (truth unknown, or both wrong), agree."""
    known = frame["truth"] >= 0
    t_ok, s_ok = frame["teacher"] == frame["truth"], frame["student"] == frame["truth"]
    differ = frame["teacher"] != frame["student"]
    return np.select([known & ~t_ok & s_ok, known & t_ok & ~s_ok, differ], ["corrected", "regressed", "disagree"], "agree")


def gallery_rows(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """The images the paper's Figure 1 shows (`teacher_conf`, `student_conf` too): the
    student's corrections in up to two thirds of the places, then its regressions and other
    disagreements (a picture of successes only would flatter the method), then more
    corrections, each most confident student first; then agreements, least confident teacher
    first. At most n rows, with their `kind`."""
    kind = gallery_kinds(frame)
    out = frame.assign(kind=kind, _k=np.where(kind == "agree", frame["teacher_conf"], -frame["student_conf"]))
    out = out.sort_values(["_k", "id"], kind="stable")
    corrected = out[out["kind"] == "corrected"]
    first = corrected.head(n - n // 3)
    parts = [first, out[out["kind"].isin(["regressed", "disagree"])].sort_values(["kind", "_k", "id"], ascending=[False, True, True]),
             corrected.iloc[len(first):], out[out["kind"] == "agree"]]
    return pd.concat(parts).head(n).drop(columns="_k").reset_index(drop=True)
