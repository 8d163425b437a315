"""Fault injection through the real `dvc repro`: training, labeling and selection are SIGKILLed
at several points, two of them inside a write (the temporary whole, not yet renamed); after
each kill every output on disk must read back whole, and the `dvc repro` that finally
completes must give exactly the metrics of an uninterrupted run and leave no temporary."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from noisystudent.checkpoint import load_checkpoint
from test_e2e import dvc, make_repo

# (environment for one `dvc repro`, the stage it must kill): each run resumes what the
# previous kill left and goes on until the next kill point
KILLS = [
    ({"NS_FAULT_KILL_AT_STEP": "train_teacher:7"}, "train_teacher"),
    # killed again after resuming, inside the model's write (the temporary whole, not renamed)
    ({"NS_FAULT_KILL_IN_WRITE": "models/teacher.pt"}, "train_teacher"),
    ({"NS_FAULT_KILL_AFTER_PARTS": "1"}, "pseudo_label@s1"),
    ({"NS_FAULT_KILL_IN_WRITE": "selected.parquet"}, "select@s1"),
    ({"NS_FAULT_KILL_AT_STEP": "train_student@s1:6"}, "train_student@s1"),
    ({"NS_FAULT_KILL_AFTER_PARTS": "2"}, "pseudo_label@s2"),
    ({"NS_FAULT_KILL_AT_STEP": "train_student@s2:11"}, "train_student@s2"),
]

# the campaign's own walk: temporaries (io.py's .<name>.<pid>.<random>.tmp / .old) vs outputs
from benchmarks.fault_campaign import OUTPUT_DIRS, is_temporary, walk as walk_outputs  # noqa: E402,F401


def assert_nothing_torn(root: Path) -> int:
    """Every output file present (temporaries aside) reads back whole; returns how many were read."""
    from PIL import Image

    readers = {".parquet": pd.read_parquet, ".pt": load_checkpoint, ".json": lambda f: json.loads(f.read_text()),
               ".csv": pd.read_csv, ".npy": np.load, ".png": lambda f: Image.open(f).load()}
    n = 0
    for f in walk_outputs(root)[1]:
        if f.suffix in readers:
            try:
                readers[f.suffix](f)
            except Exception as e:
                raise AssertionError(f"torn output {f}: {e}") from e
            n += 1
    return n


def metrics(root: Path) -> dict:
    return {str(f.relative_to(root)): json.loads(f.read_text()) for f in sorted(root.glob("metrics/**/*.json"))}


def test_the_leftover_checks_see_hidden_temporaries_and_torn_files(tmp_path):
    """The checks below can fail: a temporary file or folder anywhere under the outputs, and a
    torn file, are each caught (the old globs *.parquet / *.pt / *.json matched none of them)."""
    left = [tmp_path / "models/.teacher.pt.123.ab_cd9xy.tmp", tmp_path / "data/pseudo/s1/.selected.parquet.9.k2j3.tmp",
            tmp_path / "metrics/.eval.77.q1w2e3r4.old"]
    for f in left[:2]:
        f.parent.mkdir(parents=True)
        f.write_bytes(b"PAR1 half")
    (left[2] / "eval").mkdir(parents=True)
    (left[2] / "eval/teacher.json").write_text("{")  # inside a temporary folder: not read
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "data/whole.parquet")
    temps, files = walk_outputs(tmp_path)
    assert sorted(temps) == sorted(left) and files == [tmp_path / "data/whole.parquet"]
    assert assert_nothing_torn(tmp_path) == 1
    (tmp_path / "metrics/eval.json").write_text('{"top1": 0.')
    with pytest.raises(AssertionError, match="torn output .*eval.json"):
        assert_nothing_torn(tmp_path)


# the stages the kills fall in, and one evaluation of the last model: what DVC must resume (the
# rest of the pipeline is the same machinery; benchmarks/fault_campaign.py kills every stage)
TARGET = "evaluate@s2"
CHAIN = {"prepare", "train_teacher", "pseudo_label@s1", "select@s1", "train_student@s1", "pseudo_label@s2", "select@s2",
         "train_student@s2", TARGET}


@pytest.mark.slow
def test_kills_at_seven_points_then_same_metrics_as_uninterrupted(tmp_path):
    root, env = make_repo(tmp_path / "repo", speed={"checkpoint_every": 5}, pseudo={"rows_per_file": 300},
                          teacher={"steps": 20}, student={"steps": 15}, mlflow={"enabled": False})
    killed_in_write = []
    for extra, stage in KILLS:
        out = dvc("repro", TARGET, cwd=root, env={**env, **extra}, check=False)
        assert f"failed to reproduce '{stage}'" in out, out[-2000:]
        assert assert_nothing_torn(root) > 0
        if "NS_FAULT_KILL_IN_WRITE" in extra:  # the kill left the whole temporary beside the target
            killed_in_write += [t for t in walk_outputs(root)[0] if extra["NS_FAULT_KILL_IN_WRITE"].split("/")[-1] in t.name]
    assert len(killed_in_write) == 2, killed_in_write
    out = dvc("repro", TARGET, cwd=root, env=env)
    assert "resuming at step 10/15" in out  # the s2 student went on from its checkpoint
    assert not list(root.glob("models/.resume/*"))  # every finished stage removed its resume file
    assert walk_outputs(root)[0] == []  # the re-runs cleared what the killed writers left

    # the uninterrupted run: the same stage functions on the same params, in one process
    # (checkpoint_every and rows_per_file change how often things are saved, never a result)
    import torch

    from noisystudent.params import load_params
    from tinyrun import run_all

    ref_root = tmp_path / "uninterrupted"
    run_all(load_params(root / "params.yaml"), ref_root, only=CHAIN)
    killed, ref = metrics(root), metrics(ref_root)
    compared = [k for k in ref if k != "metrics/prepare_files.json"]  # it names its own paths
    # prepare, train x 3, select x 2, evaluate: every stage's metrics file
    assert len(compared) >= 7 and set(killed) == set(ref), (sorted(killed), sorted(ref))
    assert {k: killed[k] for k in compared} == {k: ref[k] for k in compared}
    for name in ("teacher", "s1", "s2"):  # and the models themselves, bit for bit
        a, b = (load_checkpoint(r / f"models/{name}.pt") for r in (root, ref_root))
        for key in ("state_dict", "state_dict_raw"):  # the EMA weights and the trained ones
            assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][t], b[key][t]) for t in a[key]), (name, key)
    for name in ("s1", "s2"):  # and the pseudo-labeled sets the students learned from
        pd.testing.assert_frame_equal(*(pd.read_parquet(r / f"data/pseudo/{name}/selected.parquet") for r in (root, ref_root)))
