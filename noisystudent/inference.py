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
def stream_soft_labels(model: nn.Module, loader: DataLoader, temperature: float,
                       rt: Runtime | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pseudo labels, batch by batch: (ids, softmax(logits / T), T = 1 confidence) as numpy
    (pseudo.label_rows), the model in eval mode. Nothing is kept between batches, so a pool of
    any size streams through in flat memory."""
    from .pseudo import label_rows

    rt = rt or Runtime.of(model)
    model.eval()
    for x, ids in loader:
        with rt.autocast():
            logits = model(rt.input(x)).float()
        yield ids.numpy(), *label_rows(logits.cpu().numpy(), temperature)


@torch.inference_mode()
def noised_soft_labels(model: nn.Module, data: Prepared, ids: np.ndarray, transform, temperature: float, seed: int,
                       batch_size: int, rt: Runtime, workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The noised-teacher ablation (`pseudo.noised`; the paper labels un-noised): `model` built
    with its training dropout and stochastic depth (load_model(noised=True)), `transform` its
    training RandAugment. An image's label depends on its id alone, never on its batch, shard
    or a resume: its RandAugment draw is seeded by its id, and it goes through the model on its
    own under a seed from its id (dropout and drop-path masks). BatchNorm uses its running
    statistics (eval): batch statistics would tie a label to the images it is batched with,
    and are not among the paper's noises (RandAugment, dropout, stochastic depth)."""
    from .data import sample_seed
    from .pseudo import label_rows

    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    keys = [(i, sample_seed(seed, 3, int(img))) for i, img in enumerate(ids)]
    batches = [keys[k : k + batch_size] for k in range(0, len(keys), batch_size)]
    dl = loader(ImageDataset(data.images, ids, None, transform), batch_sampler=batches, num_workers=workers,
                pin_memory=rt.pin_memory)
    # one image at a time: intra-op threads only add synchronisation (measured: 0.2 ms a forward on
    # one thread, 1 to 20 ms on two beside another busy process); one thread also fixes the numerics
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for x, got in dl:
            logits = []
            for xi, img in zip(x, got.tolist()):
                torch.manual_seed(sample_seed(seed, 4, img) % 2**63)
                with rt.autocast():
                    logits.append(model(rt.input(xi[None])).float())
            yield got.numpy(), *label_rows(torch.cat(logits).cpu().numpy(), temperature)
    finally:
        torch.set_num_threads(threads)
