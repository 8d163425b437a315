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
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from .checkpoint import Resume, load_resume
from .data import sample_seed
from .progress import progress
from .runtime import Runtime


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
    ema_decay: float = 0.0  # 0 = no EMA; else predictions use the EMA weights (official code)
    # > 0 (an ablation, pre-train then fine-tune): steps before this one learn from the pseudo
    # labels alone, the rest from the labeled images alone; 0 = joint training (the paper)
    pretrain_steps: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class CycleBatchSampler:
    """Exactly `steps` batches of `batch_size` (index, augmentation seed) pairs, drawn epoch
    after epoch as seeded permutations (every image seen equally often, even when
    n < batch_size). Its own generator: `start` skips batches without loading anything, so a
    resumed run draws exactly the batches the uninterrupted one would.

    Under DDP every rank draws the same global batch and keeps its slice rank::world, with
    seeds from the global positions: the images and their augmentations are those of a
    single process, whatever the number of processes."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int, stream: int, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.steps, self.seed, self.stream, self.start = n, batch_size, steps, seed, stream, start
        self.rank, self.world = rank, world

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
                yield [(i, sample_seed(self.seed, self.stream, first + j)) for j, i in enumerate(batch)][self.rank :: self.world]


def lr_at(step: int, cfg: FitConfig) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))


class SeededDataset(Dataset):
    """Lets any map-style dataset take the sampler's (index, seed) keys: seeds Python's and
    NumPy's RNGs per item, then collates. ImageDataset takes such keys itself, a batch at a
    time."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, keys: list[tuple[int, int]]):
        items = []
        for i, seed in keys:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            items.append(self.ds[i])
        return default_collate(items)


def _loader(ds: Dataset, batch_size: int, cfg: FitConfig, rt: Runtime, stream: int, start: int) -> DataLoader:
    from .data import ImageDataset, loader

    if batch_size % rt.world:
        raise ValueError(f"batch of {batch_size} does not split over {rt.world} processes: make it a multiple (train.batch_size)")
    sampler = CycleBatchSampler(len(ds), batch_size, cfg.steps, cfg.seed, stream, start, rt.rank, rt.world)
    # workers pay off where decoding is heavy (files, big images, a GPU waiting); on a small
    # CPU with in-memory images they compete with the model for the same cores (default 0)
    return loader(ds if isinstance(ds, ImageDataset) else SeededDataset(ds), batch_sampler=sampler, num_workers=rt.workers,
                  persistent_workers=rt.workers > 0, prefetch_factor=4 if rt.workers else None,
                  pin_memory=rt.pin_memory)


def optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.SGD:
    """SGD with Nesterov momentum and weight decay, as `fit` trains (benchmarks build theirs here too)."""
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


def _fault_kill_at(desc: str, step: int) -> None:
    """Fault injection for the kill tests: NS_FAULT_KILL_AT_STEP=<desc>:<k> (e.g.
    train_student@s1:5) SIGKILLs the process training `desc` just before step k."""
    if os.environ.get("NS_FAULT_KILL_AT_STEP") == f"{desc}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def fit(
    model: nn.Module,
    labeled: Dataset,
    cfg: FitConfig,
    pseudo: Dataset | None = None,
    on_log: Callable[[int, dict, nn.Module], dict | None] | None = None,
    desc: str = "train",
    resume: Resume | None = None,
    rt: Runtime | None = None,
) -> tuple[nn.Module, dict]:
    """Train `model` in place for cfg.steps steps. Returns (the model to predict with: its EMA
    copy when cfg.ema_decay > 0, else `model`; the logged figures, one dict per log step,
    `step` included: the training curves). `on_log(step, figures, that model)` runs on rank 0
    only; the figures it returns (e.g. a validation accuracy) join that step's row.

    The hot loop never waits for the device: running sums stay on it and are read every
    cfg.log_every steps (the finite-loss check happens then too). Under torchrun each rank
    trains on its slice of every global batch with DistributedDataParallel (gradients
    averaged), so the global batch and the images seen equal a single process's.

    With `resume`, a checkpoint (model, EMA, optimizer, scaler, every rank's RNG state,
    step, running sums, figures so far) is written atomically by rank 0 every
    cfg.checkpoint_every steps; a later call with the same fingerprint continues from it and
    ends exactly as an uninterrupted run would. The caller removes it once its outputs exist."""
    from torch.nn.parallel import DistributedDataParallel

    from .io import atomic_save_torch

    rt = rt or Runtime()
    seed_everything(cfg.seed + 7919 * rt.rank)  # dropout / stochastic depth masks differ per rank
    rt.model(model)
    opt = optimizer(model, cfg)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp == torch.float16)  # fp16 only: bf16 needs none
    ema = _ema(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    sums = torch.zeros(3, device=rt.device)  # labeled loss, pseudo loss, labeled correct: read at log time only
    history: list[dict] = []
    start = 0
    state = load_resume(resume) if resume is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        sums, history, start = state["sums"].to(rt.device), state["history"], int(state["step"])
        if rt.main:
            print(f"{resume.path}: resuming at step {start}/{cfg.steps}", flush=True)
    lab_iter = iter(_loader(labeled, cfg.batch_size, cfg, rt, 0, start))
    pse_iter = iter(_loader(pseudo, cfg.batch_size * cfg.batch_ratio, cfg, rt, 1, start)) if pseudo is not None else None
    if state is not None:
        # after the iterators: creating one draws from the global RNG, which the saved
        # state already accounts for (dropout and stochastic depth draw from it too)
        _set_rng(state["rng"][rt.rank], rt.device)
    net = model
    if rt.world > 1:
        net = DistributedDataParallel(model, device_ids=[rt.device] if rt.device.type == "cuda" else None)
    if rt.compile:
        net = torch.compile(net)
    predictor = ema.module if ema is not None else model
    model.train()
    # an epoch = one pass over the set that sets the budget: the pseudo-labeled one for a student
    main_set, main_batch = (pseudo, cfg.batch_size * cfg.batch_ratio) if pseudo is not None else (labeled, cfg.batch_size)
    per_step = cfg.batch_size * (1 + (cfg.batch_ratio if pseudo is not None else 0))
    with progress(desc, total=cfg.steps, enabled=rt.main, unit="img", per=per_step) as bar:
        bar.advance(start)
        for step in range(start, cfg.steps):
            _fault_kill_at(desc, step)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            # both batches are drawn at every step, used or not: the streams stay those of step
            # `step`, so a resumed run draws what an uninterrupted one would
            x_l, y_l = next(lab_iter)
            x_u, y_u = next(pse_iter) if pse_iter is not None else (None, None)
            x_l, x_u = rt.inputs(x_l, x_u)  # batched RandAugment: both batches in one pass
            y_l = y_l.to(rt.device, non_blocking=True)
            y_u = y_u.to(rt.device, non_blocking=True) if y_u is not None else None
            phase = "joint" if not cfg.pretrain_steps else "pseudo" if step < cfg.pretrain_steps else "labeled"
            with rt.autocast():
                if pse_iter is None or phase == "labeled":
                    logits_l, loss_u = net(x_l).float(), torch.zeros((), device=rt.device)
                    loss_l = F.cross_entropy(logits_l, y_l)
                    loss = loss_l
                elif phase == "pseudo":  # pre-training: the pseudo labels alone, as a supervised loss
                    logits_l, y_l = net(x_u).float(), y_u  # train_acc is then on the pseudo batch
                    loss_u, loss_l = F.cross_entropy(logits_l, y_u), torch.zeros((), device=rt.device)
                    loss = loss_u
                else:
                    logits = net(torch.cat([x_l, x_u])).float()
                    logits_l, logits_u = logits[: len(x_l)], logits[len(x_l) :]
                    loss_u = F.cross_entropy(logits_u, y_u)
                    loss_l = F.cross_entropy(logits_l, y_l)
                    loss = loss_l + cfg.batch_ratio * loss_u
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update(model, step=step + 1)
            with torch.no_grad():
                sums += torch.stack([loss_l.detach(), loss_u.detach(), (logits_l.argmax(1) == y_l.argmax(1)).float().mean()])
            bar.advance()
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                if rt.world > 1:
                    torch.distributed.all_reduce(sums)
                    sums /= rt.world
                n = (step % cfg.log_every) + 1
                ll, lu, acc = (sums / n).tolist()
                sums.zero_()
                figs = {"epoch": (step + 1) * main_batch / len(main_set), "loss_labeled": ll, "loss_pseudo": lu,
                        "train_acc": acc, "lr": opt.param_groups[0]["lr"]}
                if not math.isfinite(ll + lu):
                    raise FloatingPointError(f"loss became {ll + lu} at step {step + 1}: lower train.lr")
                if on_log is not None and rt.main:
                    figs.update(on_log(step + 1, figs, predictor) or {})  # leaves the modes as it found them
                history.append({"step": step + 1, **figs})
                bar.show(epoch=round(figs["epoch"], 1), loss=ll + cfg.batch_ratio * lu, **{k: figs[k] for k in ("val_acc",) if k in figs})
            if resume is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                # after on_log: the RNG state saved includes whatever logging consumed
                rngs = _gather(_get_rng(rt.device), rt)
                if rt.main:
                    atomic_save_torch(resume.path, {
                        "fingerprint": resume.fingerprint, "step": step + 1, "model": model.state_dict(),
                        "ema": ema.module.state_dict() if ema is not None else None, "optimizer": opt.state_dict(),
                        "scaler": scaler.state_dict(), "rng": rngs, "sums": sums.cpu(), "history": history,
                    })
    return predictor.eval(), history


class _Ema(ModelEmaV3):
    """timm's ModelEmaV3 (warmed-up decay, buffers averaged too), with the tensor lists it
    averages gathered once instead of two state_dict() walks per step, which cost more than
    the averaging itself for small models."""

    _pairs: tuple | None = None

    def apply_update_(self, model: nn.Module, decay: float) -> None:
        if self._pairs is None:
            pairs = list(zip(self.module.state_dict().values(), model.state_dict().values()))  # share storage
            floats = [(e, m) for e, m in pairs if e.is_floating_point()]
            self._pairs = ([e for e, _ in floats], [m for _, m in floats], [(e, m) for e, m in pairs if not e.is_floating_point()])
        ema_f, model_f, others = self._pairs
        torch._foreach_lerp_(ema_f, model_f, weight=1.0 - decay)
        for e, m in others:
            e.copy_(m)


def _ema(model: nn.Module, decay: float) -> _Ema:
    return _Ema(model, decay=decay, use_warmup=True)


def _get_rng(device: torch.device) -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather(obj, rt: Runtime) -> list:
    """Every rank's `obj`, in rank order (collective: all ranks call it at the same step)."""
    if rt.world == 1:
        return [obj]
    out: list = [None] * rt.world
    torch.distributed.all_gather_object(out, obj)
    return out
