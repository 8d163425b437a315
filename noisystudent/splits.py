"""The `prepare` stage's work: load a source, decode every file once and leave out the
unusable ones, split seeded and stratified, and write the prepared folder (its layout is in
data.py, which every later stage reads it with)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from .images import GRAY_MODES, scan
from .io import atomic_dir, atomic_path, atomic_write_csv, atomic_write_json, atomic_write_parquet, file_sha256
from .params import DataParams
from .sources import DataError, Source, Split, load_source


SPLITS = ("labeled", "unlabeled", "val", "test")


DIGITS_TEST_PER_CLASS = 40  # a source without a test split (digits) carves this many when data.test_per_class is null


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


def _files_digest(root: Path, paths: list[str]) -> str:
    """sha256 over every used file's path and bytes, in id order."""
    import hashlib

    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\0" + file_sha256(root / p).encode())
    return h.hexdigest()


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
    if src.test is None:  # digits: one pool, the test split carved from it
        carve["test"] = dp.test_per_class or DIGITS_TEST_PER_CLASS
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
        content = _files_digest(src.root, paths)
    else:
        _write_images(out_dir / "images.npy", [split.images for _, split in parts])
        content = file_sha256(out_dir / "images.npy")
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
        # what the pixels are: an image replaced under the same name changes this file, so DVC
        # re-runs every later stage and every fingerprint (resume, labels) sees it
        "content_sha256": content,
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
