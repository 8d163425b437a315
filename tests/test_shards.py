"""Streaming, sharded, resumable labeling and the out-of-core selection."""
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, tiny_raw
from noisystudent.io import InputError
from noisystudent.pseudo import balance
from noisystudent.shards import check_complete, label_shard, open_labels_dir, read_labels, select_dataset


def fake_predict(num_classes=4, batch=5):
    """Deterministic 'teacher': probabilities from a hash of the id, in batches."""
    def predict(ids):
        for i in range(0, len(ids), batch):
            chunk = ids[i : i + batch]
            logits = np.stack([np.random.default_rng(int(k)).normal(size=num_classes) * 3 for k in chunk])
            p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            yield chunk, p.astype(np.float32), p.max(1).astype(np.float32)
    return predict


def label_all(ids, out, num_shards=3, rows_per_file=7):
    open_labels_dir(out, {"v": 1, "num_ids": len(ids)})
    for s in range(num_shards):
        label_shard(ids, s, num_shards, out, rows_per_file, fake_predict())


def test_parts_are_bounded_and_cover_every_id_once(tmp_path):
    ids = np.random.default_rng(0).permutation(100) + 1000
    label_all(ids, tmp_path)
    parts = check_complete(tmp_path)
    assert all(len(pd.read_parquet(p)) <= 7 for p in parts)
    rows = read_labels(tmp_path)
    assert sorted(rows["id"]) == sorted(ids)
    assert (rows["confidence"] == np.stack(rows["probs"]).max(1)).all()


def test_unfinished_shard_is_a_clear_error(tmp_path):
    ids = np.arange(30)
    open_labels_dir(tmp_path, {"v": 1, "num_ids": len(ids)})
    label_shard(ids, 0, 2, tmp_path, 7, fake_predict())
    with pytest.raises(InputError, match=r"shards \[1\] of 2 are not finished"):
        check_complete(tmp_path)


def test_a_lost_part_is_caught_by_row_counts_and_relabeled(tmp_path):
    """Every shard marked done, one part deleted: readers refuse the folder (10 rows short),
    and labeling again fills exactly the missing rows."""
    ids = np.arange(100)
    label_all(ids, tmp_path / "full", num_shards=2, rows_per_file=10)
    label_all(ids, tmp_path / "lost", num_shards=2, rows_per_file=10)
    (tmp_path / "lost" / "shard-00001-of-00002-part-00002.parquet").unlink()
    with pytest.raises(InputError, match=r"shard 1: 40 rows, 50 expected"):
        check_complete(tmp_path / "lost")
    with pytest.raises(InputError):
        read_labels(tmp_path / "lost")
    label_all(ids, tmp_path / "lost", num_shards=2, rows_per_file=10)
    full, healed = read_labels(tmp_path / "full"), read_labels(tmp_path / "lost")
    pd.testing.assert_frame_equal(full.sort_values("id", ignore_index=True), healed.sort_values("id", ignore_index=True))


def test_a_foreign_part_is_caught(tmp_path):
    ids = np.arange(40)
    label_all(ids, tmp_path / "a", num_shards=2, rows_per_file=10)
    label_all(ids + 1000, tmp_path / "b", num_shards=2, rows_per_file=10)
    extra = tmp_path / "a" / "shard-00000-of-00002-part-00009.parquet"
    extra.write_bytes((tmp_path / "b" / "shard-00000-of-00002-part-00000.parquet").read_bytes())
    with pytest.raises(InputError, match=r"shard 0: 30 rows, 20 expected"):
        check_complete(tmp_path / "a")


def test_separate_jobs_on_a_stale_folder_clear_it_once(tmp_path, monkeypatch):
    """Eight `--shard` jobs opening a folder left by an earlier run at the same moment: one
    clears and stamps it, none deletes a part another job has written since."""
    import itertools
    import threading
    import time

    import noisystudent.shards as shards

    label_all(np.arange(20), tmp_path)  # the earlier run's folder
    real_diff, calls = shards._diff, itertools.count()
    # widen the race: each job that finds the folder stale lingers a little longer before clearing
    monkeypatch.setattr(shards, "_diff", lambda *a: (time.sleep(0.05 * next(calls)), real_diff(*a))[1])
    barrier = threading.Barrier(8)

    def job(k):
        barrier.wait()
        open_labels_dir(tmp_path, {"v": 2, "num_ids": 8})
        (tmp_path / f"shard-{k:05d}-of-00008-part-00000.parquet").write_bytes(b"x")

    threads = [threading.Thread(target=job, args=(k,)) for k in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(f.name for f in tmp_path.glob("shard-*")) == [f"shard-{k:05d}-of-00008-part-00000.parquet" for k in range(8)]


def test_fingerprint_change_clears_the_folder(tmp_path):
    ids = np.arange(20)
    label_all(ids, tmp_path)
    open_labels_dir(tmp_path, {"v": 2, "num_ids": 20})  # e.g. another teacher
    assert not list(tmp_path.glob("shard-*"))
    (tmp_path / "shard-00000-of-00003-part-00000.parquet").write_bytes(b"kept")
    open_labels_dir(tmp_path, {"v": 2, "num_ids": 20})  # same again: nothing cleared, resumable
    assert (tmp_path / "shard-00000-of-00003-part-00000.parquet").exists()


def test_select_out_of_core_equals_in_memory_balance(tmp_path):
    ids = np.random.default_rng(1).permutation(500)
    label_all(ids, tmp_path / "labels", num_shards=3, rows_per_file=50)
    stats, tables = select_dataset(tmp_path / "labels", tmp_path / "sel.parquet", 0.4, 30, 4, seed=7, batch_rows=64)
    sel = pd.read_parquet(tmp_path / "sel.parquet")
    frame = read_labels(tmp_path / "labels").sort_values("id", ignore_index=True)
    ref = balance(frame[frame["confidence"] >= 0.4].reset_index(drop=True), 30, 4, 0.4, 7)
    assert dict(zip(sel["id"], sel["copies"])) == ref["id"].value_counts().to_dict()
    assert stats["selected"] == int(sel["copies"].sum()) == 4 * 30
    assert stats["unique"] == len(sel) and stats["kept_after_threshold"] == int((frame["confidence"] >= 0.4).sum())
    assert list(sel.columns) == ["id", "label", "confidence", "probs", "copies"]
    # the tables behind the pictures: every image in one confidence bin; classes before / after
    hist, classes = tables["confidence"], tables["classes"]
    assert hist["images"].sum() == len(frame) and len(hist) == 20
    assert hist.loc[hist["bin_left"] >= 0.4, "images"].sum() == stats["kept_after_threshold"]  # 0.4 is a bin edge
    assert classes["pseudo_labeled"].tolist() == np.bincount(frame["label"], minlength=4).tolist()
    assert classes["above_threshold"].sum() == stats["kept_after_threshold"]
    assert classes["selected"].tolist() == [stats["per_class"][str(c)] for c in range(4)] == [30] * 4


def test_select_ablations_unbalanced_and_fraction(tmp_path):
    ids = np.random.default_rng(1).permutation(500)
    label_all(ids, tmp_path / "labels", num_shards=2, rows_per_file=100)
    frame = read_labels(tmp_path / "labels")
    stats, _ = select_dataset(tmp_path / "labels", tmp_path / "u.parquet", 0.4, 30, 4, seed=7, balance=False)
    sel = pd.read_parquet(tmp_path / "u.parquet")
    assert (sel["copies"] == 1).all() and set(sel["id"]) == set(frame.loc[frame["confidence"] >= 0.4, "id"])
    assert stats["selected"] == stats["unique"] == stats["kept_after_threshold"]
    # a quarter of the pool: a seeded quarter, the same one again; balancing within it
    a, _ = select_dataset(tmp_path / "labels", tmp_path / "a.parquet", 0.4, 30, 4, seed=7, fraction=0.25)
    b, _ = select_dataset(tmp_path / "labels", tmp_path / "b.parquet", 0.4, 30, 4, seed=7, fraction=0.25)
    assert a == b and a["unlabeled_used"] == 125 and a["kept_after_threshold"] <= 125 and a["selected"] == 4 * 30
    assert pd.read_parquet(tmp_path / "a.parquet")["id"].tolist() == pd.read_parquet(tmp_path / "b.parquet")["id"].tolist()


def _stage(args, env):
    return subprocess.run([sys.executable, "-m", "stages.pseudo_label", *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from noisystudent.params import Params
    from stages.prepare import run as prepare_stage
    from stages.train import run as train_stage

    d = tmp_path_factory.mktemp("teacher")
    raw = tiny_raw(pseudo={"rows_per_file": 40, "batch_size": 16, "num_shards": 3})
    (d / "params.yaml").write_text(yaml.safe_dump(raw))
    p = Params.model_validate(raw)
    prepare_stage(p, d / "data")
    train_stage(p, "teacher", d / "data", d / "teacher.pt", d / "teacher.json")
    return d


def test_stage_killed_mid_way_resumes_to_the_same_rows(teacher, tmp_path):
    env = {**os.environ, "NS_QUIET": "1"}
    common = ["--iteration", "s1", "--data", str(teacher / "data"), "--teacher", str(teacher / "teacher.pt"), "--params", str(teacher / "params.yaml")]
    assert _stage([*common, "--out", str(tmp_path / "full")], env).returncode == 0

    killed = _stage([*common, "--out", str(tmp_path / "resumed")], {**env, "NS_FAULT_KILL_AFTER_PARTS": "2"})
    assert killed.returncode == -signal.SIGKILL
    before = sorted(f.name for f in (tmp_path / "resumed").glob("shard-*"))
    assert len(before) == 2 and not any(n.endswith(".done") for n in before)
    for f in (tmp_path / "resumed").glob("shard-*.parquet"):
        pd.read_parquet(f)  # never torn: every part on disk reads back whole
    mtimes = {f: f.stat().st_mtime_ns for f in (tmp_path / "resumed").glob("shard-*.parquet")}

    assert _stage([*common, "--out", str(tmp_path / "resumed")], env).returncode == 0
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())  # finished parts kept, not redone
    full, resumed = read_labels(tmp_path / "full"), read_labels(tmp_path / "resumed")
    pd.testing.assert_frame_equal(full.sort_values("id", ignore_index=True), resumed.sort_values("id", ignore_index=True))
    assert resumed["id"].is_unique


def test_shards_labeled_separately_equal_one_run(teacher, tmp_path):
    env = {**os.environ, "NS_QUIET": "1"}
    common = ["--iteration", "s1", "--data", str(teacher / "data"), "--teacher", str(teacher / "teacher.pt"), "--params", str(teacher / "params.yaml")]
    for s in (2, 0, 1):  # any order, as separate jobs would
        assert _stage([*common, "--out", str(tmp_path / "split"), "--shard", str(s)], env).returncode == 0
    assert _stage([*common, "--out", str(tmp_path / "one")], env).returncode == 0
    a, b = read_labels(tmp_path / "split"), read_labels(tmp_path / "one")
    pd.testing.assert_frame_equal(a.sort_values("id", ignore_index=True), b.sort_values("id", ignore_index=True))


def test_torchrun_ranks_label_their_own_shards(teacher, tmp_path):
    """`torchrun --nproc_per_node 2`: each rank labels its shards into one folder; together
    they give exactly the rows of a single process (none lost, none twice)."""
    env = {**os.environ, "NS_QUIET": "1"}
    common = ["--iteration", "s1", "--data", str(teacher / "data"), "--teacher", str(teacher / "teacher.pt"), "--params", str(teacher / "params.yaml")]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
                        "-m", "stages.pseudo_label", *common, "--out", str(tmp_path / "ddp"), "--num-shards", "4"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    done = sorted(f.name for f in (tmp_path / "ddp").glob("*.done"))
    assert done == [f"shard-{s:05d}-of-00004.done" for s in range(4)]
    counts = [int(n) for n in re.findall(r"wrote (\d+) rows", r.stdout)]
    assert len(counts) == 2 and all(counts) and sum(counts) == len(read_labels(tmp_path / "ddp"))  # both ranks worked
    assert _stage([*common, "--out", str(tmp_path / "one"), "--num-shards", "4"], env).returncode == 0
    a, b = read_labels(tmp_path / "ddp"), read_labels(tmp_path / "one")
    pd.testing.assert_frame_equal(a.sort_values("id", ignore_index=True), b.sort_values("id", ignore_index=True))


def test_pseudo_nproc_relaunches_labeling_under_torchrun(teacher, tmp_path):
    """`pseudo.nproc: 2` in params: the stage command re-runs itself under torchrun, and both
    ranks label their shards into one complete folder."""
    raw = yaml.safe_load((teacher / "params.yaml").read_text())
    raw["pseudo"].update(nproc=2, num_shards=2)
    raw["mlflow"] = {"enabled": True, "experiment": "ranks"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "NS_QUIET": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    r = _stage(["--iteration", "s1", "--data", str(teacher / "data"), "--teacher", str(teacher / "teacher.pt"),
                "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "labels")], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "relaunching under torchrun" in r.stdout and "--nproc_per_node=2" in r.stdout
    counts = [int(n) for n in re.findall(r"wrote (\d+) rows", r.stdout)]
    assert len(counts) == 2 and all(counts) and sum(counts) == len(read_labels(tmp_path / "labels"))
    # one MLflow run for the labeling, rank 0's, however many ranks labeled
    import sqlite3

    con = sqlite3.connect(tmp_path / "mlflow.db")
    names = [n for (n,) in con.execute("select name from runs")]
    con.close()
    assert names.count("pseudo_label@s1") == 1, names


def test_per_class_null_follows_the_data(tmp_path):
    """select.per_class: null balances to the median class's count above the threshold: a
    pool of any size sets the scale (a fixed 200 kept 2,000 of 59,800 images of a real folder)."""
    ids = np.random.default_rng(2).permutation(600)
    label_all(ids, tmp_path / "labels", num_shards=2, rows_per_file=50)
    frame = read_labels(tmp_path / "labels")
    above = np.bincount(frame.loc[frame["confidence"] >= 0.4, "label"], minlength=4)
    stats, _ = select_dataset(tmp_path / "labels", tmp_path / "sel.parquet", 0.4, None, 4, seed=7)
    assert stats["per_class_target"] == int(np.median(above)) and stats["selected"] == 4 * int(np.median(above))
