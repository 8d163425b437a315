"""Checkpoints: the trained model a stage writes, and the resume state of a training run.

A model checkpoint is a plain, self-describing dict (nanoGPT's habit): the architecture, the
classes and input channels, the data config that preprocesses its inputs, the recipe that
trained it, and CPU tensors. It loads with `weights_only=True`: a file carrying pickled code
is refused, never run. Resume checkpoints live beside the model in `.resume/` (not a DVC
output: DVC neither deletes them before a re-run nor caches them) and carry the fingerprint of
the run they belong to; any other run ignores them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .io import InputError, atomic_save_torch


class CheckpointError(InputError):
    pass


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found: did its training stage run?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError for anything beyond plain data
        raise CheckpointError(f"{path}: refused to load (not a plain-data checkpoint): {e}") from None


def cpu_state(model: nn.Module) -> dict:
    # plain contiguous CPU tensors: a checkpoint loads anywhere, whatever device / memory format trained it
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_model(path: Path, predictor: nn.Module, raw: nn.Module, meta: dict) -> None:
    """`predictor`: the weights that predict (the EMA copy when there is one); the raw
    training weights are kept beside them when they differ. `meta`: arch, num_classes,
    in_chans, class_names, name, data_config, recipe."""
    ckpt = {**meta, "state_dict": cpu_state(predictor)}
    if predictor is not raw:
        ckpt["state_dict_raw"] = cpu_state(raw)
    atomic_save_torch(path, ckpt)


def _check_fields(path: Path, ckpt: dict) -> None:
    """What goes to timm is checked first: an architecture name, never a `hf-hub:` or
    `local-dir:` source (network, files outside the repository), and sane sizes."""
    import re

    import timm

    arch, classes, chans = ckpt.get("arch"), ckpt.get("num_classes"), ckpt.get("in_chans")
    if not isinstance(arch, str) or not re.fullmatch(r"[A-Za-z0-9_.]+", arch) or not timm.is_model(arch):
        raise CheckpointError(f"{path}: arch {arch!r} is not a registered timm architecture name")
    if not isinstance(classes, int) or not 2 <= classes <= 1_000_000:
        raise CheckpointError(f"{path}: num_classes {classes!r} is not an integer from 2 to 1,000,000")
    if chans not in (1, 3):
        raise CheckpointError(f"{path}: in_chans {chans!r} is not 1 or 3")
    names = ckpt.get("class_names")  # absent from checkpoints made before they carried them
    if names is not None and (not isinstance(names, list) or len(names) != classes or not all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{path}: class_names is not a list of {classes} names")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: no state_dict of weights")


def load_model(path: Path, noised: bool = False) -> tuple[nn.Module, dict]:
    """The model in eval mode, un-noised (dropout and stochastic depth 0), and its checkpoint;
    `noised` (the noised-teacher ablation): built with the dropout and stochastic depth of the
    recipe it was trained with."""
    from .models import create_model

    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a model checkpoint (a {type(ckpt).__name__}, not a dict)")
    _check_fields(path, ckpt)
    noise = ckpt.get("recipe", {}).get("noise", {}) if noised else {}
    model = create_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_chans"], noise.get("dropout", 0.0), noise.get("drop_path", 0.0))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def resume_path(out: Path) -> Path:
    return out.parent / ".resume" / out.name


@dataclass(frozen=True)
class Resume:
    """Where the resume checkpoint lives and what it must have been made for."""
    path: Path
    fingerprint: dict


def load_resume(resume: Resume) -> dict | None:
    """The saved state if it was made for this very run (same fingerprint), else None."""
    if not resume.path.exists():
        return None
    try:
        state = load_checkpoint(resume.path)
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
