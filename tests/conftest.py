import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["NS_QUIET"] = "1"
# one intra-op thread per process: pytest-xdist already runs one worker per core, and the stages
# it launches run beside the other worker's; two threads each would only contend (tiny models
# gain nothing from them). Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
    os.environ.pop(var, None)

TINY = {
    "data": {"labeled_per_class": 3, "val_per_class": 5, "test_per_class": 10, "image_size": 8},
    "teacher": {"arch": "ns_resnet_xs", "steps": 15},
    "baseline": {"arch": "ns_resnet_xs"},
    "student": {"steps": 10, "batch_ratio": 2},
    "noise": {"dropout": 0.2},
    "train": {"batch_size": 16, "warmup_steps": 2},
    "select": {"per_class": 20, "threshold": 0.1},
    "iterations": {"s1": {"teacher": "teacher", "arch": "ns_resnet_xs"}, "s2": {"teacher": "s1", "arch": "ns_resnet_xs"}},
    "eval": {"models": ["teacher", "s1", "s2", "baseline", "oracle"],
             "robustness": {"num_images": 20, "severities": [1, 3], "frames": 3, "epsilons": [0, 4]}},
    "mlflow": {"enabled": False},
}


def tiny_raw(**overrides) -> dict:
    import copy

    raw = copy.deepcopy(TINY)
    for key, value in overrides.items():
        node = raw
        *path, last = key.split("__")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = value
    return raw


@pytest.fixture
def tiny_params():
    from noisystudent.params import Params

    return lambda **kw: Params.model_validate(tiny_raw(**kw))


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An empty MLflow SQLite store, made once per worker: creating its tables takes seconds."""
    import mlflow

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.tracking.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(empty_store, tmp_path, monkeypatch):
    """A fresh store for one test (a copy of the empty one), as MLFLOW_TRACKING_URI."""
    import shutil

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory):
    """A tiny-params repository after one real `dvc repro` with MLflow on (root, env, output),
    shared by the end-to-end and browser tests: the pipeline runs once per session."""
    from dvcrepo import dvc, make_repo

    root, env = make_repo(tmp_path_factory.mktemp("e2e") / "repo")
    return root, env, dvc("repro", cwd=root, env=env)


# a changed value for every setting of section `speed`: no byte of any model or metric may move
SPEED_CHANGED = {"train_workers": 2, "data_workers": 2, "checkpoint_every": 4, "augment": "batched"}


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """The tiny pipeline in-process (tests/tinyrun.py): `a` through recording views of the
    params (`touched`: stage -> keys read), then once per `speed` setting: a copy of `a` in
    which every stage that reads the setting ran again with it changed (`speed`: key -> that
    folder; a stage that reads none cannot depend on it, and its inputs are then unchanged)."""
    import shutil

    from noisystudent.params import Params
    from paramtrace import Recorded
    from tinyrun import run_all

    root = tmp_path_factory.mktemp("tiny")
    p = Params.model_validate(tiny_raw())
    views: dict = {}
    summary = run_all(p, root / "a", lambda stage: views.setdefault(stage, Recorded(p)))
    touched = {k: v.touched for k, v in views.items()}
    readers = {}
    for key, value in SPEED_CHANGED.items():
        readers[key] = {stage for stage, keys in touched.items() if f"speed.{key}" in keys or "speed" in keys}
        shutil.copytree(root / "a", root / key)
        run_all(Params.model_validate(tiny_raw(**{f"speed__{key}": value})), root / key, only=readers[key])
    return {"params": p, "a": root / "a", "speed": {k: root / k for k in SPEED_CHANGED}, "summary": summary,
            "speed_readers": readers,
            "touched": touched}



# the files that take minutes, longest first (`pytest --durations` in CI prints the figures)
LONG_FILES = ("test_e2e.py", "test_e2e_imagefolder.py", "test_faults.py")


def pytest_collection_modifyitems(config, items):
    """Run the long end-to-end files first: pytest-xdist (`--dist loadfile`) hands whole files to
    its workers in collection order (with `--no-loadscope-reorder`, pyproject.toml: by default
    it orders files by their number of tests), so one started last sets the suite's wall time
    (the longest jobs first is the classic schedule for parallel machines)."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))  # stable: the rest keep their order
