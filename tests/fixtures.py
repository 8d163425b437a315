"""Tiny datasets made by the tests, in each source's real on-disk format.

torchvision checks its files' MD5 sums against the published archives; our stand-ins cannot
match them, so `trust_torchvision_files` turns those checks off (only in the test process).
Everything else (file layout, parsing, label conventions) is torchvision's own code.
"""
from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def trust_torchvision_files(monkeypatch) -> None:
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.stl10 as stl10
    import torchvision.datasets.svhn as svhn

    for cls in (tvd.CIFAR10, tvd.SVHN, tvd.STL10):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    for mod in (cifar, stl10, svhn):
        monkeypatch.setattr(mod, "check_integrity", lambda *a, **k: True)


def class_images(labels: np.ndarray, size: int, seed: int, channels: int = 3) -> np.ndarray:
    """uint8 [N, size, size, C]: each class its own mean colour plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    base = (np.arange(10)[:, None] * np.array([25, 80, 140])[None, :channels]) % 256
    x = base[labels][:, None, None, :] + rng.integers(-20, 21, (len(labels), size, size, channels))
    return np.clip(x, 0, 255).astype(np.uint8)


def make_cifar10(root: Path, per_class_train: int = 6, per_class_test: int = 3) -> dict:
    """cifar-10-batches-py/: 5 pickled train batches, a test batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    ytr = np.tile(np.arange(10), per_class_train)
    yte = np.tile(np.arange(10), per_class_test)
    xtr, xte = class_images(ytr, 32, 0), class_images(yte, 32, 1)
    flat = lambda x: x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # noqa: E731  (CIFAR stores CHW rows)
    for i, part in enumerate(np.array_split(np.arange(len(ytr)), 5)):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": flat(xtr[part]), "labels": ytr[part].tolist()}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": flat(xte), "labels": yte.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return {"train": (xtr, ytr), "test": (xte, yte)}


def make_svhn(root: Path, per_class: dict[str, int] = {"train": 5, "test": 2, "extra": 8}) -> dict:
    """{train,test,extra}_32x32.mat: X [32, 32, 3, N], y [N, 1] with 10 standing for digit 0."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (split, n) in enumerate(per_class.items()):
        y = np.tile(np.arange(10), n)
        x = class_images(y, 32, 10 + i)
        savemat(root / f"{split}_32x32.mat", {"X": x.transpose(1, 2, 3, 0), "y": np.where(y == 0, 10, y)[:, None].astype(np.uint8)})
        out[split] = (x, y)
    return out


def make_stl10(root: Path, per_class_train: int = 3, per_class_test: int = 2, n_unlabeled: int = 25) -> dict:
    """stl10_binary/: {train,test}_{X,y}.bin (X column-major 3x96x96, y 1-based), unlabeled_X.bin."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    out = {}
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        y = np.tile(np.arange(10), n)
        x = class_images(y, 96, 20 + n)
        x.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")
        (y + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
        out[split] = (x, y)
    xu = class_images(np.random.default_rng(3).integers(0, 10, n_unlabeled), 96, 30)
    xu.transpose(0, 3, 2, 1).tofile(folder / "unlabeled_X.bin")
    (folder / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)) + "\n")
    out["unlabeled"] = (xu, None)
    return out


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims width x height (a decompression bomb's header)."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


# what each bad file kind in the unlabeled pool of `make_imagefolder` must get in the report
BAD_KINDS = {
    "unlabeled/junk/empty.jpg": "empty file",
    "unlabeled/junk/notes.jpg": "not an image",
    "unlabeled/junk/cut.jpg": "truncated or corrupt",
    "unlabeled/junk/deep/bomb.png": "too large to decode safely",
}
# usable after conversion: file -> its own mode
CONVERTIBLE = {"unlabeled/odd/cmyk.jpg": "CMYK", "unlabeled/odd/rgba.png": "RGBA", "unlabeled/odd/deep16.png": "I;16",
               "unlabeled/odd/palette.png": "P", "unlabeled/odd/gray_alpha.png": "LA"}


def make_imagefolder(root: Path, classes=("cat", "dog", "owl"), train: int = 8, test: int = 4, unlabeled: int = 30,
                     size: int = 12, gray: bool = False, bad: bool = True) -> Path:
    """train/<class>/, test/<class>/, unlabeled/ nested three levels deep (class-free names),
    with every bad-file kind and every convertible mode in the pool."""
    ch = 1 if gray else 3
    mode = "L" if gray else "RGB"
    rng = np.random.default_rng(0)

    def save(path: Path, arr: np.ndarray, fmt: str = "PNG") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr[..., 0] if gray else arr, mode).save(path, fmt)

    for split, n in (("train", train), ("test", test)):
        y = np.tile(np.arange(len(classes)), n)
        for i, (x, c) in enumerate(zip(class_images(y, size, len(split), ch), y)):
            save(root / split / classes[c] / f"{i:03d}.png", x)
    y = rng.integers(0, len(classes), unlabeled)
    for i, x in enumerate(class_images(y, size, 7, ch)):
        save(root / "unlabeled" / f"batch{i % 3}" / f"sub{i % 2}" / f"img{i:04d}.jpg", x, "JPEG")
    if bad:
        for rel in BAD_KINDS:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "unlabeled/junk/empty.jpg").write_bytes(b"")
        (root / "unlabeled/junk/notes.jpg").write_text("not an image\n" * 20)
        full = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, "JPEG")
        (root / "unlabeled/junk/cut.jpg").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
        (root / "unlabeled/junk/deep/bomb.png").write_bytes(bomb_png(9_000, 8_000))  # only data.max_pixels refuses it
        (root / "unlabeled/odd").mkdir(parents=True)
        Image.new("CMYK", (size, size), (10, 200, 30, 0)).save(root / CONVERTIBLE_PATH("cmyk"), "JPEG")
        Image.new("RGBA", (size, size), (200, 10, 10, 128)).save(root / CONVERTIBLE_PATH("rgba"))
        Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16)).save(root / CONVERTIBLE_PATH("deep16"))
        Image.new("RGB", (size, size), (0, 90, 200)).convert("P").save(root / CONVERTIBLE_PATH("palette"))
        Image.new("LA", (size, size), (100, 255)).save(root / CONVERTIBLE_PATH("gray_alpha"))
    return root


def CONVERTIBLE_PATH(stem: str) -> str:  # noqa: N802
    return next(p for p in CONVERTIBLE if Path(p).stem == stem)
