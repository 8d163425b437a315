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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .images import load_image
from .io import InputError

if TYPE_CHECKING:  # annotations only: reading prepared data imports no torch (seconds per stage)
    import torch
    from torch.utils.data import DataLoader

    from .transforms import Preprocess


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
            raise InputError(f"{path}: {e} (the file changed after prepare: re-run `dvc repro`)") from None


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


def sample_seed(seed: int, stream: int, position: int) -> int:
    """The augmentation seed of the `position`-th image a stream draws (or of image id
    `position`): RandAugment's choices depend on (seed, stream, position) only, never on
    workers, prefetching or a resume."""
    return (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + position) % 2**64


class ImageDataset:  # a map-style dataset for torch's DataLoader (no torch import needed)
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
        pix = plans = None
        if self.transform.pil is None and isinstance(self.images, ArrayImages):
            pix = self.images.take(ids)  # no PIL op: straight from the array
        if self.transform.augment is not None:  # batched RandAugment: only the draws here
            plans = [self._draw(k) for k in keys]
        if pix is None:
            pix = np.stack([self._pixels(k) for k in keys])
        import torch

        y = torch.from_numpy(self.targets[pos]) if self.targets is not None else torch.from_numpy(ids.astype(np.int64))
        return self.transform.batch(pix, plans), y

    def _pixels(self, key) -> np.ndarray:
        i, seed = key if isinstance(key, tuple) else (key, None)
        if seed is not None and self.transform.augment is None:  # batched: `_draw` seeds and draws
            random.seed(seed)  # the only RNG RandAugment draws from (transforms.RandAugment)
        return self.transform.pixels(self.images[int(self.ids[i])])

    def _draw(self, key) -> list:
        if not isinstance(key, tuple):
            raise ValueError("RandAugment needs the training sampler's (position, seed) keys")
        random.seed(key[1])  # the resize draws nothing: these are the draws the PIL path makes
        return self.transform.draw()

    def __getitem__(self, key):
        x, y = self.__getitems__([key])
        return x[0], y[0]


def keep_batch(batch):
    """collate_fn for datasets whose `__getitems__` already returns a whole batch."""
    return batch


def loader(ds: ImageDataset, **kw) -> DataLoader:
    """A DataLoader reading `ds` a batch at a time through its `__getitems__`."""
    from torch.utils.data import DataLoader

    return DataLoader(ds, collate_fn=keep_batch, **kw)
