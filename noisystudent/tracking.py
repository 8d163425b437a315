"""MLflow logging: one parent run per pipeline run or DVC experiment, one child run per stage.

Stages are separate processes, so the parent is found, not passed: its key is the DVC
experiment name when there is one (`DVC_EXP_NAME`, set by `dvc exp run`, queued runs too),
else the pid and start time of the `dvc repro` process that launched the stage. The store
defaults to `sqlite:///<repo>/mlflow.db` with artifacts in `<repo>/mlartifacts`, where
<repo> is `DVC_ROOT` (the main repository, even for queued runs in a temporary copy);
`MLFLOW_TRACKING_URI` overrides.

Tracking must never cost a run its results: every call is guarded; on the first failure the
tracker prints one warning and goes quiet, the stage carries on writing its DVC outputs, and
the run's records are spooled to `mlflow-pending/` and sent later (see StageRun and spool.py).
If even the spool fails (disk full), a second warning says what was lost, and the stage
still succeeds; a record that cannot be sent is set aside, never blocking later stages.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .spool import keep, pending_dir, sync_pending

PIPELINE_TAG = "ns.pipeline_key"
PIPELINE_ID_TAG = "ns.pipeline_id"  # sha256 of the key: what lookups filter on
# MLflow 3 opens an experiment on its model-training view, not the GenAI one, with this tag
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def repo_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def artifact_location() -> str | None:
    """Beside a SQLite store (never MLflow's default ./mlruns in whatever the cwd is);
    a tracking server chooses its own."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def _launcher() -> tuple[int, float] | None:
    """The `dvc` process above us, if any (pid, start time)."""
    try:
        import psutil

        for p in psutil.Process().parents():
            cmd = " ".join(p.cmdline()[:3])
            if "dvc" in Path(cmd.split(" ")[0]).name or " -m dvc" in cmd or "/dvc " in cmd + " ":
                return p.pid, p.create_time()
    except Exception:
        pass
    return None


def pipeline_key() -> str:
    if os.environ.get("DVC_EXP_NAME"):
        return f"exp:{os.environ['DVC_EXP_NAME']}"
    launcher = _launcher()
    if launcher is not None:
        return f"repro:{launcher[0]}:{launcher[1]:.0f}"
    return f"manual:{os.getpid()}:{time.time():.0f}"


def git_commit() -> str:
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _log_params(client, run_id: str, params: dict) -> None:
    """Flattened params, as strings within MLflow's value limit, 100 per request (its cap)."""
    from mlflow.entities import Param

    flat = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(flat), 100):
        client.log_batch(run_id, params=flat[i : i + 100])


def stage_run(p, stage: str, enabled: bool = True) -> "StageRun":
    """The MLflow child run of one stage execution (`stage` is DVC's name: train_student@s1).
    Stages about one model carry its name as a tag, so MLflow groups a model's training, test
    and robustness runs. The MLflow settings and the params logged are read from the plain
    params (`unwrap`): they describe the run and change no result, so no stage depends on them."""
    from .params import unwrap

    p = unwrap(p)
    model = {"train_teacher": "teacher", "robustness_teacher": "teacher", "train_baseline": "baseline",
             "robustness_baseline": "baseline", "train_oracle": "oracle"}.get(stage, stage.partition("@")[2])
    run = StageRun(stage, p.mlflow.experiment, p.model_dump(), enabled=p.mlflow.enabled and enabled,
                   tags={"ns.model": model} if model else None)
    run.params_source = p
    return run


def _configure_http() -> None:
    # a tracking server that is down must not stall a stage for minutes of HTTP retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def _is_locked(e: Exception) -> bool:
    return "locked" in str(e).lower() or "busy" in str(e).lower()


class StageRun:
    """A child run for one stage execution. Use as a context manager.

    Everything logged is also kept in a journal. If MLflow fails (server down, database
    locked past a few retries), the stage prints one warning, carries on, and at the end
    writes the journal to `mlflow-pending/` at the repository root; `sync_pending` (run at
    the start of every later stage, or by `python -m noisystudent sync-mlflow`) sends it as
    a complete run, replacing any partial one the failure left."""

    RETRIES = 3  # for a locked SQLite store (another stage writing); other errors are not retried

    def __init__(self, stage: str, experiment: str, params: dict, enabled: bool = True, tags: dict | None = None):
        self.stage, self.experiment, self.params, self.enabled = stage, experiment, params, enabled
        self.client = None
        self.params_source = None  # the plain Params, for log_sections
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self.failed = False
        self.journal: dict = {"stage": self.stage, "experiment": experiment, "pipeline_params": params,
                              "params": [], "metrics": [], "artifacts": [], "start_ms": int(time.time() * 1000),
                              "tags": dict(tags or {}), "parent_metrics": [], "inputs": [], "model": None}

    def _guard(self, what: str, fn, *args, **kwargs):
        if not self.enabled or self.failed:
            return None
        for attempt in range(self.RETRIES + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # tracking is best-effort; DVC outputs are the record of truth
                if _is_locked(e) and attempt < self.RETRIES:
                    time.sleep(0.5 * 2**attempt)
                    continue
                self.failed = True
                print(f"WARNING: MLflow {what} failed ({type(e).__name__}: {str(e)[:300]}); the stage goes on, and its "
                      f"records are kept in {pending_dir()}/ to be sent later (`python -m noisystudent sync-mlflow`)",
                      file=sys.stderr, flush=True)
                return None

    def __enter__(self) -> "StageRun":
        if self.enabled:
            self.journal["pipeline_key"] = pipeline_key()
            self.journal["parent_name"] = os.environ.get("DVC_EXP_NAME") or time.strftime("repro-%Y%m%d-%H%M%S")
            commit = git_commit()  # mlflow.source.git.commit: the UI's Version column
            self.journal["parent_tags"] = {"git_commit": commit, "mlflow.source.git.commit": commit,
                                           "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")}
            _configure_http()
            try:  # sets aside and reports what it cannot send: only the unforeseen reaches here
                sync_pending(quiet=True)
            except Exception as e:  # this stage still logs live
                print(f"WARNING: MLflow sync of pending records failed ({type(e).__name__}: {str(e)[:300]}); they stay "
                      f"in {pending_dir()}/ for a later stage", file=sys.stderr, flush=True)
        self._guard("start", self._start)
        return self

    def _start(self) -> None:
        os.environ.pop("MLFLOW_RUN_ID", None)  # would hijack start_run; we use the client anyway
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri())
        self.parent_id, self.run_id = _create_child(self.client, self.journal)

    def log_params(self, params: dict) -> None:
        if not self.enabled:
            return
        self.journal["params"].append(params)
        if self.run_id:
            self._guard("log_params", _log_params, self.client, self.run_id, params)

    def log_sections(self, *keys: str) -> None:
        """Log params sections (dotted: `eval.robustness`) of the plain params `stage_run` was
        given: shown in the run, never counted as what the stage depends on."""
        out = {}
        for key in keys:
            node = self.params_source
            for part in key.split("."):
                node = getattr(node, part)
            out[key] = node.model_dump()
        self.log_params(out)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        rows = _metric_rows(metrics, step or 0)
        self.journal["metrics"].extend(rows)
        if self.run_id:
            from mlflow.entities import Metric

            self._guard("log_metrics", self.client.log_batch, self.run_id, metrics=[Metric(*r) for r in rows])

    def log_parent_metrics(self, metrics: dict[str, float]) -> None:
        """Metrics of the whole pipeline run (the summary's), on the parent run: what the MLflow
        table sorts pipeline runs and DVC experiments by."""
        if not self.enabled:
            return
        rows = _metric_rows(metrics, 0)
        self.journal["parent_metrics"].extend(rows)
        if self.parent_id:
            from mlflow.entities import Metric

            self._guard("log_metrics (parent)", self.client.log_batch, self.parent_id, metrics=[Metric(*r) for r in rows])

    def log_input(self, path: str | Path, name: str, context: str = "training") -> None:
        """A dataset the stage learned from (a Parquet table), as an MLflow run input."""
        if not self.enabled:
            return
        self.journal["inputs"].append({"path": str(Path(path).resolve()), "name": name, "context": context})
        if self.run_id:
            self._guard("log_input", _log_input, self.client, self.run_id, path, name, context)

    def log_model(self, checkpoint: str | Path, register_as: str | None = None) -> None:
        """The trained model as an MLflow model (PyTorch flavour, with a signature, an input
        example and this package as its code), `mlflow.pytorch.load_model("runs:/<id>/model")`;
        registered under `register_as` when given."""
        if not self.enabled:
            return
        self.journal["model"] = {"checkpoint": str(Path(checkpoint).resolve()), "register_as": register_as}
        if self.run_id:
            self._guard("log_model", _log_model, self.run_id, checkpoint, register_as)

    def log_artifact(self, path: str | Path) -> None:
        if not self.enabled or not Path(path).exists():
            return
        self.journal["artifacts"].append(str(Path(path).resolve()))
        if self.run_id:
            self._guard("log_artifact", self.client.log_artifact, self.run_id, str(path))

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.enabled:
            return
        status = "FINISHED" if exc_type is None else "FAILED"
        if self.run_id and not self.failed:
            self._guard("end", self.client.set_terminated, self.run_id, status)
        if self.failed:
            j = self.journal
            try:
                j.update(status=status, end_ms=int(time.time() * 1000), partial_run_id=self.run_id)
                keep(j)
            except Exception as e:  # disk full: the records are lost, the stage's outputs are not
                print(f"WARNING: MLflow records of stage {self.stage} are lost: they could not be kept in "
                      f"{pending_dir()}/ ({type(e).__name__}: {str(e)[:300]}); {len(j['params'])} params sections, "
                      f"{len(j['metrics'])} metric values and {len(j['artifacts'])} artifacts are in no MLflow run "
                      f"(the stage itself {'succeeded' if exc_type is None else 'failed'}; its DVC outputs are "
                      f"unaffected)", file=sys.stderr, flush=True)


def _metric_rows(metrics: dict, step: int) -> list[list]:
    """[key, value, timestamp ms, step] of the numeric values: a journal row and a Metric's arguments."""
    ts = int(time.time() * 1000)
    return [[k, float(v), ts, step] for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None]


def experiment_id(client, name: str) -> str:
    """The experiment's id, created (beside the store, tagged for the model-training view) if new."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location(), tags=EXPERIMENT_KIND)
    for k, v in EXPERIMENT_KIND.items():
        if k not in exp.tags:  # made before the tag, or by someone else: set once
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def _log_input(client, run_id: str, path: str | Path, name: str, context: str) -> None:
    import mlflow.data
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    ds = mlflow.data.from_pandas(pd.read_parquet(path), source=str(path), name=name)
    client.log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)])])


def _log_model(run_id: str, checkpoint: str | Path, register_as: str | None) -> None:
    import mlflow
    import timm
    import torch
    from mlflow.models import infer_signature

    from .checkpoint import load_model
    from .export import example_input

    model, ckpt = load_model(Path(checkpoint))
    x = example_input(ckpt, 2)
    with torch.inference_mode():
        y = model(x)
    with _fluent_store():
        with mlflow.start_run(run_id=run_id):
            mlflow.pytorch.log_model(
                model, name="model", signature=infer_signature(x.numpy(), y.numpy()), input_example=x.numpy(),
                # the package, so the model's classes load anywhere; versions given, not inferred (that
                # would load the model again in a subprocess, seconds per stage)
                code_paths=[str(Path(__file__).parent)], registered_model_name=register_as,
                # the module itself (pickled, its classes from code_paths): load_model returns the
                # nn.Module users know (eval(), .train(), hooks), not an exported graph
                serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"])


@contextmanager
def _fluent_store():
    """MLflow's fluent API (log_model has no client form) on this store, and afterwards the
    process's tracking settings as they were: set_tracking_uri pins a module global and the
    environment variable, which would outlive this call in a long-lived process."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    pinned, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri())
    try:
        yield
    finally:
        utils._tracking_uri = pinned
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _create_child(client, j: dict) -> tuple[str, str]:
    """(parent run id, the new child run's id)."""
    exp_id = experiment_id(client, j["experiment"])
    key = j["pipeline_key"]
    # looked up by a digest: an experiment name with quotes can never break the filter string
    lookup = hashlib.sha256(key.encode()).hexdigest()[:32]
    found = client.search_runs([exp_id], filter_string=f"tags.`{PIPELINE_ID_TAG}` = '{lookup}' and tags.`ns.role` = 'pipeline'",
                               max_results=1)
    if found:
        parent = found[0].info.run_id
    else:
        tags = {PIPELINE_TAG: key, PIPELINE_ID_TAG: lookup, "ns.role": "pipeline", **j["parent_tags"]}
        run = client.create_run(exp_id, run_name=j["parent_name"], tags=tags, start_time=j["start_ms"])
        _log_params(client, run.info.run_id, j["pipeline_params"])
        client.set_terminated(run.info.run_id)  # children may be added to a finished parent
        parent = run.info.run_id
    tags = {"mlflow.parentRunId": parent, "ns.stage": j["stage"], PIPELINE_TAG: key, **j.get("tags", {})}
    return parent, client.create_run(exp_id, run_name=j["stage"], tags=tags, start_time=j["start_ms"]).info.run_id
