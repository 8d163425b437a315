"""DDP with N processes vs 1 on this machine (a benchmark, run by hand; not in CI).

Trains one student of the default pipeline (`--iteration`, default the last: the biggest
model) through its real stage command, once with train.nproc=1 and once with train.nproc=N
(the stage re-runs itself under torchrun: DistributedDataParallel, gloo on CPUs, NCCL on
GPUs), for each seed. Same global batch, same steps, same images and augmentations; only
BatchNorm statistics (per process) and dropout masks differ. Reports images/s, wall time, the
time at which validation accuracy first reached `--target`, and test accuracy of the saved
(EMA) model; mean and std over seeds. Needs `dvc repro` to have run (data/prepared and the
iteration's selected pseudo labels). Prints JSON.

    python benchmarks/ddp_speed.py --seeds 0 --seeds 1 --seeds 2
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train_once(params: Path, iteration: str, work: Path, nproc: int, seed: int, target: float) -> dict:
    raw = yaml.safe_load(params.read_text())
    raw["train"].update(nproc=nproc, seed=seed)
    raw["speed"]["checkpoint_every"] = 0
    raw["mlflow"]["enabled"] = False
    cfg = work / f"params-{nproc}-{seed}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out, metrics = work / f"{iteration}-{nproc}-{seed}.pt", work / f"{iteration}-{nproc}-{seed}.json"
    cmd = [sys.executable, "-m", "stages.train", "--model", iteration, "--data", "data/prepared",
           "--selected", f"data/pseudo/{iteration}/selected.parquet", "--out", str(out), "--metrics", str(metrics), "--params", str(cfg)]
    t0 = time.perf_counter()
    reached = None
    with subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "NS_QUIET": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # the stage logs val_acc every train.log_every steps
            m = re.search(r"val_acc=([0-9.]+)", line)
            if m and reached is None and float(m.group(1)) >= target:
                reached = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    from noisystudent.params import load_params
    from stages.evaluate import run as evaluate_stage

    test = evaluate_stage(load_params(cfg), iteration, ROOT / "data/prepared", out, work / "eval.json", work / "preds.csv")
    p = load_params(cfg)
    images = p.student.steps * p.train.batch_size * (1 + p.student.batch_ratio)
    return {"nproc": nproc, "seed": seed, "seconds": round(seconds, 1), "images_per_s": round(images / seconds, 1),
            "seconds_to_target": None if reached is None else round(reached, 1),
            "val_acc": json.loads(metrics.read_text())["val_acc"], "test_acc": test["top1"]}


def main(
    iteration: Annotated[Optional[str], typer.Option(help="student to train (default: the last iteration)")] = None,
    nproc: Annotated[int, typer.Option(help="processes for the DDP run")] = 2,
    seeds: Annotated[Optional[list[int]], typer.Option(help="repeat per seed")] = None,
    target: Annotated[float, typer.Option(help="validation accuracy for time-to-accuracy")] = 0.85,
    params: Path = ROOT / "params.yaml",
):
    from noisystudent.params import load_params

    os.environ.setdefault("NS_QUIET", "1")
    iteration = iteration or list(load_params(params).iterations)[-1]
    seeds = seeds or [0, 1, 2]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddp_speed-") as tmp:
        for seed in seeds:
            for k in (1, nproc):
                rows.append(train_once(params, iteration, Path(tmp), k, seed, target))
                print(json.dumps(rows[-1]), flush=True)

    def agg(k: int, key: str):
        vals = [r[key] for r in rows if r["nproc"] == k and r[key] is not None]
        if not vals:
            return None
        return {"mean": round(statistics.mean(vals), 4), "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0}

    summary = {str(k): {key: agg(k, key) for key in ("images_per_s", "seconds", "seconds_to_target", "val_acc", "test_acc")}
               for k in (1, nproc)}
    print(json.dumps({"iteration": iteration, "seeds": seeds, "target_val_acc": target, "cpus": os.cpu_count(), "summary": summary}))


if __name__ == "__main__":
    typer.run(main)
