"""Training under torchrun: DistributedDataParallel over gloo on this CPU. Each rank takes its
slice of every global batch; rank 0 alone writes."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, tiny_raw
from noisystudent.checkpoint import load_checkpoint
from noisystudent.train import CycleBatchSampler

STEPS, BATCH = 12, 16


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from noisystudent.params import Params
    from stages.prepare import run as prepare_stage

    d = tmp_path_factory.mktemp("ddp")
    raw = tiny_raw(teacher__steps=STEPS, train__batch_size=BATCH, speed__checkpoint_every=5, train__ema_decay=0.9)
    (d / "params.yaml").write_text(yaml.safe_dump(raw))
    prepare_stage(Params.model_validate(raw), d / "data")
    return d


def test_two_gloo_ranks_see_different_data_and_rank0_writes_once(work):
    env = {**os.environ, "NS_QUIET": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "tests/ddp_probe.py"), str(work)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    t0, t1 = (json.loads((work / f"trace-rank{k}.json").read_text()) for k in (0, 1))
    assert t0["world_size"] == t1["world_size"] == 2
    seen0, seen1 = ({tuple(k) for k in t["keys"]} for t in (t0, t1))
    # every training image draw is a distinct (image, seed) pair: the ranks' draws are disjoint
    # and together they are exactly the draws of one process with the same global batch
    assert len(t0["keys"]) == len(t1["keys"]) == STEPS * BATCH // 2
    assert seen0 and seen1 and not seen0 & seen1
    one = [k for batch in CycleBatchSampler(_n_labeled(work), BATCH, STEPS, 0, 0) for k in batch]
    assert sorted(s for _, s in seen0 | seen1) == sorted(s for _, s in one)
    # rank 0 wrote the checkpoint and the metrics once (plus resume checkpoints); rank 1 nothing
    assert t1["writes"] == []
    assert t0["writes"].count(str(work / "teacher.pt")) == 1 and t0["writes"].count(str(work / "teacher.json")) == 1
    ckpt = load_checkpoint(work / "teacher.pt")
    assert set(ckpt["state_dict"]) == set(ckpt["state_dict_raw"])  # EMA weights predict, raw kept beside
    assert any(not torch.equal(ckpt["state_dict"][k], ckpt["state_dict_raw"][k]) for k in ckpt["state_dict"])
    assert not (work / ".resume" / "teacher.pt").exists()  # finished: nothing left to resume


def _n_labeled(work) -> int:
    import pandas as pd

    return len(pd.read_parquet(work / "data/labeled.parquet"))


def test_train_nproc_relaunches_the_stage_under_torchrun(work):
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["train"]["nproc"] = 2
    (work / "nproc2.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "NS_QUIET": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "stages.train", "--model", "teacher", "--data", str(work / "data"), "--out", str(work / "t2.pt"),
                        "--metrics", str(work / "t2.json"), "--params", str(work / "nproc2.yaml")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "relaunching under torchrun" in r.stdout and "--nproc_per_node=2" in r.stdout
    assert json.loads((work / "t2.json").read_text())["steps"] == STEPS
    assert load_checkpoint(work / "t2.pt")["runtime"]["world_size"] == 2
