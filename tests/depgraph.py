"""What each DVC stage really depends on: the import closure of its script (ast, following
the package's absolute and relative imports, inside functions too) and the params keys it
reads (through a recording view of the params, tests/paramtrace.py)."""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

from conftest import ROOT

PACKAGES = ("noisystudent", "stages")


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.exists():
            return f
    return None


def _imports(path: Path) -> set[str]:
    """Modules of this repository that `path` imports (anywhere in the file)."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1])  # the package a relative import starts from
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    # imports under `if TYPE_CHECKING:` never run: they are annotations, not code a stage runs
    typing_only = {id(n) for top in ast.walk(tree) if isinstance(top, ast.If) and _is_type_checking(top.test)
                   for stmt in top.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import name` may name a module of pkg
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n.split(".")[0] in PACKAGES and _module_file(n) is not None:
                found.add(n)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def closure(script: Path) -> set[str]:
    """Repository-relative files `script` runs: itself and every module it reaches."""
    todo, seen = [script], set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += [_module_file(m) for m in _imports(f)]
    # package __init__ files that hold nothing but a docstring and a version are not code a stage runs
    return {str(f.relative_to(ROOT)) for f in seen if not (f.name == "__init__.py" and _trivial(f))}


def _trivial(f: Path) -> bool:
    body = ast.parse(f.read_text()).body
    return all(isinstance(n, (ast.Expr, ast.Assign)) for n in body)


def dvc_yaml() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def stage_script(cmd: str) -> Path:
    m = re.search(r"python -m (stages\.\w+)", cmd)
    assert m, f"cmd {cmd!r} does not run a stages/ module"
    return _module_file(m.group(1))


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
