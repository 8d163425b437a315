"""Training throughput of the real loop vs a bare loop (a benchmark, run by hand; not in CI).

The real loop is `noisystudent.train.fit` on the prepared digits exactly as a student trains
(labeled + pseudo-labeled batches, RandAugment in PIL or batched (`--augment`), the default
student noise, the EMA); the bare loop is the same model, optimizer and batch shapes on random
tensors already in memory, the loop's own ceiling. They take turns every 5 steps inside one run
(the bare segment runs in the real loop's log callback), because this machine's speed drifts by
+/-15 % within a minute: timed back to back for half a minute each, pairs of runs gave ratios
from 0.73 to 1.02. Prints JSON per run (images/s of each over its segments) and the median of
`--repeats` runs' ratios.

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


SEGMENT = 5  # steps per segment: the real loop and the bare loop take turns this often


class BareLoop:
    """Forward + backward + optimizer step of `model` on tensors already in memory (on the
    device), with the real loop's precision, memory format and optimizer (`train.optimizer` of
    the same FitConfig): the real loop's ceiling. With `average`, it also keeps the EMA of
    `cfg.ema_decay` as the real loop does: the ceiling of the method's arithmetic, not of the loop."""

    def __init__(self, model, batch: int, chans: int, size: int, classes: int, rt, cfg, average: bool = False):
        from noisystudent.train import _ema, optimizer

        rt.model(model)
        self.model, self.rt = model, rt
        self.net = torch.compile(model) if rt.compile else model
        self.opt = optimizer(model, cfg)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp == torch.float16)
        self.ema = _ema(model, cfg.ema_decay) if average and cfg.ema_decay > 0 else None
        self.steps = 0
        self.x = rt.input(torch.randn(batch, chans, size, size))
        self.y = torch.softmax(torch.randn(batch, classes, device=rt.device), 1)
        model.train()

    def run(self, steps: int) -> float:
        """Seconds for `steps` steps, the device synchronised at both ends."""
        self.rt.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            with self.rt.autocast():
                loss = -(self.y * torch.log_softmax(self.net(self.x).float(), 1)).sum(1).mean()
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.steps += 1
            if self.ema is not None:
                self.ema.update(self.model, step=self.steps)
        self.rt.synchronize()
        return time.perf_counter() - t0


def interleaved(p, data_dir: Path, image_size: int | None, arch: str, batch: int, ratio: int, segments: int, rt,
                ema_decay: float, batched: bool = False, bare_ema: bool = False) -> tuple[list[float], list[float], float]:
    """One run of the real loop (`fit` on the prepared data exactly as a student trains) with a
    bare segment run inside every log callback: the two loops take turns every SEGMENT steps, so
    a machine whose speed drifts slows both alike. Returns each segment's seconds, real and bare,
    after one untimed segment of each (set-up and warm-up), and the seconds per bare segment with
    no real loop in the process (before and after it, averaged): the control that shows whether
    the real loop slows the bare one (a helper thread did, which flattered the ratio)."""
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
    fc = FitConfig(steps=SEGMENT * (segments + 1), batch_size=batch, lr=0.01, batch_ratio=ratio, log_every=SEGMENT, ema_decay=ema_decay)
    bare = BareLoop(create_model(arch, d.num_classes, d.in_chans, p.noise.dropout, p.noise.drop_path),
                    batch * (1 + ratio), d.in_chans, cfg["input_size"][-1], d.num_classes, rt, fc, average=bare_ema)
    real_s: list[float] = []
    bare_s: list[float] = []
    resumed = [0.0]

    def turn(step, *_):  # each log reads the running sums: the device has finished the real steps
        now = time.perf_counter()
        if step > SEGMENT:
            real_s.append(now - resumed[0])
        b = bare.run(SEGMENT)
        if step > SEGMENT:
            bare_s.append(b)
        resumed[0] = time.perf_counter()

    bare.run(SEGMENT)  # warm-up
    alone = bare.run(8 * SEGMENT) / 8
    fit(model, labeled, fc, pseudo, on_log=turn, rt=rt)
    alone = (alone + bare.run(8 * SEGMENT) / 8) / 2
    return real_s, bare_s, alone


def main(
    arch: Annotated[Optional[str], typer.Option(help="model (default: the last iteration's in params.yaml)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="labeled batch (default: train.batch_size)")] = None,
    segments: Annotated[int, typer.Option(min=2, help=f"timed segments of {SEGMENT} steps of each loop, per run")] = 40,
    repeats: Annotated[int, typer.Option(help="runs of the real loop, each interleaved with the bare one (the figure: their median ratio)")] = 5,
    precision: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 | mixed (both loops)")] = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    workers: Annotated[int, typer.Option(help="training DataLoader workers (real loop)")] = 0,
    augment: Annotated[str, typer.Option(help="RandAugment in the real loop: pil | batched (speed.augment)")] = "pil",
    ema_decay: Annotated[Optional[float], typer.Option(help="real loop's EMA (default: train.ema_decay)")] = None,
    bare_ema: Annotated[bool, typer.Option(help="the bare loop averages the weights too: the ceiling of the method's arithmetic")] = False,
    device: str = "auto",
    data: Annotated[Path, typer.Option(help="prepared data folder (run `dvc repro prepare` first)")] = ROOT / "data/prepared",
    synthetic: Annotated[int, typer.Option(help="> 0: train on this many random images instead of --data")] = 0,
    size: Annotated[int, typer.Option(help="--synthetic image side")] = 224,
    chans: Annotated[int, typer.Option(help="--synthetic channels")] = 3,
    params: Path = ROOT / "params.yaml",
):
    import os

    os.environ.setdefault("NS_QUIET", "1")
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
    images = SEGMENT * batch * (1 + ratio)
    runs = []
    for i in range(repeats):
        real_s, bare_s, alone = interleaved(p, data, image_size, arch, batch, ratio, segments, rt, ema, augment == "batched", bare_ema)
        r, b = images * len(real_s) / sum(real_s), images * len(bare_s) / sum(bare_s)
        runs.append((r, b, images / alone))
        print(json.dumps({"real_images_per_s": round(r, 1), "bare_images_per_s": round(b, 1), "ratio": round(r / b, 3),
                          "bare_alone_images_per_s": round(images / alone, 1),
                          # per segment pair, to see the spread
                          "segment_ratios_q25_q50_q75": [round(q, 3) for q in statistics.quantiles(
                              [b_ / r_ for r_, b_ in zip(real_s, bare_s)], n=4)]}), flush=True)
    r, b = statistics.median(x for x, _, _ in runs), statistics.median(y for _, y, _ in runs)
    print(json.dumps({"arch": arch, "batch": f"{batch} labeled + {batch * ratio} pseudo", "threads": torch.get_num_threads(),
                      **rt.describe(), "ema_decay": ema, "bare_ema": bare_ema, "workers": workers, "augment": augment, "segment_steps": SEGMENT,
                      "segments": segments, "repeats": repeats, "image": [d.in_chans, size, size],
                      "data": "synthetic" if synthetic else str(data),
                      "real_images_per_s": round(r, 1), "bare_images_per_s": round(b, 1),
                      # each run's real / bare over its interleaved segments: robust to the machine's drift
                      "run_ratios": [round(x / y, 3) for x, y, _ in runs],
                      "median_run_ratio": round(statistics.median(x / y for x, y, _ in runs), 3),
                      # ~1 unless the real loop slows the bare segments between its own (read before the ratio)
                      "bare_interleaved_over_alone": round(statistics.median(y / z for _, y, z in runs), 3)}))
    if synthetic:
        shutil.rmtree(data.parent, ignore_errors=True)


if __name__ == "__main__":
    typer.run(main)
