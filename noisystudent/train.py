"""The one training loop, for teacher and student alike.

Targets are always probability vectors (smoothed one-hot for labels, soft or hard pseudo
labels), so the two roles differ only in their data and noise, never in code. A step sees a
labeled batch of B images and, for the student, a pseudo-labeled batch of ratio x B; the loss
is  CE(labeled) + ratio x CE(pseudo)  (per-example means), as in the official code.
"""
from __future__ import annotations

import math
import os
import random
import signal
from dataclasses import dataclass
from pathlib import Path
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
    checkpoint_every: int = 0  # steps between resume checkpoints; 0 = none


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sample_seed(seed: int, stream: int, position: int) -> int:
    """The augmentation seed of the `position`-th image a stream draws: RandAugment's choices
    depend on (seed, stream, position) only, never on workers, prefetching or a resume."""
    return (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + position) % 2**64


class CycleBatchSampler:
    """Exactly `steps` batches of `batch_size` (index, augmentation seed) pairs, drawn epoch
    after epoch as seeded permutations (every image seen equally often, even when
    n < batch_size). Its own generator: `start` skips batches without loading anything, so a
    resumed run draws exactly the batches the uninterrupted one would."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int, stream: int, start: int = 0):
        self.n, self.batch_size, self.steps, self.seed, self.stream, self.start = n, batch_size, steps, seed, stream, start

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 1009 + self.stream)
        buf: list[int] = []
        for step in range(self.steps):
            while len(buf) < self.batch_size:
                buf.extend(torch.randperm(self.n, generator=g).tolist())
            batch, buf = buf[: self.batch_size], buf[self.batch_size :]
            if step >= self.start:
                first = step * self.batch_size
                yield [(i, sample_seed(self.seed, self.stream, first + j)) for j, i in enumerate(batch)]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example mean of -sum_c t_c log p_c."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def lr_at(step: int, cfg: FitConfig) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))


class SeededDataset(Dataset):
    """Wraps a dataset for CycleBatchSampler's (index, seed) keys: RandAugment draws from
    Python's and NumPy's global RNGs, seeded here per image, so its choices never depend on
    which process or worker loads the image, nor on a resume."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]):
        i, seed = key
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return self.ds[i]


def _loader(ds: Dataset, batch_size: int, cfg: FitConfig, stream: int, start: int) -> DataLoader:
    # num_workers=0: the images are tiny and in memory; workers would cost more than they save
    sampler = CycleBatchSampler(len(ds), batch_size, cfg.steps, cfg.seed, stream, start)
    return DataLoader(SeededDataset(ds), batch_sampler=sampler)


def _fault_kill_at(desc: str, step: int) -> None:
    """Fault injection for the kill tests: NS_FAULT_KILL_AT_STEP=<desc>:<k> (e.g.
    train_student@s1:5) SIGKILLs the process training `desc` just before step k."""
    if os.environ.get("NS_FAULT_KILL_AT_STEP") == f"{desc}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Resume:
    """Where the resume checkpoint lives and what it must have been made for."""
    path: Path
    fingerprint: dict


def _load_resume(resume: Resume) -> dict | None:
    if not resume.path.exists():
        return None
    from .io import load_checkpoint

    try:
        state = load_checkpoint(resume.path)  # weights_only: a file carrying code is refused, never run
    except ValueError as e:
        print(f"{e}; not used, starting from step 0", flush=True)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != resume.fingerprint:
        state = state if isinstance(state, dict) else {}
        old = state.get("fingerprint") or {}
        changed = sorted(k for k in set(old) | set(resume.fingerprint) if old.get(k) != resume.fingerprint.get(k))
        print(f"{resume.path}: made for other params or inputs (changed: {', '.join(changed)}); not used, starting from step 0", flush=True)
        return None
    return state


def fit(
    model: nn.Module,
    labeled: Dataset,
    cfg: FitConfig,
    pseudo: Dataset | None = None,
    on_log: Callable[[int, dict], None] | None = None,
    desc: str = "train",
    resume: Resume | None = None,
) -> dict:
    """Train `model` in place for cfg.steps steps; returns the last logged figures.

    With `resume`, a checkpoint (model, optimizer, RNG state, step, running sums, last
    figures) is written atomically every cfg.checkpoint_every steps; a later call with the
    same fingerprint continues from it and ends exactly as an uninterrupted run would. The
    caller removes the file once its outputs are written."""
    from .io import atomic_save_torch

    seed_everything(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    sums = torch.zeros(3)  # labeled loss, pseudo loss, labeled correct: summed on-device, read at log time
    last: dict = {}
    start = 0
    state = _load_resume(resume) if resume is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sums, last, start = state["sums"], state["last"], int(state["step"])
        print(f"{resume.path}: resuming at step {start}/{cfg.steps}", flush=True)
    lab_iter = iter(_loader(labeled, cfg.batch_size, cfg, 0, start))
    pse_iter = iter(_loader(pseudo, cfg.batch_size * cfg.batch_ratio, cfg, 1, start)) if pseudo is not None else None
    if state is not None:
        # after the iterators: creating one draws from the global RNG, which the saved
        # state already accounts for (dropout and stochastic depth draw from it too)
        torch.set_rng_state(state["torch_rng"])
    model.train()
    with progress(desc, total=cfg.steps) as bar:
        bar.advance(start)
        for step in range(start, cfg.steps):
            _fault_kill_at(desc, step)
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
            if resume is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                # after on_log: the RNG state saved includes whatever logging consumed
                atomic_save_torch(resume.path, {
                    "fingerprint": resume.fingerprint, "step": step + 1, "model": model.state_dict(),
                    "optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(), "sums": sums.clone(), "last": last,
                })
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
