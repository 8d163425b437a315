"""Image folders at real size: `prepare`'s decode pass and labeling on a synthetic folder of
PNG files, with 0, 1, 2 DataLoader workers (a benchmark, run by hand; not in CI).

The folder (made once, kept under `--folder`): `train/<class>/` (`--labeled` per class),
`test/<class>/`, and the pool `unlabeled/` in nested sub-folders, `--n` files in all, RGB
`--size`² PNGs. Each measurement runs in its own process (so its peak RSS is its own, workers
included):

- prepare: `stages.prepare.run` on the folder (`data.name: imagefolder`): files/s of the whole
  stage (listing, decoding every file once to check it, splitting, writing);
- label: the real `pseudo_label` stage over the pool (the id-keyed loader decoding files, the
  teacher's preprocessing, softmax, Parquet parts) vs a bare loop: a plain DataLoader that opens
  each file with PIL, converts, resizes and stacks, then the same model's forward pass
  (random weights) under inference_mode.

Prints one JSON line per measurement and a Markdown table.

    python benchmarks/folder_speed.py                      # 100,000 files, 32 px, workers 0 1 2
    python benchmarks/folder_speed.py --n 20000 --workers 0 --workers 2
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from label_speed import teacher_checkpoint  # noqa: E402  (benchmarks/label_speed.py)

CLASSES = [f"c{i}" for i in range(10)]


def make_folder(root: Path, n: int, size: int, labeled: int, test: int) -> None:
    from PIL import Image

    if (root / ".complete").exists():
        return
    rng = np.random.default_rng(0)
    pool = n - len(CLASSES) * (labeled + test)
    jobs = [(root / "train" / c / f"{i:05d}.png") for c in CLASSES for i in range(labeled)]
    jobs += [(root / "test" / c / f"{i:05d}.png") for c in CLASSES for i in range(test)]
    jobs += [(root / "unlabeled" / f"b{i % 100:02d}" / f"s{i % 7}" / f"{i:07d}.png") for i in range(pool)]
    for k, path in enumerate(jobs):
        path.parent.mkdir(parents=True, exist_ok=True)
        # smooth random images: PNG compresses them like photographs, not like noise
        base = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR).save(path, "PNG")
        if k % 10000 == 0:
            print(f"made {k:,} of {len(jobs):,} files", file=sys.stderr, flush=True)
    (root / ".complete").write_text(str(n))


def params(folder: Path, workers: int, size: int):
    from noisystudent.params import load_params

    p = load_params(ROOT / "params.yaml")
    data = p.data.model_copy(update={"name": "imagefolder", "root": str(folder), "image_size": size, "labeled_per_class": None,
                                     "val_per_class": 2, "test_per_class": None})
    return p.model_copy(update={"data": data, "speed": p.speed.model_copy(update={"data_workers": workers}),
                                "mlflow": p.mlflow.model_copy(update={"enabled": False})})


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)  # KiB on Linux; the largest single process


def one(what: str, folder: Path, work: Path, workers: int, size: int, batch: int) -> dict:
    """One measurement, in this process."""
    import torch

    p = params(folder, workers, size)
    if what == "prepare":
        from stages.prepare import run as prepare_stage

        t0 = time.perf_counter()
        prepare_stage(p, work / f"prepared-w{workers}")
        seconds = time.perf_counter() - t0
        files = sum(1 for _ in folder.rglob("*.png"))
        return {"measure": "prepare", "workers": workers, "files": files, "seconds": round(seconds, 1),
                "files_per_s": round(files / seconds), "peak_rss_mb": peak_rss_mb()}
    from noisystudent.checkpoint import load_model
    from stages.pseudo_label import run as pseudo_label_stage

    data_dir = work / "prepared-w0"
    ckpt = work / "teacher.pt"
    if not ckpt.exists():
        teacher_checkpoint(ckpt, p.teacher.arch, 3, size, len(CLASSES), files=True)
    if what == "label":
        t0 = time.perf_counter()
        rows = pseudo_label_stage(p, "bench", data_dir, ckpt, work / f"labels-w{workers}")
        seconds = time.perf_counter() - t0
        return {"measure": "label (real stage)", "workers": workers, "images": rows, "seconds": round(seconds, 1),
                "images_per_s": round(rows / seconds), "peak_rss_mb": peak_rss_mb()}
    # the bare loop: open, convert, resize, stack; the same model's forward pass
    from PIL import Image

    import pandas as pd

    files = pd.read_parquet(data_dir / "files.parquet").set_index("id")["path"]
    paths = [Path(p.data.root) / files[i] for i in pd.read_parquet(data_dir / "unlabeled.parquet")["id"]]
    model, _ = load_model(ckpt)
    model.eval()

    class Files:
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            with Image.open(paths[i]) as im:
                a = np.asarray(im.convert("RGB").resize((size, size)), dtype=np.uint8)
            return torch.from_numpy(a).permute(2, 0, 1)

    dl = torch.utils.data.DataLoader(Files(), batch_size=batch, num_workers=workers)
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for x in dl:
            model(x.float().div_(255)).softmax(1)
            n += len(x)
    seconds = time.perf_counter() - t0
    return {"measure": "label (bare loop)", "workers": workers, "images": n, "seconds": round(seconds, 1),
            "images_per_s": round(n / seconds), "peak_rss_mb": peak_rss_mb()}


def main(
    n: Annotated[int, typer.Option(help="PNG files in the folder")] = 100_000,
    size: Annotated[int, typer.Option(help="image side (pixels)")] = 32,
    labeled: Annotated[int, typer.Option(help="labeled files per class")] = 10,
    test: Annotated[int, typer.Option(help="test files per class")] = 100,
    workers: Annotated[list[int], typer.Option(help="DataLoader workers to measure; repeat the option")] = [0, 1, 2],
    batch: int = 256,
    folder: Annotated[Path, typer.Option(help="where the synthetic folder is made (kept for reruns)")] = Path("/tmp/ns-folder-bench"),
    one_run: Annotated[str, typer.Option("--one", hidden=True)] = "",
):
    os.environ.setdefault("NS_QUIET", "1")
    images, work = folder / "images", folder / "work"
    if one_run:
        what, w = one_run.split(":")
        print(json.dumps(one(what, images, work, int(w), size, batch)), flush=True)
        return
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_folder(images, n, size, labeled, test)
    print(json.dumps({"folder": str(images), "files": n, "made_in_s": round(time.perf_counter() - t0, 1)}), flush=True)
    rows = []
    order = [("prepare", w) for w in workers] + [(m, w) for w in workers for m in ("label", "bare")]
    if 0 not in workers:  # labeling reads the workers-0 prepared folder
        order.insert(0, ("prepare", 0))
    for what, w in order:
        out = subprocess.run([sys.executable, __file__, "--one", f"{what}:{w}", "--n", str(n), "--size", str(size),
                              "--batch", str(batch), "--folder", str(folder)], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{what} with {w} workers failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| measure | workers | items | seconds | items/s | peak RSS (MB, largest process) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        items = r.get("files", r.get("images"))
        rate = r.get("files_per_s", r.get("images_per_s"))
        print(f"| {r['measure']} | {r['workers']} | {items:,} | {r['seconds']} | {rate:,} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    typer.run(main)
