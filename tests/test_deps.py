"""dvc.yaml never lies: each stage depends on exactly the code it runs and the params keys it
reads, section `speed` changes no byte of any result, and the DVC niceties are in place."""
import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SPEED_CHANGED
from depgraph import closure, code_deps, stage_script
from paramtrace import leaves

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def instances(params) -> dict[str, dict]:
    """Every stage as `dvc repro` runs it (foreach expanded), with its cmd and params, for `params`."""
    out = {}
    for name, st in DVC["stages"].items():
        if "foreach" not in st:
            out[name] = st
            continue
        src = st["foreach"][2:-1]
        items = list(params.iterations.items()) if src == "iterations" else [(m, m) for m in params.eval.models]
        for key, item in items:
            def sub(s, key=key, item=item):
                s = s.replace("${key}", key)
                if isinstance(item, str):
                    return s.replace("${item}", item)
                return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(getattr(item, m.group(1))), s)
            body = st["do"]
            out[f"{name}@{key}"] = {**body, "cmd": sub(body["cmd"]), "params": [sub(k) for k in body.get("params", [])]}
    return out


@pytest.mark.parametrize("name", list(DVC["stages"]))
def test_code_deps_are_the_import_closure(name):
    st = DVC["stages"][name].get("do", DVC["stages"][name])
    want, have = closure(stage_script(st["cmd"])), code_deps(st)
    missing, extra = sorted(want - have), sorted(have - want)
    assert not missing and not extra, f"stage {name}: missing code deps {missing}, extra code deps {extra}"


def _main_reads(cmd: str) -> set[str]:
    """Keys a stage command reads before its `run` (e.g. train.nproc, to relaunch under torchrun)."""
    mod = importlib.import_module(re.search(r"python -m (stages\.\w+)", cmd).group(1))
    return set(re.findall(r"\bp\.(\w+\.\w+)\b", inspect.getsource(mod.main)))


def test_params_deps_are_the_keys_read(tiny_runs):
    p = tiny_runs["params"]
    every = lambda keys: set().union(*[leaves(p, k) for k in keys]) if keys else set()  # noqa: E731
    problems = []
    stages = instances(p)
    assert set(tiny_runs["touched"]) == set(stages), "the tiny run and dvc.yaml disagree on the stages"
    for name, st in stages.items():
        declared = every(st.get("params", []))
        read = every(tiny_runs["touched"][name] | _main_reads(st["cmd"]))
        speed = {k for k in read if k.startswith("speed.")}
        if any(k.startswith("speed.") for k in declared):
            problems.append(f"{name}: declares section speed, which must never be a dependency")
        for k in sorted(read - speed - declared):
            problems.append(f"{name}: reads {k} but does not declare it in dvc.yaml")
        for k in sorted(declared - read):
            problems.append(f"{name}: declares {k} but never reads it")
    assert not problems, "\n".join(problems)


def test_speed_settings_change_no_byte(tiny_runs):
    """Every model, selection, metric, plot table and picture of the tiny pipeline is identical
    with every `speed` setting changed (threads, training and decoding workers, checkpoint
    interval) — and so reproducible: same params, same seed, same bytes."""
    a, b = tiny_runs["a"], tiny_runs["b"]
    # prepare_files.json names the folder it wrote (a vs b); the rest must match
    files = sorted(f.relative_to(a) for f in a.rglob("*") if f.is_file() and f.name != "prepare_files.json")
    assert len(files) > 50 and {Path("models/s2.pt"), Path("metrics/summary.json"), Path("docs/report/report.md")} <= set(files)
    differ = [str(f) for f in files if not (b / f).is_file() or (a / f).read_bytes() != (b / f).read_bytes()]
    assert not differ, f"changed by speed settings {SPEED_CHANGED}: {differ}"


def test_every_stage_has_a_description():
    assert all(st.get("desc", st.get("do", {}).get("desc")) for st in DVC["stages"].values())


def test_every_model_is_an_artifact_and_its_curve_in_the_overlay():
    from noisystudent.params import load_params

    p = load_params(ROOT / "params.yaml")
    assert {k: (a["path"], a["type"]) for k, a in DVC["artifacts"].items()} == {m: (f"models/{m}.pt", "model") for m in p.eval.models}
    overlay = next(pl["val_acc"] for pl in DVC["plots"] if "val_acc" in pl)
    assert overlay["y"] == {f"metrics/{m}/history.csv": "val_acc" for m in p.eval.models}


def test_dvc_plots_folder_is_ignored():
    assert "dvc_plots/" in (ROOT / ".gitignore").read_text().split()
