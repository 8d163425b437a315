"""Out-of-core selection at scale (a benchmark, run by hand; not in CI).

Writes synthetic pseudo-label shards (made once, cached under --work), then runs the real
select (threshold + class balancing, two passes) in a fresh subprocess and prints JSON:
rows, classes, seconds, peak RSS of that subprocess.

    python benchmarks/select_scale.py --rows 20000000 --classes 10
    python benchmarks/select_scale.py --rows 20000000 --classes 1000 --no-probs

With 1,000 classes, full soft labels for 20M rows would be 80 GB of float32; --no-probs
writes id/label/confidence only (what pass 1 reads; pass 2 copies whatever columns exist).
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def generate(out: Path, rows: int, classes: int, probs: bool, rows_per_file: int, num_shards: int) -> None:
    from noisystudent.io import atomic_write_json
    from noisystudent.shards import done_name, part_name

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = rng.permutation(rows).astype(np.int64)
    for s in range(num_shards):
        mine = ids[s * rows // num_shards : (s + 1) * rows // num_shards]
        for j, a in enumerate(range(0, len(mine), rows_per_file)):
            chunk = mine[a : a + rows_per_file]
            label = rng.integers(0, classes, len(chunk))
            conf = rng.beta(5, 2, len(chunk)).astype(np.float32)  # most confident, a tail below 0.3
            cols = {"id": pa.array(chunk), "label": pa.array(label), "confidence": pa.array(conf)}
            if probs:
                p = rng.random((len(chunk), classes), dtype=np.float32)
                cols["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(p.reshape(-1)), classes)
            pq.write_table(pa.table(cols), out / part_name(s, num_shards, j))
        atomic_write_json(out / done_name(s, num_shards), {"rows": int(len(mine))})


def main(
    rows: Annotated[int, typer.Option(help="pseudo-label rows")] = 20_000_000,
    classes: Annotated[int, typer.Option(help="number of classes")] = 10,
    per_class: Annotated[int, typer.Option(help="select.per_class (default: half the rows per class)")] = 0,
    threshold: float = 0.3,
    probs: Annotated[bool, typer.Option(help="write the soft-label column too")] = True,
    work: Annotated[Path, typer.Option(help="where the synthetic shards are cached")] = Path("/tmp/ns_select_bench"),
    child: Annotated[bool, typer.Option(hidden=True)] = False,
):
    folder = work / f"rows{rows}-c{classes}-{'probs' if probs else 'noprobs'}"
    per_class = per_class or rows // classes // 2
    if child:  # the measured part, alone in its process
        from noisystudent.shards import select_dataset

        t0 = time.perf_counter()
        stats, _ = select_dataset(folder, work / "selected.parquet", threshold, per_class, classes, seed=0)
        print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "selected": stats["selected"], "unique": stats["unique"]}))
        return
    if not (folder / done_name_last(folder)).exists():
        t0 = time.perf_counter()
        generate(folder, rows, classes, probs, rows_per_file=500_000, num_shards=8)
        print(f"generated {rows} rows in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    r = subprocess.run([sys.executable, __file__, "--rows", str(rows), "--classes", str(classes), "--per-class", str(per_class),
                        "--threshold", str(threshold), "--work", str(work), "--child", "--probs" if probs else "--no-probs"],
                       capture_output=True, text=True, check=True)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out = {"rows": rows, "classes": classes, "per_class": per_class, "probs": probs, **json.loads(r.stdout.strip().splitlines()[-1]),
           "peak_rss_mb": round(peak_mb, 1), "data_mb": round(sum(f.stat().st_size for f in folder.glob("*.parquet")) / 2**20, 1)}
    print(json.dumps(out))


def done_name_last(folder: Path) -> str:
    from noisystudent.shards import done_name

    return done_name(7, 8)


if __name__ == "__main__":
    typer.run(main)
