"""What the optimizer's weight decay and the weight averaging (EMA) cost a bare training step
(a benchmark, run by hand; not in CI).

Three bare loops of `train_speed.BareLoop` (forward + backward + SGD on tensors in memory):
without weight decay, with the real loop's, and with it plus the EMA the real loop keeps. They
take turns every 5 steps in one process, so the machine's drift slows all three alike; the
figure is each one's median seconds per segment. Tells whether a gap between the real loop and
the bare one is the loop's (data, bookkeeping) or the method's arithmetic.

    python benchmarks/bare_variants.py --arch resnet18 --size 32 --chans 3
"""
from __future__ import annotations

import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train_speed import SEGMENT, BareLoop  # noqa: E402  (benchmarks/train_speed.py)


def main(
    arch: str = "resnet18",
    batch: Annotated[int, typer.Option(help="images per step (labeled + pseudo-labeled)")] = 128,
    size: int = 32,
    chans: int = 3,
    classes: int = 10,
    turns: Annotated[int, typer.Option(min=3, help=f"timed segments of {SEGMENT} steps of each loop")] = 12,
    ema_decay: float = 0.999,
):
    import os

    os.environ.setdefault("NS_QUIET", "1")
    from noisystudent.models import create_model
    from noisystudent.runtime import runtime
    from noisystudent.train import FitConfig

    rt = runtime("auto")
    real = FitConfig(steps=1, batch_size=batch, lr=0.01, ema_decay=ema_decay)  # the real loop's optimizer settings
    loops = {}
    for name, cfg, average in (("no weight decay", replace(real, weight_decay=0.0), False), ("weight decay", real, False),
                               ("weight decay + EMA", real, True)):
        loop = BareLoop(create_model(arch, classes, chans, 0.5, 0.2), batch, chans, size, classes, rt, cfg, average)
        loop.run(SEGMENT)  # warm-up
        loops[name] = loop
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(turns):
        for name, loop in loops.items():
            seconds[name].append(loop.run(SEGMENT))
    print(json.dumps({"arch": arch, "batch": batch, "image": [chans, size, size], "threads": torch.get_num_threads(),
                      "segment_steps": SEGMENT, "turns": turns,
                      "images_per_s": {name: round(SEGMENT * batch / statistics.median(s), 1) for name, s in seconds.items()}}))


if __name__ == "__main__":
    typer.run(main)
