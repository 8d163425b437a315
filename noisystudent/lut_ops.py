"""The RandAugment ops whose PIL implementation loops in Python (AutoContrast, Equalize, Invert,
Posterize, Solarize, SolarizeAdd, Contrast), for the per-image PIL path: the same pixels as
timm's ops, which call PIL's ImageOps / ImageEnhance, in a fraction of their time on small
images.

Why: on a 16x16 or 32x32 image PIL's C work is a microsecond or two, but `Image.point` first
rounds its table in a Python loop (256 values per band), `ImageOps.autocontrast`/`equalize`
build their tables from the histogram in Python and `ImageEnhance.Contrast` takes the mean
from a Python loop over it: these seven ops cost 20-40 us per image where the others cost
5-10, and RandAugment is what keeps the training loop under its bare ceiling on a CPU
(benchmarks/train_speed.py). Here the tables of the fixed-magnitude ops are built once per
argument, autocontrast's once per (lowest, highest) level, and every table is applied in
NumPy, with PIL's arithmetic; tests/test_randaugment.py compares each op with timm's, pixel
for pixel (tolerance 0).

Only small images take this path (at most 64x64 pixels: on larger ones the copies in and out of
NumPy cost more than PIL's Python loops, and PIL's C loops win, benchmarks/augment_speed.py),
in modes L and RGB (what `prepare` writes); anything else gets timm's op.
Each function takes timm's arguments (`AugmentOp` calls `aug_fn(img, *args, **kwargs)`).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from timm.data import auto_augment as timm_ops

_BANDS = {"L": 1, "RGB": 3}
_MAX_PIXELS = 64 * 64


def _fast(img: Image.Image) -> bool:
    return img.mode in _BANDS and img.width * img.height <= _MAX_PIXELS


def _pixels(img: Image.Image) -> np.ndarray:
    """The image's bytes as a flat uint8 array: band-interleaved for RGB (r, g, b, r, ...)."""
    # frombuffer(tobytes()): cheaper than np.asarray on small images (no array-interface dict)
    return np.frombuffer(img.tobytes(), np.uint8)


@lru_cache(maxsize=64)
def _band_offsets(n: int, bands: int) -> np.ndarray:
    """Where each interleaved byte's band table starts in a flattened [bands, 256] table."""
    return np.tile(np.arange(bands) * 256, n // bands)


def _apply(img: Image.Image, lut: np.ndarray) -> Image.Image:
    """uint8 tables, [256] for every band or [bands, 256], applied as Image.point applies them."""
    a = _pixels(img)
    out = lut.take(a) if lut.ndim == 1 else lut.ravel().take(a + _band_offsets(a.size, lut.shape[0]))
    # frombuffer: the image wraps `out` (no copy for L; PIL copies RGB)
    return Image.frombuffer(img.mode, img.size, out, "raw", img.mode, 0, 1)


_IDENTITY = np.arange(256, dtype=np.uint8)


def _table(values) -> np.ndarray:
    # Image.point rounds every entry (round half to even) before using it
    return np.array([round(v) for v in values], dtype=np.uint8)


@lru_cache(maxsize=None)
def _invert() -> np.ndarray:
    return _table(range(255, -1, -1))


@lru_cache(maxsize=None)
def _posterize(bits: int) -> np.ndarray:
    mask = ~(2 ** (8 - bits) - 1)
    return _table(i & mask for i in range(256))


@lru_cache(maxsize=None)
def _solarize(thresh) -> np.ndarray:
    return _table(i if i < thresh else 255 - i for i in range(256))


@lru_cache(maxsize=None)
def _solarize_add(add, thresh) -> np.ndarray:
    return _table(min(255, i + add) if i < thresh else i for i in range(256))


@lru_cache(maxsize=65536)
def _stretch(lo: int, hi: int) -> np.ndarray:
    """ImageOps.autocontrast's table for a band spanning lo..hi: int(ix * scale + offset),
    clamped, in Python's doubles (as PIL computes it)."""
    if hi <= lo:
        return _IDENTITY
    scale = 255.0 / (hi - lo)
    offset = -lo * scale
    return np.array([min(255, max(0, int(ix * scale + offset))) for ix in range(256)], dtype=np.uint8)


def invert(img, **kw):
    return _apply(img, _invert()) if _fast(img) else timm_ops.invert(img, **kw)


def posterize(img, bits_to_keep, **kw):
    if not _fast(img) or bits_to_keep >= 8:  # timm: >= 8 bits returns the image itself
        return timm_ops.posterize(img, bits_to_keep, **kw)
    return _apply(img, _posterize(bits_to_keep))


def solarize(img, thresh, **kw):
    return _apply(img, _solarize(thresh)) if _fast(img) else timm_ops.solarize(img, thresh, **kw)


def solarize_add(img, add, thresh=128, **kw):
    if not _fast(img):
        return timm_ops.solarize_add(img, add, thresh, **kw)
    return _apply(img, _solarize_add(add, thresh))


def auto_contrast(img, **kw):
    """ImageOps.autocontrast(cutoff=0): each band's lowest..highest level stretched to 0..255
    (a band of one level left as it is)."""
    if not _fast(img):
        return timm_ops.auto_contrast(img, **kw)
    ext = img.getextrema()  # (lo, hi) for L, one pair per band for RGB
    if img.mode == "L":
        return _apply(img, _stretch(*ext))
    return _apply(img, np.stack([_stretch(lo, hi) for lo, hi in ext]))


def equalize(img, **kw):
    """ImageOps.equalize: per band, step = (pixels - the count of the highest used level) // 255
    and lut[i] = (step // 2 + pixels below level i) // step; identity for a band with one
    level or a zero step."""
    if not _fast(img):
        return timm_ops.equalize(img, **kw)
    a = _pixels(img)
    bands = _BANDS[img.mode]
    luts = []
    for c in range(bands):
        h = np.bincount(a[c::bands], minlength=256)
        used = np.flatnonzero(h)
        step = (a.size // bands - int(h[used[-1]])) // 255 if len(used) > 1 else 0
        luts.append(np.minimum((step // 2 + np.cumsum(h) - h) // step, 255) if step else _IDENTITY)
    lut = luts[0] if len(luts) == 1 else np.stack(luts)
    return _apply(img, lut.astype(np.uint8))


def contrast(img, factor, **kw):
    """ImageEnhance.Contrast: a blend with a flat grey image at the mean of the L image,
    int(mean + 0.5); the mean from NumPy's integer sum (exact) instead of a Python loop over
    the histogram."""
    if not _fast(img):
        return timm_ops.contrast(img, factor, **kw)
    grey = img if img.mode == "L" else img.convert("L")
    total = int(_pixels(grey).sum(dtype=np.int64))
    mean = int(total / (grey.width * grey.height) + 0.5)
    return Image.blend(Image.new(img.mode, img.size, (mean,) * _BANDS[img.mode] if img.mode == "RGB" else mean), img, factor)


# timm's op names -> these functions
OPS = {"AutoContrast": auto_contrast, "Equalize": equalize, "Invert": invert, "Posterize": posterize,
       "Solarize": solarize, "SolarizeAdd": solarize_add, "Contrast": contrast}
