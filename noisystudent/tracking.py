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
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .spool import keep, pending_dir, sync_pending

PIPELINE_TAG = "ns.pipeline_key"
PIPELINE_ID_TAG = "ns.pipeline_id"  # sha256 of the key: what lookups filter on


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
    model = {"train_teacher": "teacher", "robustness_teacher": "teacher", "train_baseline": "baseline"}.get(stage, stage.partition("@")[2])
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
        self.failed = False
        self.journal: dict = {"stage": self.stage, "experiment": experiment, "pipeline_params": params,
                              "params": [], "metrics": [], "artifacts": [], "start_ms": int(time.time() * 1000),
                              "tags": dict(tags or {})}

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
            self.journal["parent_tags"] = {"git_commit": git_commit(), "dvc_exp_name": os.environ.get("DVC_EXP_NAME", "")}
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
        self.run_id = _create_child(self.client, self.journal)

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
        ts = int(time.time() * 1000)
        rows = [[k, float(v), ts, step or 0] for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None]
        self.journal["metrics"].extend(rows)
        if self.run_id:
            from mlflow.entities import Metric

            self._guard("log_metrics", self.client.log_batch, self.run_id, metrics=[Metric(*r) for r in rows])

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


def _create_child(client, j: dict) -> str:
    exp = client.get_experiment_by_name(j["experiment"])
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(j["experiment"], artifact_location=artifact_location())
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
    return client.create_run(exp_id, run_name=j["stage"], tags=tags, start_time=j["start_ms"]).info.run_id
