"""Input transforms. Input noise lives here and only here (RandAugment); labeling and
evaluation always use `eval_transform`.

Each model gets its own data config (input size, mean/std, interpolation, crop), resolved
once by `data_config` from timm's config for the architecture and the data, and stored in
its checkpoint: whoever later labels or evaluates with that model uses exactly the same
preprocessing.
"""
from __future__ import annotations

import math
import random
from typing import NamedTuple

import numpy as np
import torch

from timm.data import resolve_data_config
from timm.data.auto_augment import rand_augment_ops
from timm.models import get_pretrained_cfg
from torchvision import transforms as T

from . import lut_ops
from . import models  # noqa: F401  (registers ns_resnet_* and their data configs in timm)


def data_config(arch: str, in_chans: int, image_size: int | None, native_size: int | None) -> dict:
    """Preprocessing for `arch` on data with `in_chans` channels.

    Size: `image_size` when set, else the data's own size (array datasets are already
    tight), else the model's input size (image folders). Mean/std/interpolation/crop come
    from timm's config for the architecture, averaged to one channel for grayscale."""
    pc = get_pretrained_cfg(arch)
    cfg = resolve_data_config({}, pretrained_cfg=pc.to_dict()) if pc is not None else resolve_data_config({"input_size": (3, 224, 224)})
    size = image_size or native_size or int(cfg["input_size"][-1])
    mean, std = list(cfg["mean"]), list(cfg["std"])
    if in_chans != len(mean):
        mean, std = [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans
    # array datasets hold whole, tight images: only resized; files get timm's resize + centre crop
    crop_pct = 1.0 if native_size else float(cfg.get("crop_pct") or 1.0)
    return {"input_size": [in_chans, size, size], "mean": mean, "std": std,
            "interpolation": str(cfg.get("interpolation") or "bilinear"), "crop_pct": crop_pct, "native_size": native_size}


def _resize(cfg: dict) -> list:
    size = cfg["input_size"][-1]
    if cfg.get("native_size") == size:
        return []  # already the right size: no resampling at all
    interp = T.InterpolationMode(cfg["interpolation"])
    return [T.Resize(math.floor(size / cfg["crop_pct"]), interpolation=interp), T.CenterCrop(size)]


def resize_transform(cfg: dict) -> T.Compose:
    """The resize (and centre crop) of `cfg` alone, PIL in, PIL out."""
    return T.Compose(_resize(cfg))


def uint8_nchw(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W(, C)] -> a fresh contiguous uint8 [N, C, H, W] (read-only, memory-mapped
    input is copied, never aliased)."""
    x = torch.from_numpy(np.require(pixels, requirements=["C", "W"]))
    return (x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)).contiguous()


def unit_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W(, C)] -> float [N, C, H, W] in [0, 1], as ToTensor computes it."""
    return uint8_nchw(pixels).float().div_(255)


def pixels_to_model_input(images, cfg: dict):
    """uint8 arrays [N, H, W(, C)] already at any size -> (batch in [0, 1] at the model's input
    size, the normalisation to apply on top). Kept apart so FGSM can step in pixel space;
    equal to eval_transform's ToTensor when no resize is needed."""
    x = unit_tensor(images)
    size = cfg["input_size"][-1]
    if tuple(x.shape[-2:]) != (size, size):
        x = T.Resize((size, size), interpolation=T.InterpolationMode(cfg["interpolation"]), antialias=True)(x)
    return x.contiguous(), T.Normalize(cfg["mean"], cfg["std"])


class Preprocess:
    """PIL image -> model input, in two halves: `pil`, the per-image PIL ops (resize, centre
    crop, RandAugment; None when there are none), then `batch`, one tensor op over a whole
    batch of uint8 pixels (to [0, 1], normalise): the same arithmetic as torchvision's
    ToTensor + Normalize per image, at a fraction of the per-image cost, which dominates
    for small models. Array data with no PIL op never becomes a PIL image at all.

    With `augment` (a RandAugment run batched, see randaugment.py) the PIL half only resizes:
    each image's draws are made by `draw` where the PIL path would make them, and `batch`
    returns an `AugmentBatch` that the training loop finishes on its device."""

    def __init__(self, pil_ops: list, mean: list[float], std: list[float], augment: RandAugment | None = None):
        self.pil = T.Compose(pil_ops) if pil_ops else None
        self.mean, self.std = list(mean), list(std)
        self.augment = augment

    def pixels(self, img) -> np.ndarray:
        """uint8 [H, W] or [H, W, C] after the PIL ops."""
        img = self.pil(img) if self.pil is not None else img
        # frombuffer: a third of np.asarray's cost on small images (no array-interface dict)
        a = np.frombuffer(img.tobytes(), np.uint8).reshape(img.height, img.width, -1)
        return a[..., 0] if a.shape[-1] == 1 else a

    def draw(self) -> list | None:
        """This image's RandAugment draws (batched augment only), from Python's `random` as seeded."""
        from .randaugment import plan

        return plan(self.augment) if self.augment is not None else None

    def batch(self, pixels: np.ndarray, plans: list | None = None):
        """uint8 [N, H, W(, C)] -> normalised float [N, C, H, W] (or, with `augment`, the
        AugmentBatch that becomes it on the training device)."""
        if self.augment is not None:
            return AugmentBatch(uint8_nchw(pixels), plans, self.mean, self.std)
        return normalise(unit_tensor(pixels), self.mean, self.std)

    def __call__(self, img) -> torch.Tensor:
        x = self.batch(self.pixels(img)[None], [self.draw()])
        return (x.finish(torch.device("cpu")) if isinstance(x, AugmentBatch) else x)[0]


def normalise(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    # in place, in Normalize's order on ToTensor's output: the same floats, one allocation
    return x.sub_(torch.tensor(mean, device=x.device).view(1, -1, 1, 1)).div_(torch.tensor(std, device=x.device).view(1, -1, 1, 1))


class AugmentBatch(NamedTuple):
    """A training batch whose RandAugment and normalisation run where the model runs: uint8
    pixels [N, C, H, W] (a quarter of float's bytes to move) and each image's draws."""
    pixels: torch.Tensor
    plans: list
    mean: list
    std: list

    def finish(self, device: torch.device) -> torch.Tensor:
        from .randaugment import apply

        x = apply(self.pixels.to(device, non_blocking=True), self.plans)
        # unit_tensor's arithmetic (ToTensor's), then Normalize's: as `Preprocess.batch` without augment
        return normalise(x.float().div_(255), self.mean, self.std)

    @staticmethod
    def finish_together(batches: list[AugmentBatch], device: torch.device) -> list[torch.Tensor]:
        """`finish` of each batch, computed as one batch where they share a shape and
        normalisation (the labeled and pseudo-labeled batches of a step)."""
        first = batches[0]
        if any(b.pixels.shape[1:] != first.pixels.shape[1:] or (b.mean, b.std) != (first.mean, first.std) for b in batches):
            return [b.finish(device) for b in batches]
        joint = AugmentBatch(torch.cat([b.pixels for b in batches]), [p for b in batches for p in b.plans], first.mean, first.std)
        return list(joint.finish(device).split([len(b.plans) for b in batches]))


def eval_transform(cfg: dict) -> Preprocess:
    return Preprocess(_resize(cfg), cfg["mean"], cfg["std"])


def train_transform(cfg: dict, n: int, m: float, batched: bool = False) -> Preprocess:
    """The training transform: resize as `eval_transform`, then RandAugment with N = `n` ops at
    magnitude `m` (none when either is 0): per image in PIL, or `batched` (tensor ops over the
    batch on the training device; the same pixels, see randaugment.py)."""
    if n == 0 or m == 0:
        return eval_transform(cfg)
    if batched:
        return Preprocess(_resize(cfg), cfg["mean"], cfg["std"], augment=RandAugment(n, m))
    return Preprocess(_resize(cfg) + [RandAugment(n, m)], cfg["mean"], cfg["std"])


class RandAugment:
    """RandAugment as the official code applies it (`distort_image_with_randaugment`): for each
    of the N layers one op drawn uniformly (with replacement) from the 15 below, ALWAYS
    applied, at the fixed magnitude M, unclipped (M > 10 extrapolates past the AutoAugment
    range, as the paper's M = 27). The op implementations and their level-to-argument maps are
    timm's (seven of them through lut_ops.py: the same pixels without PIL's Python loops), the same as the official ones (rotate 30 deg, shear 0.3, enhance 0.1..1.9,
    posterize 4 bits, solarize 256, solarize-add 110 at M = 10; random sign where the official
    negates). Differences, stated: translation is relative to the image (0.3 of its size at
    M = 10) where the official moves 100 px of a 224 px ImageNet image (0.45); the fill is black,
    not grey 128 (digits and most small images have dark backgrounds); no Cutout (the official
    adds it behind a flag, for SVHN only). timm's own RandAugment applies each drawn op with
    probability 0.5 instead, so at N = 2 a quarter of the images got no op at all.

    The draws use Python's `random` (seeded per image by the dataset), which is also ~8 us
    per image cheaper than timm's `np.random.choice`."""
    OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast", "Brightness",
           "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "SolarizeAdd")  # the official list and order

    def __init__(self, n: int, m: float):
        hparams = {"img_mean": 0, "translate_pct": 0.3, "magnitude_max": max(10.0, float(m))}
        self.ops = rand_augment_ops(magnitude=float(m), prob=1.0, hparams=hparams, transforms=list(self.OPS))
        for op in self.ops:  # the lookup-table ops in NumPy: the same pixels, half the time (lut_ops.py)
            op.aug_fn = lut_ops.OPS.get(op.name, op.aug_fn)
        self.num_layers, self.magnitude = n, float(m)

    def __call__(self, img):
        for op in random.choices(self.ops, k=self.num_layers):
            img = op(img)
        return img

    def __repr__(self) -> str:
        return f"RandAugment(n={self.num_layers}, m={self.magnitude:g}, ops={[op.name for op in self.ops]})"
