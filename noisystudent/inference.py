"""Un-noised predictions of a trained model: eval mode, eval transform, inference_mode.

Labeling, evaluation, the gallery and validation inside training all predict through here, so
"the teacher is never noised" holds in one place (the `noised` labeling ablation is the one
explicit exception).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import ImageDataset, Prepared, loader
from .progress import progress
from .runtime import Runtime, runtime


def inference_runtime(device: str, precision: str = "fp32", channels_last: bool = False) -> Runtime:
    """Labeling and evaluation: no process group (under torchrun, ranks label apart)."""
    return runtime(device, precision, channels_last, group=False)


def id_loader(data: Prepared, ids: np.ndarray, transform, batch_size: int, rt: Runtime, workers: int = 0) -> DataLoader:
    """Un-shuffled, id-keyed batches (images, ids); workers only decode, so their number
    never changes a prediction."""
    return loader(ImageDataset(data.images, ids, None, transform), batch_size=batch_size, num_workers=workers,
                  persistent_workers=False, pin_memory=rt.pin_memory)


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: DataLoader, desc: str | None = "predict", rt: Runtime | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval mode (no dropout, no stochastic depth). The loader must use the eval transform.
    Returns (float32 logits on the CPU, ids or labels) in loader order. desc=None: no
    progress bar (quick checks inside training)."""
    rt = rt or Runtime.of(model)
    model.eval()
    outs, keys = [], []
    with progress(desc or "", total=len(loader.dataset), enabled=desc is not None, unit="img") as bar:
        for x, k in loader:
            with rt.autocast():
                outs.append(model(rt.input(x)).float())
            keys.append(k)
            bar.advance(len(x))
    return torch.cat(outs).cpu(), torch.cat(keys)


def accuracy(model: nn.Module, data: Prepared, split: str, transform, batch_size: int = 256, workers: int = 0) -> float:
    """Top-1 on a split of the prepared data; leaves the model's mode as it found it."""
    frame = data.split(split)
    was = model.training
    rt = Runtime.of(model)
    logits, _ = predict_logits(model, id_loader(data, frame["id"].to_numpy(), transform, batch_size, rt, workers), desc=None, rt=rt)
    model.train(was)
    return float((logits.argmax(1).numpy() == frame["label"].to_numpy()).mean())


@torch.inference_mode()
def stream_soft_labels(model: nn.Module, loader: DataLoader, temperature: float, rt: Runtime | None = None,
                       noised: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Soft labels, batch by batch: (ids, softmax(logits / T)) as numpy. Nothing is kept
    between batches, so a pool of any size streams through in flat memory. `noised` (an
    ablation): train mode, so dropout and stochastic depth stay on (the caller seeds them and
    gives a noised transform)."""
    from .pseudo import soft_labels

    rt = rt or Runtime.of(model)
    model.train(noised)
    for x, ids in loader:
        with rt.autocast():
            logits = model(rt.input(x)).float()
        yield ids.numpy(), soft_labels(logits.cpu().numpy(), temperature)
