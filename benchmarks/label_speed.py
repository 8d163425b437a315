"""Labeling throughput of the real stage vs a bare forward pass (a benchmark, run by hand;
not in CI).

Real: `pipeline.pseudo_label_stage` (the un-noised teacher over the whole pool: the id-keyed
loader, the model's own preprocessing, softmax, Parquet parts written atomically) on a
synthetic prepared pool shaped like the default data (N grayscale 16x16 images, uint8 in
`images.npy`). Bare: the same model, precision and batch size on random tensors already in
memory, under inference_mode: the loop's own ceiling. One untimed warm-up run of each, then
`--repeats` interleaved runs, median; prints JSON. On a GPU (picked up automatically) the same script measures CUDA.

    python benchmarks/label_speed.py                         # default teacher, pseudo.batch_size
    python benchmarks/label_speed.py --precision bf16 --arch efficientnet_b0 --size 224 --chans 3 --n 20000
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthetic import synthetic_prepared  # noqa: E402  (benchmarks/synthetic.py)


def teacher_checkpoint(path: Path, arch: str, chans: int, size: int, classes: int = 10, files: bool = False) -> None:
    """A random-weights teacher checkpoint; `files`: preprocessing for image files (resize + crop,
    as `prepare` gives folders) instead of tight arrays already `size` pixels."""
    from noisystudent.models import create_model
    from noisystudent.transforms import data_config

    model = create_model(arch, classes, chans)
    torch.save({"arch": arch, "num_classes": classes, "in_chans": chans, "name": "bench",
                "class_names": [f"c{i}" for i in range(classes)],
                "data_config": data_config(arch, chans, size, None if files else size), "state_dict": model.state_dict()}, path)


def bare_forward(model, n: int, batch: int, chans: int, size: int, rt) -> float:
    x = rt.input(torch.randn(batch, chans, size, size))
    model.eval()
    steps = max(1, n // batch)
    with torch.inference_mode():
        for i in range(steps + 3):
            if i == 3:  # warm-up outside the timing
                rt.synchronize()
                t0 = time.perf_counter()
            with rt.autocast():
                model(x).float().softmax(1)
    rt.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main(
    arch: Annotated[Optional[str], typer.Option(help="teacher model (default: teacher.arch in params.yaml)")] = None,
    n: Annotated[int, typer.Option(help="images in the pool")] = 100_000,
    size: Annotated[int, typer.Option(help="image side (pixels)")] = 16,
    chans: Annotated[int, typer.Option(help="1 (grayscale) or 3")] = 1,
    batch_size: Annotated[Optional[int], typer.Option(help="default: pseudo.batch_size")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32 | bf16 | fp16 | mixed (default: pseudo.precision)")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers (default: speed.data_workers)")] = None,
    channels_last: Annotated[Optional[bool], typer.Option(help="default: train.channels_last")] = None,
    repeats: int = 3,
    params: Path = ROOT / "params.yaml",
):
    os.environ.setdefault("NS_QUIET", "1")
    from noisystudent.models import create_model
    from noisystudent.params import load_params
    from noisystudent.inference import inference_runtime
    from stages.pseudo_label import run as pseudo_label_stage

    p = load_params(params)
    arch = arch or p.teacher.arch
    pseudo = p.pseudo.model_copy(update={k: v for k, v in {"batch_size": batch_size, "precision": precision}.items() if v is not None})
    speed = p.speed.model_copy(update={"data_workers": p.speed.data_workers if workers is None else workers})
    train = p.train.model_copy(update={"channels_last": p.train.channels_last if channels_last is None else channels_last})
    p = p.model_copy(update={"pseudo": pseudo, "speed": speed, "train": train, "mlflow": p.mlflow.model_copy(update={"enabled": False})})
    rt = inference_runtime(p.train.device, p.pseudo.precision, p.train.channels_last)
    work = Path(tempfile.mkdtemp(prefix="label_speed-"))
    try:
        synthetic_prepared(work / "data", n, size, chans)
        teacher_checkpoint(work / "teacher.pt", arch, chans, size)
        model = rt.model(create_model(arch, 10, chans))
        # warm-up outside the timing, as the bare loop's: the first run in a process pays
        # one-time costs (oneDNN / cuDNN kernel selection per batch shape, page cache)
        pseudo_label_stage(p, "bench", work / "data", work / "teacher.pt", work / "warmup")
        real, bare = [], []
        for r in range(repeats):
            out = work / f"labels{r}"
            t0 = time.perf_counter()
            rows = pseudo_label_stage(p, "bench", work / "data", work / "teacher.pt", out)
            real.append(rows / (time.perf_counter() - t0))
            bare.append(bare_forward(model, n, p.pseudo.batch_size, chans, size, rt))
            shutil.rmtree(out)
            print(json.dumps({"real_images_per_s": round(real[-1], 1), "bare_images_per_s": round(bare[-1], 1)}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r, b = statistics.median(real), statistics.median(bare)
    print(json.dumps({"arch": arch, "images": n, "image": [chans, size, size], "batch": p.pseudo.batch_size, "workers": p.speed.data_workers,
                      "threads": torch.get_num_threads(), **rt.describe(), "repeats": repeats,
                      "real_images_per_s": round(r, 1), "bare_images_per_s": round(b, 1), "ratio": round(r / b, 3),
                      # each repeat's real / bare, measured back to back: robust to the machine's drift
                      "pair_ratios": [round(x / y, 3) for x, y in zip(real, bare)],
                      "median_pair_ratio": round(statistics.median(x / y for x, y in zip(real, bare)), 3)}))


if __name__ == "__main__":
    typer.run(main)
