"""A view of Params that records every key read through it, so a test can compare what a
stage reads with what dvc.yaml says it depends on.

Attribute reads of leaves (numbers, strings, lists) record their dotted key; `model_dump()`
of a section records the section (all its keys); methods and properties of the params
classes run against the view, so what they read is recorded too. Iterating the `iterations`
mapping records nothing: the chain's names are the pipeline's structure (dvc.yaml's foreach),
not a value a stage depends on. `noisystudent.params.unwrap` gives the plain params behind the
view, for reads that must not count (what MLflow logs)."""
from __future__ import annotations

import functools

from pydantic import BaseModel


class _Node:
    def __init__(self, obj, path: str, log: set):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_log", log)

    def _key(self, name) -> str:
        return f"{self._path}.{name}" if self._path else str(name)


def _wrap(value, path: str, log: set, root):
    if isinstance(value, BaseModel):
        return Recorded(value, path, log, root)
    if isinstance(value, dict):
        return RecordedMap(value, path, log, root)
    log.add(path)
    return value


class Recorded(_Node):
    def __init__(self, obj, path: str = "", log: set | None = None, root=None):
        super().__init__(obj, path, log if log is not None else set())
        object.__setattr__(self, "_root", root if root is not None else obj)

    @property
    def __wrapped__(self):
        return self._root

    @property
    def touched(self) -> set[str]:
        return self._log

    def __getattr__(self, name):
        attr = getattr(type(self._obj), name, None)
        if name in type(self._obj).model_fields:
            return _wrap(getattr(self._obj, name), self._key(name), self._log, self._root)
        if name in ("model_dump", "model_dump_json"):
            self._log.add(self._path)
            return getattr(self._obj, name)
        if isinstance(attr, property):
            return attr.fget(self)
        if callable(attr):
            return functools.partial(attr, self)
        raise AttributeError(f"{type(self._obj).__name__} has no {name!r}")

    def __setattr__(self, name, value):
        raise AttributeError("params are read-only")


class RecordedMap(_Node):
    def __init__(self, obj: dict, path: str, log: set, root):
        super().__init__(obj, path, log)
        object.__setattr__(self, "_root", root)

    def __getitem__(self, k):
        return _wrap(self._obj[k], self._key(k), self._log, self._root)

    def __iter__(self):
        return iter(self._obj)

    def __len__(self):
        return len(self._obj)

    def __contains__(self, k):
        return k in self._obj

    def keys(self):
        return self._obj.keys()

    def get(self, k, default=None):
        if k in self._obj:
            return self[k]
        # a missing key's answer depends on what the map holds: its keys, or its being empty
        self._log.update({self._key(x) for x in self._obj} or {self._path})
        return default

    def values(self):
        return [self[k] for k in self._obj]

    def items(self):
        return [(k, self[k]) for k in self._obj]


def leaves(params: BaseModel, key: str) -> set[str]:
    """Every leaf key under `key` ('' = all), dotted."""
    node = params
    for part in [k for k in key.split(".") if k]:
        node = node[part] if isinstance(node, dict) else getattr(node, part)

    def walk(n, prefix):
        if isinstance(n, BaseModel):
            return set().union(*[walk(getattr(n, f), f"{prefix}.{f}" if prefix else f) for f in type(n).model_fields])
        if isinstance(n, dict):
            return set().union(*[walk(v, f"{prefix}.{k}") for k, v in n.items()]) if n else {prefix}
        return {prefix}

    return walk(node, key)
