"""RandAugment computed over a batch of uint8 tensors, on whatever device holds them.

`transforms.RandAugment` (PIL, one image at a time) is the reference: the same 15 ops, each
image its own draws. Here the draws are made first, per image, from Python's `random` seeded
exactly as the PIL path seeds it (`plan`: the same calls in the same order, so the same ops,
signs and resampling filters), and the pixels are then transformed a layer at a time: images
that drew the same (op, argument, filter) are transformed together in one tensor op. With a
fixed magnitude an op has at most two arguments (a random sign) and two filters, so a batch
is a few dozen tensor ops whatever its size.

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

import torch

from .transforms import RandAugment

# ops whose PIL implementation draws a resampling filter (timm's _check_args_tf)
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
BILINEAR, BICUBIC = 2, 3  # PIL's filter ids, as timm draws them


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
    layers = max((len(p) for p in plans), default=0)
    for layer in range(layers):
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(plans):
            if layer < len(p):
                groups[p[layer]].append(i)
        for (name, arg, interp), idx in groups.items():
            sel = torch.tensor(idx, device=x.device)
            x[sel] = OPS[name](x[sel], arg, interp)
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

def _warp(x: torch.Tensor, matrix: tuple, interp: int) -> torch.Tensor:
    """Image.transform(size, AFFINE, matrix, resample=interp, fillcolor=0) on a batch: output
    pixel centre (x + .5, y + .5) -> input (a x + b y + c, d x + e y + f); outside the image
    black; inside, Pillow's bilinear or a = -1 bicubic with edge clamping, truncated."""
    n, c, h, w = x.shape
    a, b, cc, d, e, ff = matrix
    dev = x.device
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=dev) + 0.5,
                            torch.arange(w, dtype=torch.float64, device=dev) + 0.5, indexing="ij")
    xin = a * xs + b * ys + cc
    yin = d * xs + e * ys + ff
    inside = ((xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)).reshape(-1, 1)
    xs0, ys0 = xin - 0.5, yin - 0.5
    x0, y0 = torch.floor(xs0), torch.floor(ys0)
    dx, dy = (xs0 - x0).reshape(-1, 1), (ys0 - y0).reshape(-1, 1)
    x0, y0 = x0.long().reshape(-1), y0.long().reshape(-1)
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
    # pixels as rows [H*W, N*C]: a tap is one row gather (index_select on dim 0 copies whole
    # rows, ~50x faster on a CPU than gathering along the last dimension)
    flat = x.reshape(n * c, h * w).t().contiguous()
    cols = [(x0 + k).clamp(0, w - 1) for k in taps]
    rows = []
    for k in taps:
        yi = (y0 + k).clamp(0, h - 1) * w
        rows.append(combine([flat.index_select(0, yi + xi).double() for xi in cols], dx))
    v = combine(rows, dy)
    if interp == BICUBIC:
        v = v.clamp(0, 255)
    out = torch.where(inside, v.trunc(), 0.0).to(torch.uint8)
    return out.t().reshape(n, c, h, w)


def rotate(x, degrees, interp):
    # Image.rotate(degrees, expand=False): the affine about the image centre, as Pillow builds it
    h, w = x.shape[-2:]
    angle = degrees % 360.0
    if angle == 0:
        return x
    if angle == 180:  # Pillow transposes these instead of resampling
        return x.flip(-1).flip(-2)
    if angle in (90, 270) and h == w:
        return torch.rot90(x, 1 if angle == 90 else -1, dims=(-2, -1))
    rad = -math.radians(angle)
    m = [round(math.cos(rad), 15), round(math.sin(rad), 15), 0.0, round(-math.sin(rad), 15), round(math.cos(rad), 15), 0.0]
    cx, cy = w / 2.0, h / 2.0
    m[2], m[5] = m[0] * -cx + m[1] * -cy + m[2], m[3] * -cx + m[4] * -cy + m[5]
    m[2] += cx
    m[5] += cy
    return _warp(x, tuple(m), interp)


def shear_x(x, factor, interp):
    return _warp(x, (1, factor, 0, 0, 1, 0), interp)


def shear_y(x, factor, interp):
    return _warp(x, (1, 0, 0, factor, 1, 0), interp)


def translate_x_rel(x, pct, interp):
    return _warp(x, (1, 0, pct * x.shape[-1], 0, 1, 0), interp)


def translate_y_rel(x, pct, interp):
    return _warp(x, (1, 0, 0, 0, 1, pct * x.shape[-2]), interp)


OPS = {"AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert, "Rotate": rotate, "Posterize": posterize,
       "Solarize": solarize, "Color": color, "Contrast": contrast, "Brightness": brightness, "Sharpness": sharpness,
       "ShearX": shear_x, "ShearY": shear_y, "TranslateXRel": translate_x_rel, "TranslateYRel": translate_y_rel,
       "SolarizeAdd": solarize_add}
assert set(OPS) == set(RandAugment.OPS)
