"""Where images come from: one loader per `data.name`, each returning the same `Source`.

A source has a `train` split (labeled; `prepare` carves labeled / val / test from it), an
optional `unlabeled` pool, and optional `val` and `test` splits. Images are either an array
(embedded digits, torchvision sets: decoded once, kept memory-mapped) or files under
`data.root` (image folders: decoded on demand by DataLoader workers). Labels of -1 mean
unknown (STL-10's unlabeled split, image folders' unlabeled pool).

Nothing is downloaded unless `data.download: true`: torchvision's classes get
`download=data.download` and otherwise read the files already under `data.root`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .io import InputError


@dataclass
class Split:
    """Images of one split: `images` uint8 [N, H, W(, C)] or `paths` relative to the root."""
    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Source:
    name: str
    class_names: list[str]
    train: Split
    unlabeled: Split | None = None
    val: Split | None = None
    test: Split | None = None
    root: Path | None = None  # for file sources: what `paths` are relative to
    bad: list[tuple[str, str, str]] = field(default_factory=list)  # (split, path, reason) found while listing

    @property
    def is_files(self) -> bool:
        return self.train.paths is not None


class DataError(InputError):
    """A data problem, phrased as one line naming the folder or file."""


def load_source(name: str, root: Path, download: bool, image_size: int | None = None) -> Source:
    if name == "digits":
        return digits(image_size or 16)
    if name == "imagefolder":
        return imagefolder(Path(root))
    return torchvision_set(name, Path(root), download)


def digits(image_size: int) -> Source:
    """scikit-learn's bundled 8x8 digits (no download), resized to image_size."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    if image_size != raw.shape[1]:
        raw = np.stack([np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BILINEAR)) for im in raw])
    return Source("digits", [str(c) for c in d.target_names], Split(d.target.astype(np.int64), images=raw))


_TV_LAYOUT = {
    "cifar10": "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}",
    "svhn": "{train,test,extra}_32x32.mat",
    "stl10": "stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt",
}


def torchvision_set(name: str, root: Path, download: bool) -> Source:
    """CIFAR-10 / SVHN / STL-10 through torchvision's own classes (their file formats and
    integrity checks), as uint8 NHWC arrays."""
    import torchvision.datasets as tvd

    def make(cls, **kw):
        try:
            return cls(str(root), download=download, **kw)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted..."
            hint = "" if download else "; set data.download: true to download it"
            raise DataError(f"data.root={root}: no usable {name} there (expected {_TV_LAYOUT[name]}): {e}{hint}") from None

    def nchw(ds, attr="labels") -> Split:
        return Split(np.asarray(getattr(ds, attr), dtype=np.int64), images=np.transpose(ds.data, (0, 2, 3, 1)))

    if name == "cifar10":
        tr, te = make(tvd.CIFAR10, train=True), make(tvd.CIFAR10, train=False)
        return Source(name, list(tr.classes),
                      Split(np.asarray(tr.targets, dtype=np.int64), images=tr.data),
                      test=Split(np.asarray(te.targets, dtype=np.int64), images=te.data))
    if name == "svhn":
        # the paper's SVHN setting: `extra` (531k) is the unlabeled pool; its labels stay hidden
        tr, ex, te = (make(tvd.SVHN, split=s) for s in ("train", "extra", "test"))
        return Source(name, [str(i) for i in range(10)], nchw(tr), unlabeled=nchw(ex), test=nchw(te))
    if name == "stl10":
        # the unlabeled split (100k) includes classes outside the 10 labeled ones: labels -1
        tr, un, te = (make(tvd.STL10, split=s) for s in ("train", "unlabeled", "test"))
        return Source(name, list(tr.classes), nchw(tr), unlabeled=nchw(un), test=nchw(te))
    raise DataError(f"data.name: unknown dataset {name!r}")


def shown(path: str) -> str:
    """A file name as it can be written anywhere (CSV, Parquet, a terminal): bytes that are
    not UTF-8 appear as \\xNN escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _files_under(folder: Path, root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every image file under `folder`, and the entries refused before any decoding, each
    with its reason: a link resolving outside data.root (it would pull files from elsewhere
    into the dataset), a broken link, a linked folder (not followed: it could copy images
    from one split into another), a name that is not UTF-8 (it could not be recorded)."""
    real_root, files, refused = root.resolve(), [], []
    for p in sorted(folder.rglob("*")):
        if p.is_symlink() and not p.exists():
            refused.append((p, "broken symbolic link"))
        elif p.is_symlink() and p.is_dir():
            refused.append((p, "linked folder, not followed"))
        elif not p.is_file():
            continue
        elif not p.resolve().is_relative_to(real_root):
            refused.append((p, f"links outside data.root (to {shown(str(p.resolve()))})"))
        elif shown(p.name) != p.name:
            refused.append((p, "file name is not valid UTF-8"))
        else:
            files.append(p)
    return files, refused


def _class_folder(root: Path, split: str, classes: list[str] | None) -> tuple[Split, list[str], list[tuple[str, str, str]]]:
    """`root/split/<class>/**/*` -> (paths, labels); files outside a class folder are bad."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"data.root={root}: {split}/ not found (expected {split}/<class>/<image files>)")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    bad = [(split, shown(str(p.relative_to(root))), "not inside a class folder") for p in sorted(folder.iterdir()) if p.is_file()]
    if odd := [shown(d) for d in found if shown(d) != d]:
        raise DataError(f"data.root={root}: {split}/ has class folder names that are not UTF-8: {odd} (rename them)")
    if classes is None:
        classes = found
        if not classes:
            raise DataError(f"data.root={root}: {split}/ holds no class folders (expected {split}/<class>/<image files>)")
        if len(classes) == 1:
            raise DataError(f"data.root={root}: {split}/ has one class ({classes[0]!r}): at least two are needed")
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"data.root={root}: {split}/ has classes not in train/: {unknown}")
    paths, labels = [], []
    for c, name in enumerate(classes):
        files, refused = _files_under(folder / name, root) if (folder / name).is_dir() else ([], [])
        bad += [(split, shown(str(p.relative_to(root))), why) for p, why in refused]
        for p in files:
            paths.append(str(p.relative_to(root)))
            labels.append(c)
    if not paths:
        raise DataError(f"data.root={root}: {split}/ holds no image files")
    return Split(np.asarray(labels, dtype=np.int64), paths=paths), classes, bad


def imagefolder(root: Path) -> Source:
    """The user's own images: train/<class>/*, test/<class>/*, optional val/<class>/*, and
    unlabeled/**/* (any nesting, no classes; may hold images of no known class)."""
    if not root.is_dir():
        raise DataError(f"data.root={root}: folder not found")
    train, classes, bad = _class_folder(root, "train", None)
    test, _, b = _class_folder(root, "test", classes)
    bad += b
    val = None
    if (root / "val").is_dir():
        val, _, b = _class_folder(root, "val", classes)
        bad += b
    if not (root / "unlabeled").is_dir():
        raise DataError(f"data.root={root}: unlabeled/ not found (the pool the teacher labels: unlabeled/**/<image files>)")
    files, refused = _files_under(root / "unlabeled", root)
    bad += [("unlabeled", shown(str(p.relative_to(root))), why) for p, why in refused]
    pool = [str(p.relative_to(root)) for p in files]
    if not pool:
        raise DataError(f"data.root={root}: unlabeled/ holds no files")
    unlabeled = Split(np.full(len(pool), -1, dtype=np.int64), paths=pool)
    return Source("imagefolder", classes, train, unlabeled=unlabeled, val=val, test=test, root=root, bad=bad)
