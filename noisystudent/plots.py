"""Every picture the pipeline draws: pure functions from plain data (arrays, DataFrames) to a
PNG of a fixed size (FIGSIZE x DPI pixels, never cropped to content, so a report's layout
does not move between runs), written atomically. Stages call them and log the files to MLflow;
the CSVs beside them are what `dvc plots` draws."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

DPI = 100
# (width, height) in inches per picture; pixels = inches x DPI (tests check them)
SIZES = {
    "accuracy": (6.0, 4.0), "confusion": (4.5, 4.0), "confidence": (6.0, 3.5), "classes": (6.0, 3.5),
    "curves": (10.0, 3.5), "robustness": (10.0, 4.0), "ablation": (6.0, 4.0),
}


def pixel_size(kind: str) -> tuple[int, int]:
    w, h = SIZES[kind]
    return round(w * DPI), round(h * DPI)


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display: stages run headless
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, rect: tuple = (0, 0, 1, 1)) -> Path:
    from .io import atomic_path

    fig.tight_layout(rect=rect)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    _plt().close(fig)
    return Path(path)


def accuracy_per_iteration(table: pd.DataFrame, path: Path, references: list[tuple[str, float]] = ()) -> Path:
    """Test top-1 per model in chain order (`model`, `test_acc`; `mce` on a second axis when
    the column is there); each of `references` = (name, accuracy) drawn as a horizontal line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=SIZES["accuracy"])
    x = np.arange(len(table))
    ax.plot(x, 100 * table["test_acc"], marker="o", color="tab:blue", label="test top-1")
    for xi, acc in zip(x, table["test_acc"]):
        ax.annotate(f"{100 * acc:.1f}", (xi, 100 * acc), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    for (name, acc), style in zip(references, ("--", "-.", ":")):
        ax.axhline(100 * acc, color="gray", linestyle=style, label=f"{name} {100 * acc:.1f}")
    ax.set_xticks(x, table["model"])
    ax.set(ylabel="test top-1 (%)", title="Noisy Student: accuracy per iteration (teacher, then each student)")
    ax.title.set_fontsize(10)
    ax.margins(y=0.12)  # room for the value labels
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if "mce" in table and table["mce"].notna().any():
        ax2 = ax.twinx()
        ax2.plot(x, table["mce"], marker="s", color="tab:red", linestyle=":", label="mCE (teacher = 100)")
        ax2.set_ylabel("mCE (lower is better)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    # below the axes: lines rising and falling across the whole width leave no free corner
    ncol = 2 if len(labels) > 3 else len(labels)
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=ncol, frameon=False)
    return _save(fig, path, rect=(0, 0.03 * -(-len(labels) // ncol) + 0.03, 1, 1))


def accuracy_curve(t: pd.DataFrame, path: Path, xlabel: str, title: str, logx: bool = False) -> Path:
    """Test top-1 mean ± std over seeds (`x`, `mean`, `std`) against one varied quantity."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=SIZES["ablation"])
    t = t.sort_values("x")
    std = t["std"].fillna(0).astype(float)
    ax.errorbar(t["x"], 100 * t["mean"].astype(float), yerr=100 * std, marker="o", capsize=4)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=xlabel, ylabel="test top-1 (%), mean ± std over seeds", title=title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _effects_inches(n: int) -> tuple[float, float]:
    return 10.0, 1.3 + 0.38 * max(n, 1)


def effects_pixel_size(n: int) -> tuple[int, int]:
    w, h = _effects_inches(n)
    return round(w * DPI), round(h * DPI)


VERDICT_COLOURS = {"supported": "tab:green", "contradicted": "tab:red", "not distinguishable at this size": "tab:gray"}


def effects(found: pd.DataFrame, path: Path, title: str) -> Path:
    """A forest plot of findings (`label`, `effect_points`, `ci_low`, `ci_high`, `verdict`):
    each effect with its 95 % interval, coloured by verdict, against the line of no effect.
    Findings that cannot be judged are left out (the report lists them)."""
    plt = _plt()
    f = found[found["verdict"].isin(list(VERDICT_COLOURS))].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=_effects_inches(len(f)))
    y = np.arange(len(f))[::-1]
    for yi, r in zip(y, f.itertuples()):
        lo, hi = (r.ci_low, r.ci_high) if np.isfinite(r.ci_low) else (r.effect_points, r.effect_points)
        colour = VERDICT_COLOURS[r.verdict]
        ax.plot([lo, hi], [yi, yi], color=colour, lw=2)
        ax.plot([r.effect_points], [yi], "o", color=colour)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [str(v) for v in f["label"]], fontsize=8)
    ax.set(xlabel="effect (a - b), points of accuracy, with its 95 % interval", title=title, ylim=(-0.7, max(len(f), 1) - 0.3))
    ax.grid(axis="x", alpha=0.3)
    for verdict, colour in VERDICT_COLOURS.items():
        ax.plot([], [], "o-", color=colour, label=verdict)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def confusion(cm: np.ndarray, path: Path, title: str) -> Path:
    plt = _plt()
    k = len(cm)
    fig, ax = plt.subplots(figsize=SIZES["confusion"])
    ax.imshow(cm, cmap="Blues")
    if k <= 20:  # beyond that the numbers are unreadable anyway
        for (i, j), v in np.ndenumerate(cm):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7)
    ticks = range(k) if k <= 20 else []
    ax.set(xlabel="predicted", ylabel="actual", title=f"confusion: {title}", xticks=ticks, yticks=ticks)
    return _save(fig, path)


def confidence_histogram(counts: Sequence[int], edges: Sequence[float], threshold: float, path: Path, title: str) -> Path:
    """Pseudo labels per confidence bin (the teacher's max probability), threshold marked."""
    plt = _plt()
    edges = np.asarray(edges, dtype=float)
    fig, ax = plt.subplots(figsize=SIZES["confidence"])
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", edgecolor="white")
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    kept = int(np.sum(np.asarray(counts)[edges[:-1] >= threshold]))
    ax.set(xlabel="confidence (max soft-label probability)", ylabel="images", xlim=(edges[0], edges[-1]),
           title=f"{title}: pseudo-label confidence\n{kept} of {int(np.sum(counts))} at or above the threshold")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def class_counts(table: pd.DataFrame, path: Path, title: str) -> Path:
    """Per-class counts (`class` + one column per step: pseudo-labeled, above threshold,
    selected) as grouped bars: what balancing did to each class."""
    plt = _plt()
    cols = [c for c in table.columns if c != "class"]
    x = np.arange(len(table))
    w = 0.8 / len(cols)
    fig, ax = plt.subplots(figsize=SIZES["classes"])
    for i, c in enumerate(cols):
        ax.bar(x + (i - (len(cols) - 1) / 2) * w, table[c], width=w, label=c.replace("_", " "))
    ax.set_xticks(x, table["class"].astype(str), fontsize=8 if len(x) <= 20 else 5)
    ax.set(xlabel="class (pseudo label)", ylabel="images", title=f"{title}: per class, before and after balancing")
    ax.legend(fontsize=8)
    return _save(fig, path)


def training_curves(history: pd.DataFrame, path: Path, title: str, epoch_of: str = "labeled set") -> Path:
    """Loss (labeled, pseudo) and accuracy (train batch, validation) against epochs of
    `epoch_of` (the set that sets a model's budget)."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=SIZES["curves"])
    x = history["epoch"]
    a.plot(x, history["loss_labeled"], marker=".", label="labeled")
    if (history["loss_pseudo"] > 0).any():
        a.plot(x, history["loss_pseudo"], marker=".", label="pseudo-labeled")
    a.set(xlabel=f"epoch (of the {epoch_of})", ylabel="cross-entropy", title=f"{title}: loss")
    b.plot(x, 100 * history["train_acc"], marker=".", label="train batch (noised)")
    b.plot(x, 100 * history["val_acc"], marker=".", label="validation (EMA, un-noised)")
    b.set(xlabel=f"epoch (of the {epoch_of})", ylabel="top-1 (%)", title=f"{title}: accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def robustness(corruptions: pd.DataFrame, fgsm: pd.DataFrame, path: Path, title: str) -> Path:
    """Accuracy per corruption against severity; accuracy against FGSM epsilon."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=SIZES["robustness"])
    a.set_prop_cycle(color=plt.cm.tab20.colors)  # 15 corruptions: no colour twice
    for c, g in corruptions.groupby("corruption", sort=False):
        a.plot(g["severity"], 100 * g["accuracy"], marker=".", label=c)
    a.set(xlabel="severity", ylabel="test top-1 (%)", title=f"{title}: corruptions")
    a.legend(fontsize=6, ncol=2)
    b.plot(fgsm["epsilon"], 100 * fgsm["accuracy"], marker="o")
    b.set(xlabel="FGSM epsilon (0-255 scale)", ylabel="test top-1 (%)", title=f"{title}: FGSM")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def prediction_grid(images: np.ndarray, rows: pd.DataFrame, path: Path, title: str, columns: int = 6) -> Path:
    """The paper's Figure 1: unlabeled images with the teacher's and the student's prediction
    and confidence (`teacher`, `teacher_conf`, `student`, `student_conf`, and `truth` where
    the hidden label is known: green = right, red = wrong). `images`: uint8 [N, H, W, C]."""
    plt = _plt()
    nrows = _grid_rows(len(images), columns)
    fig, axes = plt.subplots(nrows, columns, figsize=_grid_inches(nrows, columns), squeeze=False)
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    for ax, img, (_, r) in zip(axes.flat, images, rows.iterrows()):
        # no ticks or frame, but the x label kept: layout then keeps each caption with its image
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                  interpolation="nearest")
        truth = r.get("truth")
        known = truth is not None and not pd.isna(truth) and int(truth) >= 0

        def colour(pred):
            return "black" if not known else ("tab:green" if int(pred) == int(truth) else "tab:red")

        ax.set_title(f"T: {r['teacher']} ({100 * r['teacher_conf']:.0f}%)", fontsize=8, color=colour(r["teacher"]), pad=2)
        ax.set_xlabel(f"S: {r['student']} ({100 * r['student_conf']:.0f}%)" + (f"  true {int(truth)}" if known else ""),
                      fontsize=8, color=colour(r["student"]), labelpad=2)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _grid_rows(n: int, columns: int) -> int:
    return max(1, -(-n // columns))


def _grid_inches(nrows: int, columns: int) -> tuple[float, float]:
    return 1.6 * columns, 1.9 * nrows + 0.4  # room for two caption lines per image


def grid_pixel_size(n: int, columns: int = 6) -> tuple[int, int]:
    w, h = _grid_inches(_grid_rows(n, columns), columns)
    return round(w * DPI), round(h * DPI)
