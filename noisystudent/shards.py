"""Pseudo labels at scale: streamed into Parquet parts of bounded size, sharded, resumable;
and the selection over them out of core.

Layout of a labels folder:
  _fingerprint.json                     what the rows depend on (code, params, teacher, images, ids)
  shard-00000-of-00004-part-00000.parquet   rows [0, R) of shard 0, written atomically
  shard-00000-of-00004-part-00001.parquet   rows [R, 2R) of shard 0
  shard-00000-of-00004.done             shard 0 complete
A shard is a contiguous slice of the unlabeled ids; a part is a fixed slice of its shard. A
killed run leaves whole parts only (atomic rename), so a re-run skips them and goes on from
the first missing part: no row is lost or written twice. A folder made for another teacher,
id list, params or code is cleared, never mixed; readers check every shard's row count.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from .io import InputError, atomic_path, atomic_write_json
from .pseudo import balance_copies, pseudo_label_accuracy

FINGERPRINT = "_fingerprint.json"


def shard_slice(n: int, shard: int, num_shards: int) -> slice:
    """Contiguous, near-equal slices: shard i gets [i*n//k, (i+1)*n//k)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard {shard} is outside 0..{num_shards - 1}")
    return slice(shard * n // num_shards, (shard + 1) * n // num_shards)


def part_name(shard: int, num_shards: int, part: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}-part-{part:05d}.parquet"


def done_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}.done"


def ids_digest(ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()


def open_labels_dir(out: Path, fingerprint: dict) -> None:
    """Create `out`, or keep it for resuming when it was made for the same fingerprint;
    otherwise clear its shard files (they belong to another teacher, params or code).

    Many processes may open one folder (torchrun ranks, separate `--shard` jobs launched in
    any way): an exclusive lock on `out/.lock` makes the first one the only one to clear
    and stamp the folder; every later one finds it stamped with its fingerprint and labels."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    fp_file = out / FINGERPRINT
    with open(out / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        if fp_file.exists():
            old = _read_fingerprint(fp_file)
            if old == fingerprint:
                return
            print(f"{out}: made for other inputs ({_diff(old, fingerprint)}); starting afresh", flush=True)
        for f in out.glob("shard-*"):
            f.unlink()
        atomic_write_json(fp_file, fingerprint)


def _read_fingerprint(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _diff(old: dict | None, new: dict) -> str:
    if not isinstance(old, dict):
        return "unreadable fingerprint"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "changed: " + ", ".join(keys)


def frame_to_table(ids: np.ndarray, probs: np.ndarray, confidence: np.ndarray) -> pa.Table:
    """One pseudo-label row per image: id, label, confidence (at T = 1), probs (the target at
    pseudo.temperature, a fixed-size list)."""
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    return pa.table({
        "id": pa.array(np.asarray(ids, dtype=np.int64)),
        "label": pa.array(probs.argmax(1).astype(np.int64)),
        "confidence": pa.array(np.asarray(confidence, dtype=np.float32)),
        "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), probs.shape[1]),
    })


def label_shard(
    ids: np.ndarray,
    shard: int,
    num_shards: int,
    out: Path,
    rows_per_file: int,
    predict: Callable[[np.ndarray], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    on_rows: Callable[[int], None] | None = None,
) -> int:
    """Label shard `shard` of `ids` into bounded parts, resuming after the last whole part.

    `predict(ids)` streams (ids, probs, confidence) batches for the given ids in order (see
    pseudo.label_rows); memory holds at
    most one part plus one batch. Returns the number of rows written by this call."""
    mine = ids[shard_slice(len(ids), shard, num_shards)]
    done = out / done_name(shard, num_shards)
    if done.exists():
        if shard_rows(out, shard, num_shards) == len(mine):
            return 0
        done.unlink()  # marked done, but a part went missing: label what is missing
    n_parts = max(1, -(-len(mine) // rows_per_file))
    first = next((j for j in range(n_parts) if not (out / part_name(shard, num_shards, j)).exists()), n_parts)
    kill_after = int(os.environ.get("NS_FAULT_KILL_AFTER_PARTS", "0"))  # fault injection (tests)
    written, part = 0, first
    buf_ids: list[np.ndarray] = []
    buf_probs: list[np.ndarray] = []
    buf_conf: list[np.ndarray] = []
    buffered = 0

    def flush(n_rows: int) -> None:
        nonlocal part, buffered, written
        all_ids, all_probs, all_conf = np.concatenate(buf_ids), np.concatenate(buf_probs), np.concatenate(buf_conf)
        with atomic_path(out / part_name(shard, num_shards, part)) as tmp:
            pq.write_table(frame_to_table(all_ids[:n_rows], all_probs[:n_rows], all_conf[:n_rows]), tmp)
        buf_ids[:], buf_probs[:], buf_conf[:] = [all_ids[n_rows:]], [all_probs[n_rows:]], [all_conf[n_rows:]]
        buffered -= n_rows
        written += n_rows
        part += 1
        if kill_after and part - first >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    if first < n_parts:
        for got_ids, probs, conf in predict(mine[first * rows_per_file :]):
            buf_ids.append(got_ids)
            buf_probs.append(probs)
            buf_conf.append(conf)
            buffered += len(got_ids)
            if on_rows is not None:
                on_rows(len(got_ids))
            while buffered >= rows_per_file:
                flush(rows_per_file)
        if buffered:
            flush(buffered)
    if len(mine) == 0:  # an empty shard still gets its (empty) part, so readers see the schema
        with atomic_path(out / part_name(shard, num_shards, 0)) as tmp:
            pq.write_table(frame_to_table(np.zeros(0, np.int64), np.zeros((0, 1), np.float32), np.zeros(0, np.float32)), tmp)
    atomic_write_json(done, {"rows": int(len(mine))})
    return written


def shard_rows(labels_dir: Path, shard: int, num_shards: int) -> int:
    """Rows in shard `shard`'s parts, from their Parquet footers (no data read)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in labels_dir.glob(f"shard-{shard:05d}-of-{num_shards:05d}-part-*.parquet"))


def check_complete(labels_dir: Path) -> list[Path]:
    """The part files of a fully labeled folder: every shard marked done and holding exactly
    its share of the ids the folder was made for (row counts, so a deleted or foreign part is
    caught, not silently read); else a clear error naming what is missing."""
    labels_dir = Path(labels_dir)
    parts = sorted(labels_dir.glob("shard-*-part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{labels_dir}: no pseudo-label parts: run pseudo_label first")
    num_shards = int(parts[0].name.split("-of-")[1][:5])
    missing = [s for s in range(num_shards) if not (labels_dir / done_name(s, num_shards)).exists()]
    if missing:
        raise InputError(f"{labels_dir}: shards {missing} of {num_shards} are not finished: run pseudo_label for them")
    made_for = _read_fingerprint(labels_dir / FINGERPRINT)
    if not isinstance(made_for, dict) or not isinstance(made_for.get("num_ids"), int):
        raise InputError(f"{labels_dir}: {FINGERPRINT} is missing or unreadable: run pseudo_label again")
    n = made_for["num_ids"]
    wrong = [f"shard {s}: {have} rows, {want} expected" for s in range(num_shards)
             if (have := shard_rows(labels_dir, s, num_shards)) != (want := len(range(n)[shard_slice(n, s, num_shards)]))]
    if wrong or any(int(p.name.split("-of-")[1][:5]) != num_shards for p in parts):
        raise InputError(f"{labels_dir}: incomplete or mixed pseudo labels ({'; '.join(wrong) or 'parts of another shard count'}):"
                         " run pseudo_label again (it labels what is missing)")
    return parts


def read_labels(labels_dir: Path, columns: list[str] | None = None):
    """All pseudo labels of a finished folder as a pandas DataFrame (small pools only)."""
    return pads.dataset(check_complete(labels_dir), format="parquet").to_table(columns=columns).to_pandas()


def auto_per_class(labels: np.ndarray, num_classes: int) -> int:
    """The balancing target when select.per_class is null: the median over classes of the
    images above the threshold (at least 1). Rarer classes are duplicated up to it, richer ones
    keep their most confident images: the pool's size sets the scale, not a fixed number."""
    return max(1, int(np.median(np.bincount(labels, minlength=num_classes))))


def select_dataset(
    labels_dir: Path, out: Path, threshold: float, per_class: int | None, num_classes: int, seed: int,
    batch_rows: int = 1 << 18, truth: pd.Series | None = None, bins: int = 20, balance: bool = True,
    fraction: float = 1.0,
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Threshold + class balancing over all shards, out of core, in two passes (as the
    official filter_unlabel.py): pass 1 reads only id/label/confidence and decides each
    image's number of copies; pass 2 streams the full rows and writes the selected ones with
    a `copies` column (never repeated rows). Returns (counts for the metrics file, plus the
    pseudo labels' accuracy when hidden labels (`truth`, indexed by id) are given; the tables
    behind the pictures: `confidence` histogram with `bins` bins over [0, 1], per-`classes`
    counts before and after the threshold and the balancing). Ablations: `balance=False`
    keeps every image at or above the threshold once; `fraction` < 1 uses a seeded share of
    the pool only (the rest is left out before the threshold). `per_class` None: auto_per_class."""
    dataset = pads.dataset(check_complete(labels_dir), format="parquet")
    t = dataset.to_table(columns=["id", "label", "confidence"])
    ids = t["id"].to_numpy()
    order = np.argsort(ids, kind="stable")  # canonical order: the result never depends on read order
    ids, labels, conf = ids[order], t["label"].to_numpy()[order], t["confidence"].to_numpy()[order]
    del t, order
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        raise ValueError(f"{labels_dir}: an image id appears twice across shards")
    used = np.ones(len(ids), dtype=bool)
    if fraction < 1:
        used[:] = False
        used[np.random.default_rng([seed, 1]).permutation(len(ids))[: int(np.ceil(fraction * len(ids)))]] = True
    eligible = np.flatnonzero((conf >= threshold) & used)
    if per_class is None:  # follow the data: the median class's count above the threshold
        per_class = auto_per_class(labels[eligible], num_classes)
    copies = np.zeros(len(ids), dtype=np.int32)
    if balance:
        copies[eligible] = balance_copies(labels[eligible], conf[eligible], per_class, num_classes, threshold, seed)
    else:
        copies[eligible] = 1

    schema = dataset.schema.append(pa.field("copies", pa.int32()))
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in dataset.to_batches(batch_size=batch_rows):
                c = copies[np.searchsorted(ids, batch.column("id").to_numpy())]
                keep = c > 0
                if keep.any():
                    tb = pa.Table.from_batches([batch]).filter(pa.array(keep))
                    writer.write_table(tb.append_column("copies", pa.array(c[keep])))
    per_class_counts = np.bincount(labels, weights=copies, minlength=num_classes).astype(np.int64)
    stats = {
        "pseudo_labeled": int(len(ids)),
        "unlabeled_used": int(used.sum()),
        "kept_after_threshold": int(len(eligible)),
        "per_class_target": int(per_class),
        "selected": int(copies.sum()),
        "unique": int((copies > 0).sum()),
        "per_class": {str(c): int(n) for c, n in enumerate(per_class_counts)},
        "mean_confidence": float(conf.mean()) if len(conf) else 0.0,
    }
    if truth is not None and len(truth):  # from the pass-1 arrays: nothing is read again
        known = np.isin(ids, truth.index.to_numpy())  # e.g. STL-10's unlabeled split has no labels
        rows = pd.DataFrame({"id": ids[known], "label": labels[known]})
        stats["pseudo_label_truth_known"] = int(known.sum())
        stats["pseudo_label_acc_all"] = pseudo_label_accuracy(rows, truth)
        stats["pseudo_label_acc_selected"] = pseudo_label_accuracy(rows[copies[known] > 0], truth)
    return stats, selection_tables(labels, conf, copies, threshold, num_classes, bins)


def selection_tables(labels: np.ndarray, conf: np.ndarray, copies: np.ndarray, threshold: float, num_classes: int,
                     bins: int = 20) -> dict[str, pd.DataFrame]:
    counts, edges = np.histogram(conf, bins=bins, range=(0.0, 1.0))
    return {
        "confidence": pd.DataFrame({"confidence": (edges[:-1] + edges[1:]) / 2, "bin_left": edges[:-1],
                                    "bin_right": edges[1:], "images": counts}),
        "classes": pd.DataFrame({
            "class": np.arange(num_classes),
            "pseudo_labeled": np.bincount(labels, minlength=num_classes),
            "above_threshold": np.bincount(labels[conf >= threshold], minlength=num_classes),
            "selected": np.bincount(labels, weights=copies, minlength=num_classes).astype(np.int64),
        }),
    }

