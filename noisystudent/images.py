"""Safe image decoding for user folders: every file either becomes an image in the mode the
model wants, or is refused with a reason (never a crash, never a silent skip).

Why not just `Image.open(p).convert("RGB")`: zero-byte and truncated files raise deep inside
a DataLoader worker; a crafted header can claim billions of pixels (a decompression bomb);
16-bit and float images convert to garbage; CMYK/palette/alpha need explicit handling.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000: far above any training image, far below a bomb


class BadImage(ValueError):
    """An unusable image file; str() is the reason written to the bad-files report."""


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float images, scaled to 0..255 by their own range."""
    a = np.asarray(im, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    if im.mode.startswith("I;16") or (im.mode == "I" and hi <= 65535 and lo >= 0):
        a = a / 257.0  # keep the absolute scale of 16-bit data (0..65535 -> 0..255)
    elif hi > lo:
        a = (a - lo) * (255.0 / (hi - lo))
    else:
        a = np.zeros_like(a)
    return Image.fromarray(np.clip(a.round(), 0, 255).astype(np.uint8), "L")


def load_image(path: str | Path, mode: str = "RGB", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `path` fully into `mode` ('L' or 'RGB'), or raise BadImage with the reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BadImage(f"unreadable: {e.strerror}") from None
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            w, h = im.size  # header only: nothing decoded yet
            if w * h > max_pixels:
                raise BadImage(f"too large to decode safely: {w}x{h} = {w * h} pixels > {max_pixels}")
            im.load()  # full decode: truncated data fails here, not later in a worker
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                im = _to_8bit(im)
            elif im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            if im.mode in ("RGBA", "LA", "PA"):
                # composite on black, so transparent pixels do not show whatever colour they hide
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im.convert("RGBA"))
            return im.convert(mode)  # CMYK, YCbCr, 1-bit, L <-> RGB
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large to decode safely: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports truncation/corruption as these
        raise BadImage(f"truncated or corrupt: {e}") from None


def scan(paths: list[Path], mode: str = "RGB", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Split files into usable ones and (path, reason) for the rest (decodes each once)."""
    good, bad = [], []
    for p in paths:
        try:
            load_image(p, mode, max_pixels)
            good.append(p)
        except BadImage as e:
            bad.append((p, str(e)))
    return good, bad
