"""Prepared datasets: written once by the `prepare` stage, read by every later stage.

On disk, one folder:
  images.npy              uint8 [N, H, W] or [N, H, W, C], indexed by `id`   (array sources)
  files.parquet           id, path (relative to data.root)                  (image folders)
  labeled.parquet         id, label
  unlabeled.parquet       id                (what training may see)
  unlabeled_truth.parquet id, label         (hidden labels, where known: only to score pseudo labels)
  val.parquet, test.parquet  id, label
  bad_files.csv           split, path, reason: files refused while preparing (image folders)
  meta.json               dataset, num_classes, in_chans, image_size, class_names, counts, ...

Ids are positions in the source's splits laid end to end (train, unlabeled, val, test), so
for digits they are the indices into scikit-learn's array.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .images import GRAY_MODES, load_image, scan
from .io import atomic_dir, atomic_path, atomic_write_csv, atomic_write_json, atomic_write_parquet
from .params import DataParams
from .sources import DataError, Source, Split, load_source
from .transforms import Preprocess

SPLITS = ("labeled", "unlabeled", "val", "test")


def split_stratified(labels: np.ndarray, per_class: dict[str, int | None], seed: int) -> dict[str, np.ndarray]:
    """Seeded stratified split: `per_class[s]` images of every class to split s, in order; a
    split given None takes whatever is left, else the rest goes to 'unlabeled'. Pure; returns
    sorted index arrays."""
    rng = np.random.default_rng(seed)
    fixed = {s: n for s, n in per_class.items() if n is not None}
    rest = next((s for s, n in per_class.items() if n is None), "unlabeled")
    out: dict[str, list[int]] = {s: [] for s in (*per_class, "unlabeled")}
    need = sum(fixed.values()) + (rest != "unlabeled")
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < need:
            raise DataError(f"class {c} has {len(idx)} images, fewer than the {need} the splits need {per_class}")
        start = 0
        for s, n in fixed.items():
            out[s].extend(idx[start : start + n])
            start += n
        out[rest].extend(idx[start:])
    return {s: np.sort(np.asarray(v, dtype=np.int64)) for s, v in out.items()}


def at_most_per_class(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A seeded, sorted subset holding at most n images of each class (all when n is None)."""
    if n is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:n] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def _drop_bad_files(src: Source, workers: int, max_pixels: int) -> tuple[list[tuple[str, str, str]], Counter, int]:
    """Decode every file once; remove unusable ones from the splits. Returns (bad rows,
    own modes of converted images, in_chans the labeled images suggest)."""
    bad, converted, gray = list(src.bad), Counter(), True
    for name in ("train", "unlabeled", "val", "test"):
        split: Split | None = getattr(src, name)
        if split is None:
            continue
        results = scan([src.root / p for p in split.paths], max_pixels, workers, desc=f"prepare: checking {name}/")
        ok = np.array([r == "" for r, _ in results], dtype=bool)
        bad += [(name, p, r) for p, (r, _) in zip(split.paths, results) if r]
        for _, mode in results:
            if mode and mode not in ("L", "RGB"):
                converted[mode] += 1
            if name != "unlabeled" and mode and mode not in GRAY_MODES:
                gray = False
        setattr(src, name, Split(split.labels[ok], paths=[p for p, k in zip(split.paths, ok) if k]))
    return bad, converted, 1 if gray else 3


def _check_usable(src: Source) -> None:
    present = np.unique(src.train.labels)
    if len(present) < 2:
        raise DataError(f"{src.root}/train: usable images in {len(present)} class(es) only: at least two are needed")
    missing = sorted(set(range(len(src.class_names))) - set(present.tolist()))
    if missing:
        raise DataError(f"{src.root}/train: no usable image in class(es) {[src.class_names[c] for c in missing]}")
    if src.unlabeled is not None and len(src.unlabeled) == 0:
        raise DataError(f"{src.root}/unlabeled: no usable image")


def _write_images(path: Path, parts: list[np.ndarray], chunk: int = 4096) -> None:
    """Concatenate uint8 arrays into one .npy, chunk by chunk (never two copies in memory)."""
    n = sum(len(a) for a in parts)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *parts[0].shape[1:]))
        i = 0
        for a in parts:
            for s in range(0, len(a), chunk):
                block = np.ascontiguousarray(a[s : s + chunk])
                out[i : i + len(block)] = block
                i += len(block)
        out.flush()
        del out


def prepare(out_dir: Path, dp: DataParams, workers: int = 0) -> dict:
    """Load the source named by `dp`, drop unusable files, split, and write the folder (as
    a whole: a killed prepare leaves the previous folder or none). `workers` decode in
    parallel; they never change what is written."""
    with atomic_dir(out_dir) as tmp:
        return _prepare(tmp, dp, workers)


def _prepare(out_dir: Path, dp: DataParams, workers: int) -> dict:
    src = load_source(dp.name, Path(dp.root), dp.download, dp.image_size)
    bad, converted, in_chans = [], Counter(), None
    if src.is_files:
        bad, converted, in_chans = _drop_bad_files(src, workers, dp.max_pixels)
        _check_usable(src)
    else:
        im = src.train.images
        in_chans = 1 if im.ndim == 3 else im.shape[-1]
    in_chans = dp.channels or in_chans

    # lay the source's splits end to end: ids are positions in that order
    parts = [(k, getattr(src, k)) for k in ("train", "unlabeled", "val", "test") if getattr(src, k) is not None]
    offsets, o = {}, 0
    for k, split in parts:
        offsets[k] = o
        o += len(split)
    carve: dict[str, int | None] = {"labeled": dp.labeled_per_class}
    if src.val is None:
        carve["val"] = dp.val_per_class
    if src.test is None:
        carve["test"] = dp.test_per_class
    tr = split_stratified(src.train.labels, carve, dp.seed)
    ids = {s: tr[s] for s in carve}
    pool = [tr["unlabeled"]]  # train images not carved out join the pool, their labels hidden
    if src.unlabeled is not None:
        pool.append(offsets["unlabeled"] + np.arange(len(src.unlabeled)))
    ids["unlabeled"] = np.concatenate(pool)
    if src.val is not None:
        ids["val"] = offsets["val"] + np.arange(len(src.val))
    if src.test is not None:
        ids["test"] = offsets["test"] + at_most_per_class(src.test.labels, dp.test_per_class, dp.seed)
    all_labels = np.concatenate([split.labels for _, split in parts])

    if src.is_files:
        paths = [p for _, split in parts for p in split.paths]
        atomic_write_parquet(out_dir / "files.parquet", pd.DataFrame({"id": np.arange(len(paths)), "path": paths}))
    else:
        _write_images(out_dir / "images.npy", [split.images for _, split in parts])
    for s in SPLITS:
        frame = pd.DataFrame({"id": ids[s], "label": all_labels[ids[s]]})
        if s == "unlabeled":
            atomic_write_parquet(out_dir / "unlabeled_truth.parquet", frame[frame["label"] >= 0])
            frame = frame[["id"]]
        atomic_write_parquet(out_dir / f"{s}.parquet", frame)
    atomic_write_csv(out_dir / "bad_files.csv", pd.DataFrame(bad, columns=["split", "path", "reason"]))
    meta = {
        "dataset": src.name,
        "storage": "files" if src.is_files else "array",
        "root": dp.root if src.is_files else None,
        "max_pixels": dp.max_pixels,  # later stages decode files under the same limit
        "num_classes": len(src.class_names),
        "in_chans": int(in_chans),
        "image_size": None if src.is_files else int(src.train.images.shape[1]),
        "class_names": src.class_names,
        "counts": {s: int(len(v)) for s, v in ids.items()},
        "unlabeled_with_truth": int((all_labels[ids["unlabeled"]] >= 0).sum()),
        "bad_files": len(bad),
        "bad_by_reason": dict(sorted(Counter(r.split(":")[0].split(" (")[0] for _, _, r in bad).items())),
        "converted_by_mode": dict(sorted(converted.items())),
    }
    atomic_write_json(out_dir / "meta.json", meta)
    return meta


class ArrayImages:
    """Images by id from images.npy, memory-mapped lazily in each process (a DataLoader
    worker opens its own map; pickling never copies the array)."""

    def __init__(self, path: Path, mode: str):
        self.path, self.mode, self._a = path, mode, None

    def __getstate__(self):
        return {"path": self.path, "mode": self.mode, "_a": None}

    @property
    def array(self) -> np.ndarray:
        if self._a is None:
            # a plain ndarray over the map: indexing a np.memmap subclass costs microseconds per image
            self._a = np.load(self.path, mmap_mode="r").view(np.ndarray)
        return self._a

    def __len__(self) -> int:
        return len(self.array)

    @property
    def stored_mode(self) -> str:
        """PIL mode of the stored pixels: [N, H, W] is L, [N, H, W, 3] RGB (prepare writes no other)."""
        return "L" if self.array.ndim == 3 else "RGB"

    def __getitem__(self, i: int) -> Image.Image:
        a, stored = np.ascontiguousarray(self.array[i]), self.stored_mode
        # frombuffer: half of fromarray's cost, which counts at ~40 us per training image
        im = Image.frombuffer(stored, (a.shape[1], a.shape[0]), a.tobytes(), "raw", stored, 0, 1)
        return im if im.mode == self.mode else im.convert(self.mode)

    def take(self, ids: np.ndarray) -> np.ndarray | None:
        """uint8 pixels of many ids in one read, or None when they are not stored in `mode`
        (e.g. grayscale data fed to an RGB model) and need PIL's conversion."""
        return np.asarray(self.array[np.asarray(ids)]) if self.stored_mode == self.mode else None


class FileImages:
    """Images by id from files under the data root, decoded safely on demand. Paths live in
    one Arrow array (no Python object per file)."""

    def __init__(self, root: Path, paths: pa.Array, mode: str, max_pixels: int):
        self.root, self.paths, self.mode, self.max_pixels = root, paths, mode, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Image.Image:
        path = self.root / self.paths[i].as_py()
        try:
            return load_image(path, self.mode, self.max_pixels)
        except Exception as e:  # it was usable at prepare time: the folder changed since
            raise DataError(f"{path}: {e} (the file changed after prepare: re-run `dvc repro`)") from None


@dataclass(frozen=True)
class Prepared:
    root: Path
    meta: dict
    images: ArrayImages | FileImages

    @classmethod
    def load(cls, root: Path) -> "Prepared":
        root = Path(root)
        if not (root / "meta.json").exists():
            raise FileNotFoundError(f"{root / 'meta.json'} is missing: run the prepare stage first")
        meta = json.loads((root / "meta.json").read_text())
        mode = "L" if meta["in_chans"] == 1 else "RGB"
        if meta.get("storage") == "files":
            paths = pq.read_table(root / "files.parquet", columns=["path"]).column("path").combine_chunks()
            images: ArrayImages | FileImages = FileImages(Path(meta["root"]), paths, mode, meta["max_pixels"])
        else:
            images = ArrayImages(root / "images.npy", mode)
        return cls(root, meta, images)

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def in_chans(self) -> int:
        return int(self.meta["in_chans"])

    @property
    def image_size(self) -> int | None:
        return self.meta.get("image_size")

    def split(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.root / f"{name}.parquet")


def one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """Probability-vector targets: the one loop trains on these for labels and pseudo labels."""
    t = np.full((len(labels), num_classes), smoothing / num_classes, dtype=np.float32)
    t[np.arange(len(labels)), labels] += 1.0 - smoothing
    return t


class ImageDataset(Dataset):
    """Images by id from a store (ArrayImages / FileImages), each with a probability-vector
    target, or with its id when there are no targets (labeling, evaluation).

    Read a batch at a time (`__getitems__`, which DataLoader calls with a batch's keys; use
    `loader()`): per-image PIL work only where there is some, then one tensor op for the
    batch. A key is a position, or (position, seed) from the training sampler: Python's RNG,
    which RandAugment draws from, is then seeded per image, so its choices never depend on
    which process or worker loads the image, nor on a resume."""

    def __init__(self, images, ids: np.ndarray, targets: np.ndarray | None, transform: Preprocess):
        self.images, self.ids, self.targets, self.transform = images, np.asarray(ids), targets, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitems__(self, keys: list) -> tuple[torch.Tensor, torch.Tensor]:
        pos = np.fromiter((k[0] if isinstance(k, tuple) else k for k in keys), dtype=np.int64, count=len(keys))
        ids = self.ids[pos]
        pix = None
        if self.transform.pil is None and isinstance(self.images, ArrayImages):
            pix = self.images.take(ids)  # no PIL op: straight from the array
        if pix is None:
            pix = np.stack([self._pixels(k) for k in keys])
        y = torch.from_numpy(self.targets[pos]) if self.targets is not None else torch.from_numpy(ids.astype(np.int64))
        return self.transform.batch(pix), y

    def _pixels(self, key) -> np.ndarray:
        i, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None:
            random.seed(seed)  # the only RNG RandAugment draws from (transforms.RandAugment)
        return self.transform.pixels(self.images[int(self.ids[i])])

    def __getitem__(self, key):
        x, y = self.__getitems__([key])
        return x[0], y[0]


def keep_batch(batch):
    """collate_fn for datasets whose `__getitems__` already returns a whole batch."""
    return batch


def loader(ds: Dataset, **kw) -> DataLoader:
    """A DataLoader reading `ds` a batch at a time through its `__getitems__`."""
    return DataLoader(ds, collate_fn=keep_batch, **kw)
