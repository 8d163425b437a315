"""Synthetic prepared folders for the benchmarks: random uint8 images in `images.npy`, laid
out as the `prepare` stage lays out real data, so the real loaders read them unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def synthetic_prepared(d: Path, n: int, size: int, chans: int, classes: int = 10, labeled_fraction: float = 0.1) -> None:
    """`n` random images; the first `labeled_fraction` labeled (random labels), all of them in
    the unlabeled pool."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    shape = (n, size, size) if chans == 1 else (n, size, size, chans)
    images = np.lib.format.open_memmap(d / "images.npy", "w+", np.uint8, shape)
    for i in range(0, n, 1024):  # in chunks: a 224 px pool is gigabytes
        images[i : i + 1024] = rng.integers(0, 256, (min(1024, n - i), *shape[1:]), dtype=np.uint8)
    images.flush()
    ids = np.arange(n, dtype=np.int64)
    k = max(classes, int(n * labeled_fraction))
    pd.DataFrame({"id": ids[:k], "label": rng.integers(0, classes, k)}).to_parquet(d / "labeled.parquet")
    pd.DataFrame({"id": ids}).to_parquet(d / "unlabeled.parquet")
    from noisystudent.io import file_sha256  # the content hash `prepare` records (labeling fingerprints it)

    (d / "meta.json").write_text(json.dumps({"dataset": "synthetic", "num_classes": classes, "in_chans": chans,
                                             "image_size": size, "storage": "array",
                                             "content_sha256": file_sha256(d / "images.npy")}))
