"""RandAugment computed over a batch of uint8 tensors, on whatever device holds them.

`transforms.RandAugment` (PIL, one image at a time) is the reference: the same 15 ops, each
image its own draws. Here the draws are made first, per image, from Python's `random` seeded
exactly as the PIL path seeds it (`plan`: the same calls in the same order, so the same ops,
signs and resampling filters), and the pixels are then transformed a layer at a time: images
that drew the same (op, argument) are transformed together, and on small images every affine
warp of the layer is one call per filter, each image with its own matrix. With a fixed
magnitude an op has at most two arguments (a random sign), so a batch costs a fixed number of
tensor ops whatever its size.

The arithmetic is Pillow's (13.x), so the pixels are the PIL path's exactly: lookup tables for
autocontrast, equalize, invert, posterize, solarize and solarize-add; the blends (color,
contrast, brightness, sharpness) in Pillow's float32 formula, truncated; the affine warps
(rotate, shear, translate) with Pillow's pixel-centre mapping, black outside the image, edge
clamping inside, its bilinear and its a = -1 bicubic in float64, truncated.
tests/test_randaugment.py compares every op pixel for pixel (tolerance 0), the draws, and the
whole training transform; benchmarks/augment_speed.py measures both paths.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from functools import lru_cache

import torch

from .transforms import RandAugment

# ops whose PIL implementation draws a resampling filter (timm's _check_args_tf)
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
BILINEAR, BICUBIC = 2, 3  # PIL's filter ids, as timm draws them
MERGE_WARPS_UP_TO = 64 * 64  # pixels: see `apply` (benchmarks/augment_speed.py)


def plan(ra: RandAugment) -> list[tuple[str, float | None, int | None]]:
    """One image's draws, from Python's `random` in its current state: [(op name, argument,
    filter)] per layer, consuming exactly what `ra(img)` would consume."""
    out = []
    for op in random.choices(ra.ops, k=ra.num_layers):
        mag = max(0.0, min(op.magnitude, op.magnitude_max or 10.0))  # AugmentOp.__call__, magnitude_std 0
        args = op.level_fn(mag, op.hparams) if op.level_fn is not None else ()
        interp = None
        if op.name in GEOMETRIC:  # timm's _interpolation(): random.choice over the filters
            interp = int(random.choice(op.kwargs["resample"])) if isinstance(op.kwargs["resample"], (list, tuple)) \
                else int(op.kwargs["resample"])
        out.append((op.name, args[0] if args else None, interp))
    return out


def apply(x: torch.Tensor, plans: list[list[tuple]]) -> torch.Tensor:
    """uint8 [N, C, H, W] -> the same images after their plans (one list per image)."""
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
    x = x.clone()
    h, w = x.shape[-2:]
    # small images: every affine warp of a layer in one call per filter, each image with its own
    # matrix (five geometric ops x two signs x two filters would be ~20 calls of a few dozen
    # tensor ops each, for a few pixels); large ones: one call per matrix, whose images share
    # their taps (the arithmetic dominates there, and per-image taps cost memory)
    merge = h * w <= MERGE_WARPS_UP_TO
    layers = max((len(p) for p in plans), default=0)
    for layer in range(layers):
        groups: dict[tuple, list[int]] = defaultdict(list)
        warps: dict[tuple, tuple[list[int], list[tuple]]] = defaultdict(lambda: ([], []))
        for i, p in enumerate(plans):
            if layer < len(p):
                name, arg, interp = p[layer]
                m = _affine(name, arg, h, w) if name in GEOMETRIC else None
                if m is None:
                    groups[p[layer]].append(i)
                else:
                    idx, mats = warps[(interp,) if merge else (interp, m)]
                    idx.append(i)
                    mats.append(m)
        for (name, arg, interp), idx in groups.items():
            sel = torch.tensor(idx, device=x.device)
            x[sel] = OPS[name](x[sel], arg, interp)
        for (interp, *_), (idx, mats) in warps.items():
            sel = torch.tensor(idx, device=x.device)
            x[sel] = _warp(x[sel], mats if merge else mats[0], interp)
    return x


# ---- lookup-table ops: exact ------------------------------------------------------------

def _lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel lookup tables lut [N, C, 256] applied to x [N, C, H, W]."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1).long()
    return torch.gather(lut.to(x.device), 2, flat).reshape(x.shape).to(torch.uint8)


def _hist(x: torch.Tensor) -> torch.Tensor:
    n, c = x.shape[:2]
    flat = x.reshape(n * c, -1).long()
    h = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device)
    h.scatter_add_(1, flat, torch.ones_like(flat))
    return h.reshape(n, c, 256)


def autocontrast(x, *_):
    # ImageOps.autocontrast(cutoff=0): per channel, lo..hi stretched to 0..255 (identity if flat)
    lo = x.amin(dim=(2, 3), keepdim=True).double()[..., 0]
    hi = x.amax(dim=(2, 3), keepdim=True).double()[..., 0]
    ix = torch.arange(256, dtype=torch.float64, device=x.device).view(1, 1, 256)
    flat = hi <= lo
    # tensor / tensor: torch computes `scalar / tensor` as reciprocal * scalar, an ulp off
    # Python's 255.0 / (hi - lo), enough to move a level (224 * scale: 254.99999999999997)
    scale = torch.full_like(hi, 255.0) / torch.where(flat, torch.ones_like(hi), hi - lo)
    lut = (ix * scale + (-lo * scale)).trunc().clamp(0, 255)
    lut = torch.where(flat, ix, lut)
    return _lut(x, lut.long())


def equalize(x, *_):
    # ImageOps.equalize: step = (pixels - count of the last used level) // 255, lut = cumulative // step
    h = _hist(x)
    used = h > 0
    last = torch.where(used, torch.arange(256, device=x.device), -1).amax(dim=2, keepdim=True)
    step = (h.sum(2, keepdim=True) - torch.gather(h, 2, last.clamp(min=0))) // 255
    before = torch.cumsum(h, 2) - h  # pixels strictly below each level
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp(max=255)
    identity = (used.sum(2, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(identity, torch.arange(256, device=x.device).view(1, 1, 256), lut)
    return _lut(x, lut)


def invert(x, *_):
    return 255 - x


def posterize(x, bits, _):
    bits = int(bits)
    if bits >= 8:  # timm returns the image unchanged
        return x
    return x & (~(2 ** (8 - bits) - 1) & 0xFF)


def solarize(x, thresh, _):
    if thresh >= 256:  # nothing at or above it (and 256 does not fit a uint8 comparison)
        return x
    return torch.where(x < int(thresh), x, 255 - x)


def solarize_add(x, add, _, thresh: int = 128):
    return torch.where(x < thresh, (x.int() + int(add)).clamp(max=255).to(torch.uint8), x)


# ---- blends (ImageEnhance): Pillow's float32 formula -------------------------------------

def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: float) -> torch.Tensor:
    # ImagingBlend: in1 + alpha * (in2 - in1) in float32, clipped, truncated
    a = torch.tensor(factor, dtype=torch.float32, device=x.device)
    out = degenerate.float() + a * (x.float() - degenerate.float())
    return out.clamp(0, 255).trunc().to(torch.uint8)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L (ITU-R 601-2 luma in 16-bit fixed point), [N, 1, H, W] int."""
    if x.shape[1] == 1:
        return x.int()
    r, g, b = x[:, 0].int(), x[:, 1].int(), x[:, 2].int()
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def color(x, factor, _):
    if x.shape[1] == 1:  # grayscale: its own degenerate, the blend is the image
        return x
    return _blend(_gray(x).expand_as(x).to(torch.uint8), x, factor)


def contrast(x, factor, _):
    g = _gray(x).double()
    count = torch.full((len(x), 1, 1, 1), float(g[0].numel()), dtype=torch.float64, device=x.device)
    mean = (g.sum(dim=(1, 2, 3), keepdim=True) / count + 0.5).trunc()  # int(ImageStat's sum / count + 0.5)
    return _blend(mean.expand_as(x).to(torch.uint8), x, factor)


def brightness(x, factor, _):
    return _blend(torch.zeros_like(x), x, factor)


def sharpness(x, factor, _):
    # ImageFilter.SMOOTH (3x3, centre 5, the rest 1, / 13), borders kept; then a blend
    k1, k5 = torch.tensor(1 / 13, dtype=torch.float32), torch.tensor(5 / 13, dtype=torch.float32)
    f = x.float()
    h, w = x.shape[-2:]
    smooth = x.clone()
    if h > 2 and w > 2:
        def row(r, centre):  # (left*k + mid*k' + right*k) as Pillow sums one row of the kernel
            return r[..., :-2] * k1 + r[..., 1:-1] * centre + r[..., 2:] * k1
        ss = torch.full_like(f[..., 1:-1, 1:-1], 0.5)
        ss = ss + row(f[..., 2:, :], k1)
        ss = ss + row(f[..., 1:-1, :], k5)
        ss = ss + row(f[..., :-2, :], k1)
        smooth[..., 1:-1, 1:-1] = ss.clamp(0, 255).trunc().to(torch.uint8)
    return _blend(smooth, x, factor)


# ---- affine warps: Pillow's transform, exact ---------------------------------------------

def _warp(x: torch.Tensor, matrix, interp: int) -> torch.Tensor:
    """Image.transform(size, AFFINE, matrix, resample=interp, fillcolor=0) on a batch, `matrix`
    one (a, b, c, d, e, f) for every image or one per image: output pixel centre (x + .5, y + .5)
    -> input (a x + b y + c, d x + e y + f); outside the image black; inside, Pillow's bilinear or
    a = -1 bicubic with edge clamping, truncated."""
    n, c, h, w = x.shape
    dev = x.device
    m = torch.as_tensor(matrix, dtype=torch.float64, device=dev).reshape(-1, 6, 1)  # [1 or n, 6, 1]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=dev) + 0.5,
                            torch.arange(w, dtype=torch.float64, device=dev) + 0.5, indexing="ij")
    xs, ys = xs.reshape(1, -1), ys.reshape(1, -1)
    xin = m[:, 0] * xs + m[:, 1] * ys + m[:, 2]  # [1 or n, H*W], Pillow's order of operations
    yin = m[:, 3] * xs + m[:, 4] * ys + m[:, 5]
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xs0, ys0 = xin - 0.5, yin - 0.5
    x0, y0 = torch.floor(xs0), torch.floor(ys0)
    dx, dy = xs0 - x0, ys0 - y0
    x0, y0 = x0.long(), y0.long()
    if interp == BICUBIC:
        taps = range(-1, 3)

        def combine(v, t):  # Pillow's BICUBIC macro (a = -1), Horner in double
            v1, v2, v3, v4 = v
            p1, p2, p3, p4 = v2, -v1 + v3, 2 * (v1 - v2) + v3 - v4, -v1 + v2 - v3 + v4
            return p1 + t * (p2 + t * (p3 + t * p4))
    else:
        taps = range(0, 2)

        def combine(v, t):  # BILINEAR macro
            return v[0] + (v[1] - v[0]) * t
    if m.shape[0] == 1:
        # one matrix: pixels as rows [H*W, N*C], a tap is a row gather (index_select on dim 0
        # copies whole rows, ~50x faster on a CPU than gathering along the last dimension)
        src = x.reshape(n * c, h * w).t().contiguous()
        x0, y0, dx, dy, inside = (t.reshape(-1, 1) for t in (x0, y0, dx, dy, inside))  # per row

        def tap(pos):
            return src.index_select(0, pos.reshape(-1))
    else:
        # one matrix per image: each image's taps from its own pixels, by flat position
        src, base = x.reshape(-1), (torch.arange(n * c, device=dev) * (h * w)).view(n, c, 1)
        x0, y0, dx, dy, inside = (t.unsqueeze(1) for t in (x0, y0, dx, dy, inside))  # [N, 1, H*W]

        def tap(pos):
            return src.take(pos + base)
    cols = [(x0 + k).clamp(0, w - 1) for k in taps]
    # a tap at a time (contiguous tensors: on large images the arithmetic is what costs)
    v = combine([combine([tap((y0 + k).clamp(0, h - 1) * w + xi).double() for xi in cols], dx) for k in taps], dy)
    if interp == BICUBIC:
        v = v.clamp(0, 255)
    out = torch.where(inside, v.trunc(), 0.0).to(torch.uint8)
    return (out.t() if m.shape[0] == 1 else out).reshape(n, c, h, w)


@lru_cache(maxsize=256)
def _affine(name: str, arg: float, h: int, w: int) -> tuple | None:
    """The matrix Pillow resamples with for a geometric op, or None where it does not resample
    (rotations by multiples of 90 degrees: Pillow transposes, see `rotate`)."""
    if name == "Rotate":
        angle = arg % 360.0
        if angle in (0, 180) or (angle in (90, 270) and h == w):
            return None
        # Image.rotate(degrees, expand=False): the affine about the image centre, as Pillow builds it
        rad = -math.radians(angle)
        m = [round(math.cos(rad), 15), round(math.sin(rad), 15), 0.0, round(-math.sin(rad), 15), round(math.cos(rad), 15), 0.0]
        cx, cy = w / 2.0, h / 2.0
        m[2], m[5] = m[0] * -cx + m[1] * -cy + m[2], m[3] * -cx + m[4] * -cy + m[5]
        return (m[0], m[1], m[2] + cx, m[3], m[4], m[5] + cy)
    return {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
            "TranslateXRel": (1, 0, arg * w, 0, 1, 0), "TranslateYRel": (1, 0, 0, 0, 1, arg * h)}[name]


def rotate(x, degrees, interp):
    h, w = x.shape[-2:]
    m = _affine("Rotate", degrees, h, w)
    if m is not None:
        return _warp(x, m, interp)
    angle = degrees % 360.0
    if angle == 180:
        return x.flip(-1).flip(-2)
    if angle in (90, 270):
        return torch.rot90(x, 1 if angle == 90 else -1, dims=(-2, -1))
    return x


def _geometric(name):
    def op(x, arg, interp):
        return _warp(x, _affine(name, arg, *x.shape[-2:]), interp)
    op.__name__ = name
    return op


OPS = {"AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert, "Rotate": rotate, "Posterize": posterize,
       "Solarize": solarize, "Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness,
       "ShearX": _geometric("ShearX"), "ShearY": _geometric("ShearY"), "TranslateXRel": _geometric("TranslateXRel"),
       "TranslateYRel": _geometric("TranslateYRel"), "SolarizeAdd": solarize_add}
assert set(OPS) == set(RandAugment.OPS)
