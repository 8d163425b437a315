"""What each DVC stage really depends on: the import closure of its script (ast, following
the package's absolute and relative imports, inside functions too: noisystudent/provenance.py,
which the resume fingerprints use too) and the params keys it reads (through a recording view
of the params, tests/paramtrace.py)."""
from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from conftest import ROOT

from noisystudent.provenance import closure as _closure
from noisystudent.provenance import module_file


def closure(script: Path) -> set[str]:
    """Repository-relative files `script` runs: itself and every module it reaches (the
    closure the resume and labeling fingerprints hash, noisystudent/provenance.py)."""
    return {str(f.relative_to(ROOT)) for f in _closure(script, ROOT)}


def dvc_yaml() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def stage_script(cmd: str) -> Path:
    m = re.search(r"python -m (stages\.\w+)", cmd)
    assert m, f"cmd {cmd!r} does not run a stages/ module"
    return module_file(m.group(1), ROOT)


def code_deps(stage: dict) -> set[str]:
    """The .py files a dvc.yaml stage lists among its deps."""
    return {d for d in stage.get("deps", []) if str(d).endswith(".py")}


def instances(params) -> dict[str, dict]:
    """Every stage as `dvc repro` runs it (foreach expanded), with its cmd and params, for `params`."""
    out = {}
    for name, st in dvc_yaml()["stages"].items():
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


def main_reads(cmd: str) -> set[str]:
    """Keys a stage command reads before its `run` (e.g. train.nproc, to relaunch under torchrun)."""
    mod = importlib.import_module(re.search(r"python -m (stages\.\w+)", cmd).group(1))
    return set(re.findall(r"\bp\.(\w+\.\w+)\b", inspect.getsource(mod.main)))


def write_code_deps(path: Path = ROOT / "dvc.yaml") -> None:
    """Rewrite the package modules under each stage's own file in dvc.yaml's deps to its
    closure (comments and everything else stay as they are)."""
    import yaml

    stages = yaml.safe_load(path.read_text())["stages"]
    out, stage = [], None
    for line in path.read_text().split("\n"):
        m = re.match(r"^  (\w+):$", line)
        stage = m.group(1) if m and m.group(1) in stages else stage
        if re.match(r"^\s+- noisystudent/\w+\.py$", line):
            continue
        out.append(line)
        own = re.match(r"^(\s+)- (stages/\w+\.py)$", line)
        if own and stage:
            body = stages[stage].get("do", stages[stage])
            out += [f"{own.group(1)}- {f}" for f in sorted(closure(stage_script(body["cmd"])) - {own.group(2)})]
    path.write_text("\n".join(out))


if __name__ == "__main__":  # `python tests/depgraph.py`: rewrite dvc.yaml's code deps after an import changed
    write_code_deps()
