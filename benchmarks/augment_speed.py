"""RandAugment alone: images/s of the PIL path (per image, as the loader runs it; also with every
op timm's own, as before noisystudent/lut_ops.py) vs the batched
tensor path (noisystudent/randaugment.py), on the same images with the same draws, side by
side in one process (a benchmark, run by hand; not in CI).

Each size is timed `--repeats` times, PIL and batched back to back; the figure is the median.
The batched path's output and timm's ops' are checked equal to the PIL path's before timing. On a GPU (`--device cuda`)
the batched path runs there (timed with a synchronize); PIL always runs on the CPU.

    python benchmarks/augment_speed.py                        # 1x16x16 (digits), 3x32x32, 3x224x224
    python benchmarks/augment_speed.py --device cuda --batch 256
"""
from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(
    sizes: Annotated[list[str], typer.Option(help="CxS images, repeat the option")] = ["1x16", "3x32", "3x224"],
    batch: Annotated[int, typer.Option(help="images per batched call (the training batch)")] = 128,
    batches: Annotated[int, typer.Option(help="batches timed per repeat")] = 4,
    repeats: int = 5,
    n: int = 2,
    m: float = 9.0,
    device: str = "cpu",
    threads: Annotated[int, typer.Option(help="torch threads (0: torch's default)")] = 0,
):
    from PIL import Image
    from timm.data.auto_augment import NAME_TO_OP

    from noisystudent import randaugment as R
    from noisystudent.transforms import RandAugment

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    ra = RandAugment(n, m)
    ra_timm = RandAugment(n, m)  # the PIL path with every op timm's own (before lut_ops.py)
    for op in ra_timm.ops:
        op.aug_fn = NAME_TO_OP[op.name]
    rows = []
    for spec in sizes:
        c, s = (int(v) for v in spec.split("x"))
        count = batch * batches
        a = np.random.default_rng(0).integers(0, 256, (count, s, s, c), dtype=np.uint8)
        pils = [Image.fromarray(im[..., 0] if c == 1 else im) for im in a]
        seeds = list(range(count))

        def run_pil(aug=ra):
            out = []
            for i, im in zip(seeds, pils):
                random.seed(i)
                out.append(np.asarray(aug(im)))
            return out

        def run_batched():
            outs = []
            for b in range(batches):
                plans = []
                for i in seeds[b * batch:(b + 1) * batch]:
                    random.seed(i)
                    plans.append(R.plan(ra))
                x = torch.from_numpy(a[b * batch:(b + 1) * batch]).permute(0, 3, 1, 2).contiguous().to(dev)
                outs.append(R.apply(x, plans))
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return outs

        ref = np.stack(run_pil())
        got = torch.cat(run_batched()).permute(0, 2, 3, 1).cpu().numpy()
        equal = bool(np.array_equal(ref.reshape(got.shape), got)) and bool(np.array_equal(ref, np.stack(run_pil(ra_timm))))
        pil_ips, bat_ips, timm_ips = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run_pil(ra_timm)
            timm_ips.append(count / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            run_pil()
            pil_ips.append(count / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            run_batched()
            bat_ips.append(count / (time.perf_counter() - t0))
        row = {"image": [c, s, s], "batch": batch, "device": str(dev), "threads": torch.get_num_threads(),
               "pil_timm_ops_images_per_s": round(statistics.median(timm_ips)),
               "pil_images_per_s": round(statistics.median(pil_ips)),
               "pil_over_timm_ops": round(statistics.median(p / t for p, t in zip(pil_ips, timm_ips)), 2), "batched_images_per_s": round(statistics.median(bat_ips)),
               "batched_over_pil": round(statistics.median(b / p for b, p in zip(bat_ips, pil_ips)), 2), "pixels_equal": equal}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| image | batch | device | threads | PIL, timm's ops img/s | PIL img/s | PIL / timm's ops | batched img/s | batched / PIL | pixels equal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'x'.join(map(str, r['image']))} | {r['batch']} | {r['device']} | {r['threads']} | {r['pil_timm_ops_images_per_s']:,} | "
              f"{r['pil_images_per_s']:,} | {r['pil_over_timm_ops']} | "
              f"{r['batched_images_per_s']:,} | {r['batched_over_pil']} | {r['pixels_equal']} |")


if __name__ == "__main__":
    typer.run(main)
