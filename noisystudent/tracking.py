"""MLflow logging: one parent run per pipeline run or DVC experiment, one child run per stage.

Stages are separate processes, so the parent is found, not passed: its key is the DVC
experiment name when there is one (`DVC_EXP_NAME`, set by `dvc exp run`, queued runs too),
else the pid and start time of the `dvc repro` process that launched the stage. The store
defaults to `sqlite:///<repo>/mlflow.db` with artifacts in `<repo>/mlartifacts`, where
<repo> is `DVC_ROOT` (the main repository, even for queued runs in a temporary copy);
`MLFLOW_TRACKING_URI` overrides.

Tracking must never cost a run its results: every call is guarded; on the first failure the
tracker prints one warning and goes quiet, and the stage carries on writing its DVC outputs.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PIPELINE_TAG = "ns.pipeline_key"


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


class StageRun:
    """A child run for one stage execution. Use as a context manager."""

    def __init__(self, stage: str, experiment: str, params: dict, enabled: bool = True):
        self.stage, self.experiment, self.params, self.enabled = stage, experiment, params, enabled
        self.client = None
        self.run_id: str | None = None

    def _guard(self, what: str, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # tracking is best-effort; DVC outputs are the record of truth
            self.enabled = False
            print(f"WARNING: MLflow {what} failed ({type(e).__name__}: {e}); continuing without tracking", file=sys.stderr)
            return None

    def __enter__(self) -> "StageRun":
        self._guard("start", self._start)
        return self

    def _start(self) -> None:
        os.environ.pop("MLFLOW_RUN_ID", None)  # would hijack start_run; we use the client anyway
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri())
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            exp_id = self.client.create_experiment(self.experiment, artifact_location=artifact_location())
        else:
            exp_id = exp.experiment_id
        parent = self._parent(exp_id)
        run = self.client.create_run(
            exp_id, run_name=self.stage, tags={"mlflow.parentRunId": parent, "ns.stage": self.stage, PIPELINE_TAG: self._key}
        )
        self.run_id = run.info.run_id

    def _parent(self, exp_id: str) -> str:
        self._key = pipeline_key()
        found = self.client.search_runs([exp_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{self._key}' and tags.`ns.role` = 'pipeline'", max_results=1)
        if found:
            return found[0].info.run_id
        name = os.environ.get("DVC_EXP_NAME") or time.strftime("repro-%Y%m%d-%H%M%S")
        tags = {PIPELINE_TAG: self._key, "ns.role": "pipeline", "git_commit": git_commit(), "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")}
        run = self.client.create_run(exp_id, run_name=name, tags=tags)
        _log_params(self.client, run.info.run_id, self.params)
        self.client.set_terminated(run.info.run_id)  # children may be added to a finished parent
        return run.info.run_id

    def log_params(self, params: dict) -> None:
        if self.run_id:
            self._guard("log_params", _log_params, self.client, self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.run_id:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None]
        self._guard("log_metrics", self.client.log_batch, self.run_id, metrics=ms)

    def log_artifact(self, path: str | Path) -> None:
        if self.run_id and Path(path).exists():
            self._guard("log_artifact", self.client.log_artifact, self.run_id, str(path))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id:
            self._guard("end", self.client.set_terminated, self.run_id, "FINISHED" if exc_type is None else "FAILED")
