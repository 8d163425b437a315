"""The one training loop, for teacher and student alike.

Targets are always probability vectors (smoothed one-hot for labels, soft or hard pseudo
labels), so the two roles differ only in their data and noise, never in code. A step sees a
labeled batch of B images and, for the student, a pseudo-labeled batch of ratio x B; the loss
is  CE(labeled) + ratio x CE(pseudo)  (per-example means), as in the official code.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .progress import progress


@dataclass(frozen=True)
class FitConfig:
    steps: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 0
    batch_ratio: int = 1
    seed: int = 0
    log_every: int = 50


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class CycleBatchSampler:
    """Exactly `steps` batches of `batch_size` indices, drawn epoch after epoch as seeded
    permutations, so every image is seen equally often even when n < batch_size."""

    def __init__(self, n: int, batch_size: int, steps: int, generator: torch.Generator):
        self.n, self.batch_size, self.steps, self.g = n, batch_size, steps, generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        buf: list[int] = []
        for _ in range(self.steps):
            while len(buf) < self.batch_size:
                buf.extend(torch.randperm(self.n, generator=self.g).tolist())
            batch, buf = buf[: self.batch_size], buf[self.batch_size :]
            yield batch


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example mean of -sum_c t_c log p_c."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def lr_at(step: int, cfg: FitConfig) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))


def _loader(ds: Dataset, batch_size: int, cfg: FitConfig, g: torch.Generator) -> DataLoader:
    # num_workers=0: the images are tiny and in memory; workers would cost more than they save
    return DataLoader(ds, batch_sampler=CycleBatchSampler(len(ds), batch_size, cfg.steps, g))


def fit(
    model: nn.Module,
    labeled: Dataset,
    cfg: FitConfig,
    pseudo: Dataset | None = None,
    on_log: Callable[[int, dict], None] | None = None,
    desc: str = "train",
) -> dict:
    """Train `model` in place for cfg.steps steps; returns the last logged figures."""
    g = seed_everything(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    lab_iter = iter(_loader(labeled, cfg.batch_size, cfg, g))
    pse_iter = iter(_loader(pseudo, cfg.batch_size * cfg.batch_ratio, cfg, g)) if pseudo is not None else None
    model.train()
    sums = torch.zeros(3)  # labeled loss, pseudo loss, labeled correct: summed on-device, read at log time
    last: dict = {}
    with progress(desc, total=cfg.steps) as bar:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            x_l, y_l = next(lab_iter)
            if pse_iter is not None:
                x_u, y_u = next(pse_iter)
                logits = model(torch.cat([x_l, x_u]))
                logits_l, logits_u = logits[: len(x_l)], logits[len(x_l) :]
                loss_u = soft_cross_entropy(logits_u, y_u)
            else:
                logits_l, loss_u = model(x_l), torch.zeros(())
            loss_l = soft_cross_entropy(logits_l, y_l)
            loss = loss_l + cfg.batch_ratio * loss_u
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                sums += torch.stack([loss_l.detach(), loss_u.detach(), (logits_l.argmax(1) == y_l.argmax(1)).float().mean()])
            bar.advance()
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                n = (step % cfg.log_every) + 1
                ll, lu, acc = (sums / n).tolist()
                sums.zero_()
                last = {"loss_labeled": ll, "loss_pseudo": lu, "train_acc": acc, "lr": opt.param_groups[0]["lr"]}
                if not math.isfinite(ll + lu):
                    raise FloatingPointError(f"loss became {ll + lu} at step {step + 1}: lower train.lr")
                if on_log is not None:
                    on_log(step + 1, last)
    return last


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: DataLoader, desc: str | None = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """Un-noised predictions: eval mode (no dropout, no stochastic depth) under inference_mode.
    The loader must use the eval transform. Returns (logits, ids or labels) in loader order.
    desc=None: no progress bar (quick checks inside training)."""
    model.eval()
    outs, keys = [], []
    with progress(desc or "", total=len(loader), enabled=desc is not None) as bar:
        for x, k in loader:
            outs.append(model(x).float())
            keys.append(k)
            bar.advance()
    return torch.cat(outs), torch.cat(keys)


@torch.inference_mode()
def stream_soft_labels(model: nn.Module, loader: DataLoader, temperature: float) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Un-noised soft labels, batch by batch: (ids, softmax(logits / T)) as numpy. Nothing is
    kept between batches, so a pool of any size streams through in flat memory."""
    from .pseudo import soft_labels

    model.eval()
    for x, ids in loader:
        yield ids.numpy(), soft_labels(model(x).float().numpy(), temperature)
