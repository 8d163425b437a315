"""What a result is made of, for the fingerprints that guard every kept partial result (a
training resume checkpoint, a labels folder): a kept result is reused only when everything
DVC would re-run the stage for is unchanged: the code, the params and the data.

- Code: the stage's own file and every module of this repository it imports, found with
  `ast` (absolute and relative imports, inside functions too). dvc.yaml lists exactly this
  closure as each stage's code deps (tests/depgraph.py rewrites and checks it from here),
  so the fingerprint and DVC cannot disagree on what code a stage runs.
- Params: every value of params.yaml except the sections that change how fast or where a
  result is logged, never what it is (NEUTRAL). That is a superset of the keys dvc.yaml lists
  for any stage (tests/test_pipeline.py proves those exact), so no key a stage reads can be
  left out; the price is that a kept partial result is dropped after an unrelated change.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
from pathlib import Path

PACKAGES = ("noisystudent", "stages")
NEUTRAL = ("speed", "mlflow")  # no stage depends on them (a test re-runs the pipeline with each speed key changed)
ROOT = Path(__file__).resolve().parents[1]


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of module `name` under `root` (a checkout), else wherever it is installed."""
    base = root / Path(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.exists():
            return f
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Modules of this repository that `path` imports (anywhere in the file)."""
    package = list(path.resolve().relative_to(root).with_suffix("").parts[:-1]) if path.resolve().is_relative_to(root) \
        else [path.parent.name]  # the package a relative import starts from
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
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]  # `from pkg import name` may name a module
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES and module_file(n, root) is not None}
    return found


def _trivial(f: Path) -> bool:
    """A package __init__ with nothing but a docstring and assignments (a version) is no code a stage runs."""
    return f.name == "__init__.py" and all(isinstance(n, (ast.Expr, ast.Assign)) for n in ast.parse(f.read_text()).body)


def closure(script: Path, root: Path = ROOT) -> list[Path]:
    """The files `script` runs: itself and every module of this repository it reaches, sorted."""
    todo, seen = [Path(script)], set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += [module_file(m, root) for m in imports(f, root)]
    return sorted(f for f in seen if not _trivial(f))


def code_digest(script: Path, root: Path = ROOT) -> str:
    """sha256 over the names and bytes of `script`'s closure: any line of code it runs changes it."""
    h = hashlib.sha256()
    for f in closure(script, root):
        h.update(f"{f.parent.name}/{f.name}\0".encode())
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def params_fingerprint(p) -> dict:
    """Every params value but the NEUTRAL sections, as dotted keys (so a mismatch names the key)."""
    from .params import unwrap

    out: dict = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v

    # unwrap: reading every key here decides only whether a kept result is reused (a fresh run
    # gives the same bytes), so it must not count as a dependency in the params-deps check
    walk({k: v for k, v in unwrap(p).model_dump(mode="json").items() if k not in NEUTRAL}, "params.")
    return out


def fingerprint(p, script: Path, **inputs) -> dict:
    """What a stage's kept partial result must have been made for: its code, its params and
    `inputs` (digests of the files it reads, e.g. the prepared data's content digest)."""
    return {"code_sha256": code_digest(script), **params_fingerprint(p), **inputs}
