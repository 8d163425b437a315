"""Exporting a trained model for use outside the pipeline:

- timm: `model.safetensors` + `config.json` as timm writes them (`timm.models.save_for_hf`), with
  the data config the model was trained with and its class names; `timm.create_model(
  "local-dir:<folder>", pretrained=True)` loads it (for the ns_resnet_* models, after `import
  noisystudent.models`, which registers them);
- ONNX: `model.onnx` (torch.onnx's exporter, the batch dimension dynamic), checked against
  PyTorch's outputs with onnxruntime.

Both are written into a temporary folder and renamed into place whole (io.atomic_dir).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def example_input(ckpt: dict, n: int = 8, seed: int = 0) -> torch.Tensor:
    """A seeded batch in the model's input shape (values as normalised pixels would have)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *ckpt["data_config"]["input_size"], generator=g)


def save_timm(model: torch.nn.Module, ckpt: dict, folder: Path) -> None:
    from timm.models import save_for_hf

    dc = ckpt["data_config"]
    save_for_hf(model, str(folder), model_config={"label_names": ckpt.get("class_names")},
                model_args={"num_classes": ckpt["num_classes"], "in_chans": ckpt["in_chans"]}, safe_serialization=True,
                data_config={"input_size": tuple(dc["input_size"]), "mean": tuple(dc["mean"]), "std": tuple(dc["std"]),
                             "interpolation": dc["interpolation"], "crop_pct": dc["crop_pct"]})


def save_onnx(model: torch.nn.Module, ckpt: dict, path: Path) -> None:
    x = example_input(ckpt, 2)
    # one file, unless the weights pass protobuf's 2 GB limit (then beside it, model.onnx.data)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5e9
    torch.onnx.export(model, (x,), str(path), input_names=["pixels"], output_names=["logits"], dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=big, verbose=False)


def onnx_max_abs_diff(model: torch.nn.Module, ckpt: dict, path: Path, n: int = 8) -> float:
    """Largest |logit difference| between onnxruntime on `path` and PyTorch, on a seeded batch of n."""
    import onnxruntime as ort

    x = example_input(ckpt, n, seed=1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    return float(np.abs(got - want).max())


def timm_max_abs_diff(model: torch.nn.Module, ckpt: dict, folder: Path, n: int = 8) -> float:
    """Largest |logit difference| between the timm export loaded back by timm and the model."""
    import timm

    from . import models  # noqa: F401 (registers ns_resnet_*)

    back = timm.create_model(f"local-dir:{Path(folder).resolve()}", pretrained=True).eval()
    x = example_input(ckpt, n, seed=2)
    with torch.inference_mode():
        return float((back(x) - model(x)).abs().max())


def export(model: torch.nn.Module, ckpt: dict, out: Path, formats: list[str]) -> dict[str, float]:
    """Write the `formats` ('timm', 'onnx') of the model into the folder `out`, replaced whole;
    returns each format's max |logit difference| from PyTorch, measured on the written files."""
    from .io import _mode, atomic_dir

    diffs = {}
    with atomic_dir(out) as tmp:
        if "timm" in formats:
            save_timm(model, ckpt, tmp)
            diffs["timm"] = timm_max_abs_diff(model, ckpt, tmp)
        if "onnx" in formats:
            save_onnx(model, ckpt, tmp / "model.onnx")
            diffs["onnx"] = onnx_max_abs_diff(model, ckpt, tmp / "model.onnx")
        for f in tmp.iterdir():  # safetensors writes 0600: others may need to read an export
            os.chmod(f, _mode(0o666))
    return diffs
