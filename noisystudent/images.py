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


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _convert(im: Image.Image, mode: str) -> Image.Image:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = _to_8bit(im)
    elif im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA"):
        # composite on black, so transparent pixels do not show whatever colour they hide
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, im.convert("RGBA"))
    return im.convert(mode)  # CMYK, YCbCr, 1-bit, L <-> RGB


def decode(path: str | Path, mode: str = "RGB", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, str]:
    """Decode `path` fully into `mode` ('L' or 'RGB'): (image, the file's own mode), or raise
    BadImage with the reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BadImage(f"unreadable: {e.strerror}") from None
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    try:
        fh = open(path, "rb")  # opened here: a file we may not read is "unreadable", not "corrupt"
    except OSError as e:
        raise BadImage(f"unreadable: {e.strerror}") from None
    try:
        with fh, Image.open(fh) as im:
            w, h = im.size  # header only: nothing decoded yet
            if w * h > max_pixels:
                raise BadImage(f"too large to decode safely: {w}x{h} = {w * h} pixels > {max_pixels}")
            im.load()  # full decode: truncated data fails here, not later in a worker
            return _convert(im, mode), im.mode
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large to decode safely: {e}") from None
    except OSError as e:
        if e.errno is not None:  # the system failed to read it (EIO...); PIL's own errors carry no errno
            raise BadImage(f"unreadable: {e.strerror}") from None
        raise BadImage(f"truncated or corrupt: {e}") from None
    except (SyntaxError, ValueError) as e:  # PIL reports truncation/corruption as these
        raise BadImage(f"truncated or corrupt: {e}") from None


def load_image(path: str | Path, mode: str = "RGB", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `path` fully into `mode` ('L' or 'RGB'), or raise BadImage with the reason."""
    return decode(path, mode, max_pixels)[0]


class _Probe:
    """Map-style dataset: decode file i, report (i, reason or '', the file's own mode)."""

    def __init__(self, paths: list[Path], max_pixels: int):
        self.paths, self.max_pixels = paths, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, str, str]:
        try:
            return i, "", decode(self.paths[i], "RGB", self.max_pixels)[1]
        except BadImage as e:
            return i, str(e), ""


def scan(paths: list[Path], max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 0, desc: str | None = None) -> list[tuple[str, str]]:
    """Decode every file once, in DataLoader workers: (reason, mode) per path, in order;
    reason is '' for a usable file, mode is the file's own (e.g. 'CMYK', 'I;16')."""
    from torch.utils.data import DataLoader

    from .progress import progress

    out: list[tuple[str, str]] = [("", "")] * len(paths)
    loader = DataLoader(_Probe(paths, max_pixels), batch_size=64, num_workers=workers, collate_fn=list)
    with progress(desc or "scan", total=len(paths), enabled=desc is not None, unit="file") as bar:
        for batch in loader:
            for i, reason, mode in batch:
                out[i] = (reason, mode)
            bar.advance(len(batch))
    return out
