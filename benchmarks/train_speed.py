"""Training throughput of the real loop vs a bare loop (a benchmark, run by hand; not in CI).

The real loop is `noisystudent.train.fit` on the prepared digits exactly as a student trains
(labeled + pseudo-labeled batches, RandAugment in PIL or batched (`--augment`), the default student noise); the
bare loop is the same model, optimizer and batch shapes on random tensors already in memory,
the loop's own ceiling. Both run in this process, back to back (in alternating order), `--repeats`
times, each timed over `--steps` steps after 5 untimed ones (the real loop from its log at step 5,
so a run's set-up is not counted); prints JSON with images/s of each and the median of the
pairs' ratios, the figure to read on a machine whose speed drifts.

    python benchmarks/train_speed.py                      # default student, default batch
    python benchmarks/train_speed.py --arch ns_resnet_s --batch-size 64
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synthetic import synthetic_prepared  # noqa: E402  (benchmarks/synthetic.py)


WARMUP = 5  # untimed first steps of either loop


def bare_loop(model, batch: int, chans: int, size: int, classes: int, steps: int, rt) -> float:
    """images/s of forward + backward + SGD step on tensors already in memory (on the device),
    with the same precision and memory format as the real loop."""
    rt.model(model)
    net = torch.compile(model) if rt.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp == torch.float16)
    x = rt.input(torch.randn(batch, chans, size, size))
    y = torch.softmax(torch.randn(batch, classes, device=rt.device), 1)
    model.train()
    for i in range(steps + WARMUP):
        if i == WARMUP:  # warm-up outside the timing
            rt.synchronize()
            t0 = time.perf_counter()
        with rt.autocast():
            loss = -(y * torch.log_softmax(net(x).float(), 1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    rt.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def real_loop(p, data_dir: Path, image_size: int | None, arch: str, batch: int, ratio: int, steps: int, rt, ema_decay: float,
              batched: bool = False) -> float:
    from noisystudent import data as D
    from noisystudent.models import create_model
    from noisystudent.train import FitConfig, fit
    from noisystudent.transforms import data_config, train_transform

    d = D.Prepared.load(data_dir)
    cfg = data_config(arch, d.in_chans, image_size, d.image_size)
    tf = train_transform(cfg, p.noise.randaugment_n, p.noise.randaugment_m, batched=batched)
    lab = d.split("labeled")
    unl = d.split("unlabeled")
    labeled = D.ImageDataset(d.images, lab["id"].to_numpy(), D.one_hot(lab["label"].to_numpy(), d.num_classes, 0.1), tf)
    probs = np.full((len(unl), d.num_classes), 1.0 / d.num_classes, dtype=np.float32)
    pseudo = D.ImageDataset(d.images, unl["id"].to_numpy(), probs, tf)
    model = create_model(arch, d.num_classes, d.in_chans, p.noise.dropout, p.noise.drop_path)
    # timed from the end of step WARMUP to the last step, as the bare loop: the steady state, not
    # the set-up of a run (loaders, EMA copy) that a real run of thousands of steps amortises.
    # Each log reads the running sums, so the device has finished the steps it reports.
    fc = FitConfig(steps=WARMUP + steps, batch_size=batch, lr=0.01, batch_ratio=ratio, log_every=WARMUP, ema_decay=ema_decay)
    marks: list[tuple[int, float]] = []  # (step, time) at each log
    fit(model, labeled, fc, pseudo, on_log=lambda step, *_: marks.append((step, time.perf_counter())), rt=rt)
    (s0, t0), (s1, t1) = marks[0], marks[-1]
    return (s1 - s0) * batch * (1 + ratio) / (t1 - t0)


def main(
    arch: Annotated[Optional[str], typer.Option(help="model (default: the last iteration's in params.yaml)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="labeled batch (default: train.batch_size)")] = None,
    steps: Annotated[int, typer.Option(help="timed steps of each loop, per repeat")] = 30,
    repeats: Annotated[int, typer.Option(help="real/bare pairs, back to back (the figure: their median ratio)")] = 15,
    precision: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 | mixed (both loops)")] = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    workers: Annotated[int, typer.Option(help="training DataLoader workers (real loop)")] = 0,
    augment: Annotated[str, typer.Option(help="RandAugment in the real loop: pil | batched (speed.augment)")] = "pil",
    ema_decay: Annotated[Optional[float], typer.Option(help="real loop's EMA (default: train.ema_decay)")] = None,
    device: str = "auto",
    data: Annotated[Path, typer.Option(help="prepared data folder (run `dvc repro prepare` first)")] = ROOT / "data/prepared",
    synthetic: Annotated[int, typer.Option(help="> 0: train on this many random images instead of --data")] = 0,
    size: Annotated[int, typer.Option(help="--synthetic image side")] = 224,
    chans: Annotated[int, typer.Option(help="--synthetic channels")] = 3,
    params: Path = ROOT / "params.yaml",
):
    import os

    os.environ.setdefault("NS_QUIET", "1")
    from noisystudent.models import create_model
    from noisystudent.params import load_params
    from noisystudent.runtime import runtime

    p = load_params(params)
    arch = arch or list(p.iterations.values())[-1].arch
    batch = batch_size or p.train.batch_size
    ratio = p.student.batch_ratio
    from noisystudent.data import Prepared

    image_size = p.data.image_size
    if synthetic:
        data, image_size = Path(tempfile.mkdtemp(prefix="train_speed-")) / "data", None
        synthetic_prepared(data, synthetic, size, chans)
    d = Prepared.load(data)
    size = image_size or d.image_size
    rt = runtime(device, precision, channels_last, workers, compile)
    ema = p.train.ema_decay if ema_decay is None else ema_decay
    real, bare = [], []
    for i in range(repeats):
        run_real = lambda: real.append(real_loop(p, data, image_size, arch, batch, ratio, steps, rt, ema, augment == "batched"))  # noqa: E731
        model = create_model(arch, d.num_classes, d.in_chans, p.noise.dropout, p.noise.drop_path)
        run_bare = lambda: bare.append(bare_loop(model, batch * (1 + ratio), d.in_chans, size, d.num_classes, steps, rt))  # noqa: E731
        for run in ((run_real, run_bare) if i % 2 == 0 else (run_bare, run_real)):  # alternate: drift cancels
            run()
        print(json.dumps({"real_images_per_s": round(real[-1], 1), "bare_images_per_s": round(bare[-1], 1)}), flush=True)
    r, b = statistics.median(real), statistics.median(bare)
    print(json.dumps({"arch": arch, "batch": f"{batch} labeled + {batch * ratio} pseudo", "threads": torch.get_num_threads(),
                      **rt.describe(), "ema_decay": ema, "workers": workers, "augment": augment, "steps": steps, "repeats": repeats,
                      "image": [d.in_chans, size, size], "data": "synthetic" if synthetic else str(data),
                      "real_images_per_s": round(r, 1), "bare_images_per_s": round(b, 1), "ratio": round(r / b, 3),
                      # each repeat's real / bare, measured back to back: robust to the machine's drift
                      "pair_ratios": [round(x / y, 3) for x, y in zip(real, bare)],
                      "median_pair_ratio": round(statistics.median(x / y for x, y in zip(real, bare)), 3)}))
    if synthetic:
        shutil.rmtree(data.parent, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
