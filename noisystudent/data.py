"""Datasets on disk and in memory.

On disk (written by the `prepare` stage), one folder:
  images.npy              uint8 [N, H, W] (grayscale) or [N, H, W, C], indexed by `id`
  labeled.parquet         id, label
  unlabeled.parquet       id                (what training may see)
  unlabeled_truth.parquet id, label         (hidden labels: only to score pseudo labels)
  val.parquet, test.parquet  id, label
  meta.json               num_classes, in_chans, image_size, class_names
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from .io import atomic_write_json, atomic_write_npy, atomic_write_parquet

SPLITS = ("labeled", "unlabeled", "val", "test")


def split_stratified(labels: np.ndarray, per_class: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """Seeded stratified split: `per_class[s]` images of every class to split s, the rest to
    'unlabeled'. Pure; returns sorted index arrays."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {s: [] for s in (*per_class, "unlabeled")}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        need = sum(per_class.values())
        if len(idx) <= need:
            raise ValueError(f"class {c} has {len(idx)} images, fewer than the {need} the splits need")
        start = 0
        for s, n in per_class.items():
            out[s].extend(idx[start : start + n])
            start += n
        out["unlabeled"].extend(idx[start:])
    return {s: np.sort(np.asarray(v, dtype=np.int64)) for s, v in out.items()}


def load_digits_images(image_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled 8x8 digits (no download), resized to image_size, as uint8."""
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    if image_size != raw.shape[1]:
        raw = np.stack([np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BILINEAR)) for im in raw])
    return raw, d.target.astype(np.int64), [str(c) for c in d.target_names]


def prepare(out_dir: Path, image_size: int, labeled_per_class: int, val_per_class: int, test_per_class: int, seed: int) -> dict:
    images, labels, class_names = load_digits_images(image_size)
    splits = split_stratified(
        labels, {"labeled": labeled_per_class, "val": val_per_class, "test": test_per_class}, seed
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_npy(out_dir / "images.npy", images)
    for s, idx in splits.items():
        frame = pd.DataFrame({"id": idx, "label": labels[idx]})
        if s == "unlabeled":
            atomic_write_parquet(out_dir / "unlabeled_truth.parquet", frame)
            frame = frame[["id"]]
        atomic_write_parquet(out_dir / f"{s}.parquet", frame)
    meta = {
        "dataset": "digits",
        "num_classes": len(class_names),
        "in_chans": 1 if images.ndim == 3 else images.shape[-1],
        "image_size": image_size,
        "class_names": class_names,
        "counts": {s: int(len(v)) for s, v in splits.items()},
    }
    atomic_write_json(out_dir / "meta.json", meta)
    return meta


@dataclass(frozen=True)
class Prepared:
    root: Path
    images: np.ndarray
    meta: dict

    @classmethod
    def load(cls, root: Path) -> "Prepared":
        root = Path(root)
        for f in ("meta.json", "images.npy"):
            if not (root / f).exists():
                raise FileNotFoundError(f"{root / f} is missing: run the prepare stage first")
        return cls(root, np.load(root / "images.npy", mmap_mode="r"), json.loads((root / "meta.json").read_text()))

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def in_chans(self) -> int:
        return int(self.meta["in_chans"])

    def split(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.root / f"{name}.parquet")


def one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """Probability-vector targets: the one loop trains on these for labels and pseudo labels."""
    t = np.full((len(labels), num_classes), smoothing / num_classes, dtype=np.float32)
    t[np.arange(len(labels)), labels] += 1.0 - smoothing
    return t


class ImageDataset(Dataset):
    """Images by id from an in-memory array, each with a probability-vector target."""

    def __init__(self, images: np.ndarray, ids: np.ndarray, targets: np.ndarray | None, transform):
        self.images, self.ids, self.targets, self.transform = images, np.asarray(ids), targets, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        img = Image.fromarray(np.asarray(self.images[self.ids[i]]))
        x = self.transform(img)
        y = torch.from_numpy(self.targets[i]) if self.targets is not None else torch.tensor(int(self.ids[i]))
        return x, y
