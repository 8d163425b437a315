"""Fault injection through the real `dvc repro`: training and labeling stages are SIGKILLed at
several points; after each kill every output on disk must read back whole, and the `dvc
repro` that finally completes must give exactly the metrics of an uninterrupted run."""
import json
from pathlib import Path

import pandas as pd
import pytest

from noisystudent.checkpoint import load_checkpoint
from test_e2e import dvc, make_repo

pytestmark = pytest.mark.slow

# (environment for one `dvc repro`, the stage it must kill): each run resumes what the
# previous kill left and goes on until the next kill point
KILLS = [
    ({"NS_FAULT_KILL_AT_STEP": "train_teacher:7"}, "train_teacher"),
    ({"NS_FAULT_KILL_AT_STEP": "train_teacher:12"}, "train_teacher"),  # killed again after resuming
    ({"NS_FAULT_KILL_AFTER_PARTS": "1"}, "pseudo_label@s1"),
    ({"NS_FAULT_KILL_AT_STEP": "train_student@s1:6"}, "train_student@s1"),
    ({"NS_FAULT_KILL_AFTER_PARTS": "2"}, "pseudo_label@s2"),
    ({"NS_FAULT_KILL_AT_STEP": "train_student@s2:11"}, "train_student@s2"),
]


def assert_nothing_torn(root: Path) -> int:
    """Every output file present reads back whole; returns how many were checked."""
    n = 0
    for f in [*root.glob("data/**/*.parquet"), *root.glob("models/**/*.pt"), *root.glob("metrics/**/*.json")]:
        if f.name.startswith("."):
            raise AssertionError(f"temporary file left behind: {f}")
        if f.suffix == ".parquet":
            pd.read_parquet(f)
        elif f.suffix == ".pt":
            load_checkpoint(f)
        else:
            json.loads(f.read_text())
        n += 1
    return n


def metrics(root: Path) -> dict:
    return {str(f.relative_to(root)): json.loads(f.read_text()) for f in sorted(root.glob("metrics/**/*.json"))}


def test_kills_at_six_points_then_same_metrics_as_uninterrupted(tmp_path):
    root, env = make_repo(tmp_path / "repo", speed={"checkpoint_every": 5}, pseudo={"rows_per_file": 300},
                          teacher={"steps": 20}, student={"steps": 15}, mlflow={"enabled": False})
    for extra, stage in KILLS:
        out = dvc("repro", cwd=root, env={**env, **extra}, check=False)
        assert f"failed to reproduce '{stage}'" in out, out[-2000:]
        assert assert_nothing_torn(root) > 0
    out = dvc("repro", cwd=root, env=env)
    assert "resuming at step 10/15" in out  # the s2 student went on from its checkpoint
    assert not list(root.glob("models/.resume/*"))  # every finished stage removed its resume file

    # the uninterrupted run: the same stage functions on the same params, in one process
    # (checkpoint_every and rows_per_file change how often things are saved, never a result)
    from noisystudent.params import load_params
    from tinyrun import run_all

    run_all(load_params(root / "params.yaml"), tmp_path / "uninterrupted")
    killed, ref = metrics(root), metrics(tmp_path / "uninterrupted")
    compared = [k for k in ref if k != "metrics/prepare_files.json"]  # it names its own paths
    assert len(compared) >= 12 and {k: killed[k] for k in compared} == {k: ref[k] for k in compared}
