"""A throwaway git + DVC repository holding what a fresh clone holds, with tiny params, and
the real `dvc` run in it."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import ROOT, tiny_raw


# the stages of the tiny chain (s1, s2) that `dvc repro` runs: the first iteration's side, and what
# a change of the student noise re-runs
FIRST_ITER = {"prepare", "train_teacher", "pseudo_label@s1", "select@s1", "evaluate@teacher", "corrupt", "robustness_teacher",
              "train_baseline", "evaluate@baseline", "robustness_baseline", "train_oracle", "evaluate@oracle"}
STUDENT_SIDE = {"train_student@s1", "pseudo_label@s2", "select@s2", "train_student@s2", "evaluate@s1", "evaluate@s2",
                "robustness@s1", "robustness@s2", "summary", "gallery@s1", "gallery@s2", "report"}


def sh(args, cwd, env, check=True, timeout=1800):  # a guard against a hang, not a speed target: a busy machine is slow
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout + r.stderr


def dvc(*args, cwd, env, **kw):
    return sh([sys.executable, "-m", "dvc", *args], cwd, env, **kw)


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def merge(base: dict, over: dict) -> dict:
    """`over` on `base`, nested sections merged key by key (params.yaml keeps every key)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def make_repo(dst: Path, **overrides) -> tuple[Path, dict]:
    """A git repo holding what a fresh clone holds, with tiny params (+ overrides by section)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        ours = f.startswith(("metrics/", "models/", "data/pseudo/")) and not f.startswith("models/pretrained/")
        if ours or f == "dvc.lock" or not (ROOT / f).is_file():
            continue  # start from a fresh clone's state, without our results (models/pretrained/ is a dependency)
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in tiny_raw(mlflow={"enabled": True, "experiment": "e2e"}).items():
        raw[section] = values if section in ("iterations",) else merge(raw[section], values)
    for section, values in overrides.items():
        raw[section] = values if section == "iterations" else merge(raw[section], values)
    (dst / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `python` in dvc.yaml = this interpreter
    env["NS_QUIET"] = "1"
    for args in (["init", "-q"], ["config", "user.email", "t@example.com"], ["config", "user.name", "t"]):
        sh(["git", *args], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "init"], dst, env)
    return dst, env
