"""Labeling throughput and memory vs pool size (a benchmark, run by hand; not in CI).

Labels synthetic unlabeled pools of 10k, 100k and 1M 32x32 RGB images, made on the fly from
their index (nothing is held in memory), with the real streaming labeler: the pipeline's
ImageDataset and eval transform (from the model's data config) in DataLoader workers, the
teacher predicting in batches, Parquet parts of bounded size. Each pool runs in a fresh
subprocess (after a 2,000-image warm-up); `--repeats` runs every size that many times,
interleaved (10k, 100k, 1M, 10k, ...), so machine noise hits all sizes alike, and reports the
median. Prints JSON per run and per size: images/s and peak RSS of the labeling process and
of its DataLoader worker.

    python benchmarks/label_scale.py --sizes 10000 --sizes 100000 --sizes 1000000 --repeats 2
"""
from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class SyntheticImages:
    """A store like the pipeline's ArrayImages / FileImages: image i is PIL noise seeded by i
    (any pool size, nothing stored)."""

    def __init__(self, size: int = 32):
        self.size = size

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.fromarray(np.random.default_rng(i).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8), "RGB")


def run_child(n: int, out: Path, arch: str, batch_size: int, workers: int, rows_per_file: int) -> dict:
    import torch

    from noisystudent.data import ImageDataset
    from noisystudent.data import loader as data_loader
    from noisystudent.models import create_model
    from noisystudent.shards import label_shard, open_labels_dir
    from noisystudent.inference import stream_soft_labels
    from noisystudent.transforms import data_config, eval_transform

    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_chans=3)
    ids = np.arange(n, dtype=np.int64)
    open_labels_dir(out, {"bench": n})

    tf = eval_transform(data_config(arch, 3, None, 32))

    def predict(chunk):
        loader = data_loader(ImageDataset(SyntheticImages(), chunk, None, tf), batch_size=batch_size, num_workers=workers,
                             persistent_workers=False, prefetch_factor=4 if workers else None)
        return stream_soft_labels(model, loader, 1.0)

    # warm-up (worker start, first batches, allocator) outside the timing, in its own folder,
    # so every pool size is measured in the same steady state
    open_labels_dir(out.with_name(out.name + "-warmup"), {"bench": "warmup"})
    label_shard(np.arange(2_000, dtype=np.int64), 0, 1, out.with_name(out.name + "-warmup"), rows_per_file, predict)
    # start-up (worker process, first batch) is paid once per run, whatever the pool size:
    # reported apart, and the rate after the first batch is what must not fall as pools grow
    first: list[float] = []

    def on_rows(k: int) -> None:
        if not first:
            first.extend([time.perf_counter(), k])

    t0 = time.perf_counter()
    rows = label_shard(ids, 0, 1, out, rows_per_file, predict, on_rows=on_rows)
    t1 = time.perf_counter()
    secs = t1 - t0
    return {"images": n, "rows": rows, "seconds": round(secs, 2), "images_per_s": round(n / secs, 1),
            "startup_s": round(first[0] - t0, 3), "steady_images_per_s": round((n - first[1]) / (t1 - first[0]), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "worker_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "arrow_pool_peak_mb": round(__import__("pyarrow").default_memory_pool().max_memory() / 2**20, 1)}


def main(
    sizes: Annotated[list[int], typer.Option(help="pool sizes")] = [10_000, 100_000, 1_000_000],
    arch: str = "ns_resnet_xs",
    batch_size: int = 512,
    workers: Annotated[int, typer.Option(help="DataLoader workers decoding images")] = 1,
    rows_per_file: Annotated[int, typer.Option(help="part size; below the smallest pool, so all reach steady state")] = 5_000,
    work: Path = Path("/tmp/ns_label_bench"),
    repeats: Annotated[int, typer.Option(help="runs per size, interleaved; the median is reported")] = 1,
    child: Annotated[int, typer.Option(hidden=True)] = 0,
):
    if child:
        print(json.dumps(run_child(child, work / str(child), arch, batch_size, workers, rows_per_file)))
        return
    runs: dict[int, list[dict]] = {n: [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            shutil.rmtree(work / str(n), ignore_errors=True)
            r = subprocess.run([sys.executable, __file__, "--child", str(n), "--arch", arch, "--batch-size", str(batch_size),
                                "--workers", str(workers), "--rows-per-file", str(rows_per_file), "--work", str(work)],
                               capture_output=True, text=True, check=True)
            res = json.loads(r.stdout.strip().splitlines()[-1])  # peaks of that run's own process and its workers
            runs[n].append(res)
            print(json.dumps(res), flush=True)
            shutil.rmtree(work / str(n), ignore_errors=True)
            shutil.rmtree(work / f"{n}-warmup", ignore_errors=True)
    med = {n: {"images": n, "images_per_s": statistics.median(r["images_per_s"] for r in rs),
               "steady_images_per_s": statistics.median(r["steady_images_per_s"] for r in rs),
               "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)} for n, rs in runs.items()}
    base = med[sizes[0]]
    print(json.dumps({"median_images_per_s": {n: m["images_per_s"] for n, m in med.items()},
                      "median_steady_images_per_s": {n: m["steady_images_per_s"] for n, m in med.items()},
                      "throughput_vs_smallest": [round(med[n]["images_per_s"] / base["images_per_s"], 3) for n in sizes],
                      "steady_throughput_vs_smallest": [round(med[n]["steady_images_per_s"] / base["steady_images_per_s"], 3) for n in sizes],
                      "peak_rss_mb": {n: m["peak_rss_mb"] for n, m in med.items()},
                      "rss_growth_mb": round(med[sizes[-1]]["peak_rss_mb"] - base["peak_rss_mb"], 1)}))


if __name__ == "__main__":
    typer.run(main)
