"""Training killed with SIGKILL and run again continues from its last resume checkpoint and
ends exactly where an uninterrupted run ends (CPU, fixed seed)."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT, tiny_raw
from noisystudent.checkpoint import load_checkpoint
from noisystudent.checkpoint import resume_path

STEPS = {"teacher": {"steps": 24}, "student": {"steps": 18}, "train": {"batch_size": 16, "warmup_steps": 2}, "speed": {"checkpoint_every": 5}}


def train(kind, d, out, env_extra=None, params="params.yaml", cwd=ROOT):
    """The training stage command: a real process where it is killed (or runs another copy of
    the code), else in this process through the same typer command (no interpreter start-up:
    seconds each; the numbers are the same, one thread either way)."""
    args = ["--data", str(d / "data"), "--out", str(d / out), "--metrics", str(d / (out + ".json")), "--params", str(d / params)]
    args = ["--model", "s1" if kind == "student" else "teacher", *args]
    if kind == "student":
        args = ["--selected", str(d / "selected.parquet"), "--teacher", str(d / "t0.pt"), *args]
    if env_extra or cwd != ROOT:
        env = {**os.environ, "NS_QUIET": "1", **(env_extra or {})}
        return subprocess.run([sys.executable, "-m", "stages.train", *args], cwd=cwd, env=env, capture_output=True, text=True)
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from stages.train import cli

    r = CliRunner().invoke(cli, args)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Prepared digits, a teacher and a selected pseudo-labeled set (for the student)."""
    from noisystudent.params import Params
    from stages.prepare import run as prepare_stage
    from stages.pseudo_label import run as pseudo_label_stage
    from stages.select import run as select_stage
    from stages.train import run as train_stage

    d = tmp_path_factory.mktemp("resume")
    raw = tiny_raw(**{f"{k}__{kk}": v for k, vals in STEPS.items() for kk, v in vals.items()})
    (d / "params.yaml").write_text(yaml.safe_dump(raw))
    p = Params.model_validate(raw)
    prepare_stage(p, d / "data")
    train_stage(p, "teacher", d / "data", d / "t0.pt", d / "t0.json")
    pseudo_label_stage(p, "s1", d / "data", d / "t0.pt", d / "labels")
    select_stage(p, "s1", d / "data", d / "labels", d / "selected.parquet", d / "sel.json")
    return d


def same_weights(a, b):
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind, kill_at", [("teacher", 7), ("teacher", 16), ("student", 12)])
def test_killed_training_resumes_to_the_same_model(work, kind, kill_at):
    ref = f"{kind}_ref.pt"
    assert train(kind, work, ref).returncode == 0
    out = f"{kind}_killed_{kill_at}.pt"
    desc = "train_teacher" if kind == "teacher" else "train_student@s1"
    killed = train(kind, work, out, {"NS_FAULT_KILL_AT_STEP": f"{desc}:{kill_at}"})
    assert killed.returncode == -signal.SIGKILL
    assert not (work / out).exists()  # no model, no metrics: nothing half-written
    ckpt = load_checkpoint(resume_path(work / out))
    assert ckpt["step"] == kill_at // 5 * 5  # the last checkpoint before the kill
    again = train(kind, work, out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming at step {kill_at // 5 * 5}/" in again.stdout
    assert same_weights(work / ref, work / out)
    assert json.loads((work / (ref + ".json")).read_text()) == json.loads((work / (out + ".json")).read_text())
    assert (work / ref).read_bytes() == (work / out).read_bytes()
    assert not resume_path(work / out).exists()  # finished: nothing left to resume


def test_checkpoint_for_other_params_is_not_used(work):
    out = "other.pt"
    assert train("teacher", work, out, {"NS_FAULT_KILL_AT_STEP": "train_teacher:12"}).returncode == -signal.SIGKILL
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["train"]["lr"] = 0.02
    (work / "params_lr.yaml").write_text(yaml.safe_dump(raw))
    r = train("teacher", work, out, params="params_lr.yaml")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "made for other params or inputs (changed: fit, params.train.lr); not used, starting from step 0" in r.stdout
    assert train("teacher", work, "fresh_lr.pt", params="params_lr.yaml").returncode == 0
    assert same_weights(work / out, work / "fresh_lr.pt")


# the reviewer's probes: keys an earlier fingerprint left out (smoothing, the student's targets)
@pytest.mark.parametrize("kind, section, key, value", [("teacher", "train", "label_smoothing", 0.4),
                                                       ("student", "student", "targets", "hard")])
def test_any_changed_key_restarts_training(work, kind, section, key, value):
    out = f"changed_{key}.pt"
    desc = "train_teacher" if kind == "teacher" else "train_student@s1"
    assert train(kind, work, out, {"NS_FAULT_KILL_AT_STEP": f"{desc}:12"}).returncode == -signal.SIGKILL
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw[section][key] = value
    (work / f"params_{key}.yaml").write_text(yaml.safe_dump(raw))
    r = train(kind, work, out, params=f"params_{key}.yaml")  # in this process: a tiny run to the end
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"params.{section}.{key}" in r.stdout and "not used, starting from step 0" in r.stdout


def test_checkpoint_made_by_other_code_is_not_used(work, tmp_path):
    """A line changed in a module the stage imports (a copy of the code, run from there): the
    resume state of the killed run is dropped, as `dvc repro` re-runs the stage for it."""
    import shutil

    out = "code.pt"
    assert train("teacher", work, out, {"NS_FAULT_KILL_AT_STEP": "train_teacher:12"}).returncode == -signal.SIGKILL
    for pkg in ("stages", "noisystudent"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "noisystudent" / "recipe.py", "a") as f:
        f.write("\n# a changed line\n")
    r = train("teacher", work, out, {"NS_FAULT_KILL_AT_STEP": "train_teacher:1"}, cwd=tmp_path)  # stopped after the verdict
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert "(changed: code_sha256); not used, starting from step 0" in r.stdout


def test_resume_checkpoint_is_plain_data_and_names_its_params(work):
    out = "inspect.pt"
    assert train("teacher", work, out, {"NS_FAULT_KILL_AT_STEP": "train_teacher:6"}).returncode == -signal.SIGKILL
    ckpt = torch.load(resume_path(work / out), weights_only=True)  # no pickled code inside
    assert set(ckpt) == {"fingerprint", "step", "model", "ema", "optimizer", "scaler", "rng", "sums", "history"}
    fp = ckpt["fingerprint"]
    assert fp["recipe"]["arch"] == "ns_resnet_xs" and fp["fit"]["steps"] == 24 and fp["fit"]["lr"] == 0.05
    assert set(fp["inputs"]) == {"meta.json", "labeled.parquet"}
    assert len(fp["code_sha256"]) == 64 and fp["params.train.label_smoothing"] == 0.1
    assert not any(k.startswith(("params.speed.", "params.mlflow.")) for k in fp)  # how fast, never what


class Evil:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_checkpoints_never_run(work, tmp_path):
    marker = tmp_path / "pwned"
    # a model checkpoint in torch's own format carrying pickled code: the stage refuses it
    torch.save({"arch": "ns_resnet_xs", "state_dict": Evil(marker)}, tmp_path / "evil.pt")
    r = subprocess.run([sys.executable, "-m", "stages.evaluate", "--model", "teacher", "--data", str(work / "data"),
                        "--checkpoint", str(tmp_path / "evil.pt"), "--metrics", str(tmp_path / "m.json"),
                        "--predictions", str(tmp_path / "p.csv"), "--params", str(work / "params.yaml")],
                       cwd=ROOT, env={**os.environ, "NS_QUIET": "1"}, capture_output=True, text=True)
    assert r.returncode != 0 and "refused to load (not a plain-data checkpoint)" in r.stderr
    assert not marker.exists() and not (tmp_path / "m.json").exists()
    # a poisoned resume checkpoint: refused, not run; training starts from step 0 and finishes
    out = "poisoned.pt"
    resume_path(work / out).parent.mkdir(exist_ok=True)
    torch.save({"fingerprint": Evil(marker)}, resume_path(work / out))
    r = train("teacher", work, out)
    assert r.returncode == 0 and "refused to load" in r.stdout and "starting from step 0" in r.stdout
    assert not marker.exists()
    assert (work / out).exists()
