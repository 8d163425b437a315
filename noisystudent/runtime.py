"""Where and how the tensors run: device, mixed precision, memory format, DataLoader workers,
torch.compile, and torchrun's process group. Everything here changes speed, not the method;
`FitConfig` (train.py) holds the method.

Scale-out is PyTorch's own: under `torchrun` (WORLD_SIZE, RANK, LOCAL_RANK in the
environment) training joins a process group (NCCL on GPUs, gloo on CPUs) and wraps the model
in DistributedDataParallel; `relaunch` lets a stage command re-run itself under torchrun
when `train.nproc` / `pseudo.nproc` asks for several processes on this machine.
"""
from __future__ import annotations

import os
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

PRECISIONS = ("fp32", "bf16", "fp16", "mixed")


@dataclass(frozen=True)
class Runtime:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: torch.dtype | None = None  # autocast dtype; None = fp32
    channels_last: bool = False
    workers: int = 0  # training DataLoader workers (persistent, prefetching)
    compile: bool = False
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and MLflow records."""
        return self.rank == 0

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # a transforms.AugmentBatch: RandAugment and normalisation here
            x = x.finish(self.device)
        # non_blocking: with pinned host memory the copy overlaps compute (no host sync)
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def inputs(self, *xs) -> list:
        """`input` for several batches of one step (None passes through). Batched-augmentation
        batches are finished together: one RandAugment pass over all their images costs a fixed
        number of tensor ops, as one batch does (the same pixels: every image keeps its draws)."""
        aug = [x for x in xs if x is not None and not isinstance(x, torch.Tensor)]
        if len(aug) > 1:
            done = iter(aug[0].finish_together(aug, self.device))
            xs = tuple(x if x is None or isinstance(x, torch.Tensor) else next(done) for x in xs)
        return [None if x is None else self.input(x) for x in xs]

    def batched_augment(self, setting: str) -> bool:
        """speed.augment: batched RandAugment on a GPU (CPU-side PIL would starve it); on a CPU
        the loader's PIL ops are the faster (benchmarks/augment_speed.py)."""
        return setting == "batched" or (setting == "auto" and self.device.type == "cuda")

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def synchronize(self) -> None:
        """Wait for the device (timings); a no-op on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @classmethod
    def of(cls, model: torch.nn.Module) -> "Runtime":
        """fp32 on whatever device the model already is."""
        p = next(model.parameters(), None)
        return cls(p.device if p is not None else torch.device("cpu"))

    def describe(self) -> dict:
        """What may change the numbers (for resume fingerprints and MLflow)."""
        return {"device": self.device.type, "precision": str(self.amp).replace("torch.", "") if self.amp else "fp32",
                "channels_last": self.channels_last, "compile": self.compile, "world_size": self.world}


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            from .io import InputError

            raise InputError(f"train.device: cuda, but torch {torch.__version__} sees no CUDA device (use auto or cpu)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """fp32 -> None; bf16 / fp16 as named; mixed -> bf16 where the hardware has it (GPUs
    from Ampere on, CPUs with AVX-512 BF16 / AMX), else fp16 (with a gradient scaler)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "mixed":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def runtime(device: str = "auto", precision: str = "fp32", channels_last: bool = False, workers: int = 0,
            compile: bool = False, group: bool = True) -> Runtime:
    """The runtime for this process. Under torchrun, `group` joins the process group
    (training); without it (labeling, evaluation: ranks work apart) the process only takes
    its local rank's device and stays a world of one."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    dev = pick_device(device, local)
    if not group:
        return Runtime(dev, amp_dtype(precision, dev), channels_last, workers, compile)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, amp_dtype(precision, dev), channels_last, workers, compile, rank, world)


def relaunch(nproc: int) -> None:
    """Re-run this very command under torchrun with `nproc` processes on this machine. Does
    nothing when nproc is 1 or when already under torchrun (e.g. a multi-node job the user
    started with torchrun's own rendezvous options); otherwise never returns."""
    if nproc <= 1 or "WORLD_SIZE" in os.environ:
        return
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    target = ["-m", spec.name] if spec is not None else [sys.argv[0]]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *target, *sys.argv[1:]]
    print(f"relaunching under torchrun: {' '.join(cmd[1:])}", flush=True)
    os.execv(sys.executable, cmd)


def set_threads(n: int) -> None:
    """torch's intra-op threads (speed.num_threads; 0 keeps torch's default)."""
    if n:
        torch.set_num_threads(n)
