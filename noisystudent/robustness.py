"""Robustness measurements of the paper (ImageNet-C, ImageNet-P, FGSM), for any dataset.

- Corruptions: the 15 ImageNet-C corruptions x 5 severities of imagecorruptions 1.1.2, carried
  in corruptions.py (Apache-2.0; what was changed is listed there), seeded per (corruption,
  severity, image) so every model sees identical images. They take RGB images of at least
  32 px, so smaller ones are upsampled (bilinear) to 32 px, corrupted, and downsampled back
  (area), and grayscale goes in as RGB and comes back converted to L.
- Perturbations (ImageNet-P style): per image a sequence of `frames` copies, gradually more
  perturbed (rotate, scale, translate, tilt, brightness) or re-noised at a fixed level
  (gaussian and shot noise). Flip probability as ImageNet-P defines it: against the first
  frame for the noise sequences, against the previous frame otherwise.
- FGSM: one signed-gradient step of size eps/255 in pixel space (0..1), untargeted.

Metric functions are pure (numpy in, numbers out); `score` applies them to one model over the
set the corrupt stage made (stages/corrupt.py, stages/robustness.py).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .params import CORRUPTIONS, PERTURBATIONS  # the names params.yaml may use
from .robustness_figures import flip_probability, flips_per_sequence  # noqa: F401 (what score measures with)

NOISE_SEQUENCES = ("gaussian_noise", "shot_noise")  # compared with the first frame, not the previous
MIN_SIZE = 32  # the corruptions refuse smaller images (corruptions.MIN_SIZE)


def image_seed(seed: int, *keys: int) -> int:
    h = seed
    for k in keys:
        h = (h * 1_000_003 + k) % (2**31 - 1)
    return h


def corrupt_image(img: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """One corruption of one uint8 image ([H, W] or [H, W, C]); same shape and dtype back,
    identical for identical (image, name, severity, seed)."""
    from .corruptions import corrupt

    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    h, w = img.shape[:2]
    gray = img.ndim == 2 or img.shape[2] == 1
    pil = Image.fromarray(img.reshape(h, w) if gray else img)
    small = min(h, w) < MIN_SIZE
    if small:  # adapted: see module doc
        f = math.ceil(MIN_SIZE / min(h, w))
        pil = pil.resize((w * f, h * f), Image.BILINEAR)
    rgb = np.asarray(pil.convert("RGB"))
    out = corrupt(rgb, name, severity, np.random.RandomState(seed))  # the stream np.random.seed(seed) gave
    out = Image.fromarray(np.uint8(np.clip(np.asarray(out), 0, 255)))
    if small:
        out = out.resize((w, h), Image.BOX)
    if gray:
        return np.asarray(out.convert("L")).reshape(img.shape)
    return np.asarray(out.convert("RGB"))


def perturb_sequence(img: np.ndarray, name: str, frames: int, seed: int) -> np.ndarray:
    """`frames` uint8 copies of `img`, frame 0 the least perturbed. Gradual ones grow by a
    fixed step per frame; noise ones redraw noise of one level each frame."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    x = img.astype(np.float32) / 255.0
    out = []
    for t in range(frames):
        if name == "gaussian_noise":
            y = x + rng.normal(0, 0.06, x.shape)
        elif name == "shot_noise":
            y = rng.poisson(x * 60) / 60.0
        elif name == "brightness":
            y = x + 0.03 * t
        else:
            pil = Image.fromarray(img)
            if name == "rotate":
                pil = pil.rotate(1.5 * t, resample=Image.BILINEAR)
            elif name == "scale":
                s = 1.0 + 0.025 * t
                pil = pil.transform((w, h), Image.AFFINE, (1 / s, 0, w / 2 * (1 - 1 / s), 0, 1 / s, h / 2 * (1 - 1 / s)), Image.BILINEAR)
            elif name == "translate":
                d = 0.02 * t * w  # a fiftieth of the width per frame
                pil = pil.transform((w, h), Image.AFFINE, (1, 0, -d, 0, 1, 0), Image.BILINEAR)
            elif name == "tilt":
                k = 0.025 * t  # shear: the top edge moves against the bottom one
                pil = pil.transform((w, h), Image.AFFINE, (1, k, -k * h / 2, 0, 1, 0), Image.BILINEAR)
            y = np.asarray(pil).astype(np.float32) / 255.0
        out.append(np.uint8(np.clip(y, 0, 1) * 255 + 0.5))
    return np.stack(out)


# ---- FGSM --------------------------------------------------------------------------------


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, normalize) -> torch.Tensor:
    """Untargeted single-step FGSM: x + eps * sign(grad_x CE(model(normalize(x)), y)), in pixel
    space [0, 1] (eps on that scale: eps_255 / 255), clipped to [0, 1]."""
    if eps == 0:
        return x
    x = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(normalize(x)), y)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


# ---- one model over the corrupt stage's set ---------------------------------------------


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Positions ordered class by class in turns (a seeded order within each class), so the
    first k hold the classes in equal numbers."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    rank = np.empty(len(labels), dtype=np.int64)
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        rank[idx] = np.arange(len(idx))
    return np.lexsort((np.searchsorted(classes, labels), rank))


def predict_arrays(model: torch.nn.Module, images: np.ndarray, cfg: dict, batch_size: int) -> np.ndarray:
    """Predicted classes of uint8 images (already at the robustness size), preprocessed as the
    model's own data config says (resized only when its input size differs)."""
    from .transforms import pixels_to_model_input

    preds = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x, normalize = pixels_to_model_input(np.asarray(images[i : i + batch_size]), cfg)
            preds.append(model(normalize(x)).argmax(1).numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def fgsm_correctness(model: torch.nn.Module, clean: np.ndarray, labels: np.ndarray, cfg: dict, epsilons, batch_size: int) -> np.ndarray:
    """[epsilons, images]: whether each image is still classified right under FGSM at each
    epsilon (0-255 scale)."""
    from .transforms import pixels_to_model_input

    x, normalize = pixels_to_model_input(clean, cfg)
    y = torch.from_numpy(labels)
    out = []
    for eps in epsilons:
        hits = []
        for i in range(0, len(y), batch_size):
            xa = fgsm(model, x[i : i + batch_size], y[i : i + batch_size], eps / 255.0, normalize)
            with torch.inference_mode():
                hits.append(model(normalize(xa)).argmax(1) == y[i : i + batch_size])
        out.append(torch.cat(hits).numpy() if hits else np.zeros(0, dtype=bool))
    return np.stack(out) if out else np.zeros((0, len(labels)), dtype=bool)


def score(model: torch.nn.Module, cfg: dict, folder, epsilons, batch_size: int) -> dict:
    """A model's raw figures on the corrupt stage's `folder`: clean error, error per
    corruption and severity, flip probability per perturbation, FGSM accuracy per epsilon."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    labels, clean = np.load(folder / "labels.npy"), np.load(folder / "clean.npy")
    corrupted = np.load(folder / "corrupted.npy", mmap_mode="r")
    perturbed = np.load(folder / "perturbed.npy", mmap_mode="r")
    n, shape = len(labels), clean.shape[1:]
    C, S = corrupted.shape[:2]
    wrong = predict_arrays(model, np.asarray(corrupted).reshape(C * S * n, *shape), cfg, batch_size).reshape(C, S, n) != labels
    err = wrong.mean(2)
    P, F = perturbed.shape[0], perturbed.shape[2]
    pp = predict_arrays(model, np.asarray(perturbed).reshape(P * n * F, *shape), cfg, batch_size).reshape(P, n, F)
    clean_wrong = predict_arrays(model, clean, cfg, batch_size) != labels
    fgsm_correct = fgsm_correctness(model, clean, labels, cfg, epsilons, batch_size)
    # per image, for the intervals (a bootstrap over the images, `intervals`): figures of a
    # resample are the same functions of these as the figures below are of all the images
    outcomes = {"clean_wrong": clean_wrong, "wrong": wrong, "fgsm_correct": fgsm_correct,
                "flips": np.stack([flips_per_sequence(pp[i], name in NOISE_SEQUENCES) for i, name in enumerate(meta["perturbations"])])}
    return {
        "num_images": n,
        "clean_error": float(clean_wrong.mean()),
        "corruption_error": {c: {f"{s}": float(err[ci, si]) for si, s in enumerate(meta["severities"])}
                             for ci, c in enumerate(meta["corruptions"])},
        "flip_probability": {name: flip_probability(pp[i], name in NOISE_SEQUENCES) for i, name in enumerate(meta["perturbations"])},
        "fgsm_accuracy": {f"{eps:g}": float(fgsm_correct[i].mean()) for i, eps in enumerate(epsilons)},
        "notes": meta["adapted"],
        "outcomes": outcomes,
    }
