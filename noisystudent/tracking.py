"""MLflow logging: one parent run per pipeline run or DVC experiment, one child run per stage.

Stages are separate processes, so the parent is found, not passed: its key is the DVC
experiment name when there is one (`DVC_EXP_NAME`, set by `dvc exp run`, queued runs too),
else the pid and start time of the `dvc repro` process that launched the stage. The store
defaults to `sqlite:///<repo>/mlflow.db` with artifacts in `<repo>/mlartifacts`, where
<repo> is `DVC_ROOT` (the main repository, even for queued runs in a temporary copy);
`MLFLOW_TRACKING_URI` overrides.

Tracking must never cost a run its results: every call is guarded; on the first failure the
tracker prints one warning and goes quiet, the stage carries on writing its DVC outputs, and
the run's records are spooled to `mlflow-pending/` and sent later (see StageRun).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def pending_dir() -> Path:
    return repo_root() / "mlflow-pending"


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
            self._guard("sync of pending records", sync_pending, quiet=True)
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
            self.journal.update(status=status, end_ms=int(time.time() * 1000), partial_run_id=self.run_id)
            _spool(self.journal)


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


def _spool(journal: dict) -> None:
    """Keep a failed run's records (and copies of its artifacts, which later runs may
    overwrite) for `sync_pending`."""
    import json
    import shutil
    import uuid

    from .io import atomic_write_json

    d = pending_dir()
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{journal['stage'].replace('@', '_')}-{uuid.uuid4().hex[:8]}"
    kept = []
    for a in journal["artifacts"]:
        dst = d / f"{name}.artifacts" / Path(a).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(a, dst)
        kept.append(str(dst))
    journal = {**journal, "artifacts": kept}
    json.dumps(journal)  # fail here, not with a torn file, if anything is not JSON
    atomic_write_json(d / f"{name}.json", journal)


def sync_pending(quiet: bool = False) -> int:
    """Send every spooled run to the tracking store; returns how many were sent. Each file is
    claimed by an atomic rename first, so concurrent stages never send one twice."""
    import json
    import shutil

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    d = pending_dir()
    files = sorted(d.glob("*.json")) if d.is_dir() else []
    if not files:
        return 0
    client = MlflowClient(tracking_uri())
    sent = 0
    for f in files:
        claimed = f.with_suffix(f".claimed-{os.getpid()}")
        try:
            f.rename(claimed)
        except FileNotFoundError:
            continue  # another stage took it
        try:
            j = json.loads(claimed.read_text())
        except ValueError as e:
            claimed.rename(f.with_suffix(".unreadable"))
            print(f"WARNING: {f}: not a readable record ({e}); kept as {f.with_suffix('.unreadable').name}", file=sys.stderr)
            continue
        try:
            if j.get("partial_run_id"):
                try:
                    client.delete_run(j["partial_run_id"])  # what the failure left half-logged
                except Exception:
                    pass  # never created, or already gone
            run_id = _create_child(client, j)
            for params in j["params"]:
                _log_params(client, run_id, params)
            ms = [Metric(*r) for r in j["metrics"]]
            for i in range(0, len(ms), 1000):
                client.log_batch(run_id, metrics=ms[i : i + 1000])
            for a in j["artifacts"]:
                client.log_artifact(run_id, a)
            client.set_tag(run_id, "ns.sent_later", "true")
            client.set_terminated(run_id, j["status"], end_time=j["end_ms"])
        except BaseException:
            claimed.rename(f)  # keep it for the next try
            raise
        claimed.unlink()
        shutil.rmtree(d / f"{f.stem}.artifacts", ignore_errors=True)
        sent += 1
        if not quiet:
            print(f"sent {f.name}: {j['stage']} ({len(j['metrics'])} metric values, {len(j['artifacts'])} artifacts)")
    return sent
