"""The MLflow spool: records of stage runs that could not be logged live, kept in
`mlflow-pending/` at the repository root and sent later by `sync_pending`.

A record is `<name>.json`, with `<name>.artifacts/` holding copies of its artifacts. To send
one, a process claims it by an atomic rename to `<name>.claimed-<pid>-<start time>`, so
concurrent stages never send one twice; a claim whose process is gone (killed while sending)
is renamed back and sent again. Sending first discards what an earlier try left in the store
(runs are tagged with the record), then logs the record as one complete run.

Nothing here may jam tracking: a record the store refuses while the store itself works is set
aside in `mlflow-pending/failed/`, the error written beside it, reported once, and the other
records go on. The run made for it is ended FAILED and deleted, not kept: a FAILED run would
read as a stage that failed, and a fixed record sent again would make a second one (MLflow
keeps deleted runs restorable until `mlflow gc`). When the store itself fails (down, locked),
the record is put back and the sync stops, for a later stage to retry.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import traceback
import uuid
from pathlib import Path

PENDING_TAG = "ns.pending_id"  # a digest of the record's name, on the run made from it


def pending_dir() -> Path:
    from .tracking import repo_root

    return repo_root() / "mlflow-pending"


def keep(journal: dict) -> Path:
    """Write a run's records (and copies of its artifacts, which later runs may overwrite) for
    `sync_pending`. Leaves nothing half-written behind if it fails (disk full), and raises."""
    from .io import atomic_write_text

    d = pending_dir()
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{journal['stage'].replace('@', '_')}-{uuid.uuid4().hex[:8]}"
    arts = d / f"{name}.artifacts"
    def copy(path: str) -> str:  # the record keeps its own copy: the pipeline may overwrite the file
        arts.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, arts / Path(path).name)
        return str(arts / Path(path).name)

    try:
        kept = [copy(a) for a in journal["artifacts"]]
        inputs = [{**i, "path": copy(i["path"])} for i in journal.get("inputs") or []]
        model = journal.get("model") and {**journal["model"], "checkpoint": copy(journal["model"]["checkpoint"])}
        text = json.dumps({**journal, "artifacts": kept, "inputs": inputs, "model": model}, indent=2, default=str) + "\n"
        atomic_write_text(d / f"{name}.json", text)
    except BaseException:
        shutil.rmtree(arts, ignore_errors=True)
        raise
    return d / f"{name}.json"


def _claim_suffix() -> str:
    import psutil

    return f".claimed-{os.getpid()}-{psutil.Process().create_time():.0f}"


def _claimer_alive(claim: Path) -> bool:
    """Whether the process named in a claim still runs: its pid exists and, where the claim
    names a start time (older claims do not), it started then (not a reused pid)."""
    import psutil

    pid, _, start = claim.suffix[len(".claimed-"):].partition("-")
    try:
        if not psutil.pid_exists(int(pid)):
            return False
        return not start or abs(psutil.Process(int(pid)).create_time() - float(start)) < 2
    except psutil.NoSuchProcess:
        return False
    except ValueError:
        return False  # not a name this module writes: nobody holds it
    except Exception:
        return True  # cannot tell (no permission): leave it


def _reclaim_dead(d: Path, quiet: bool) -> None:
    for claim in sorted(d.glob("*.claimed-*")):
        if _claimer_alive(claim):
            continue
        try:
            claim.rename(claim.with_suffix(".json"))
        except FileNotFoundError:
            continue  # another stage reclaimed it first
        if not quiet:
            print(f"{claim.name}: the process that claimed it is gone; sending it again", file=sys.stderr)


def _discard(client, run_id: str) -> None:
    """End a run FAILED, then delete it; best-effort (it may be gone, or never made)."""
    for step in (lambda: client.set_terminated(run_id, "FAILED"), lambda: client.delete_run(run_id)):
        try:
            step()
        except Exception:
            pass


def _send(client, j: dict, pending_id: str, created: list[str]) -> None:
    from mlflow.entities import Metric

    from .tracking import _create_child, _log_input, _log_model, _log_params

    if j.get("partial_run_id"):
        _discard(client, j["partial_run_id"])  # what the stage's failure left half-logged
    exp = client.get_experiment_by_name(j["experiment"])
    if exp is not None:  # what an earlier try of this record left (killed, or the store failed)
        for run in client.search_runs([exp.experiment_id], filter_string=f"tags.`{PENDING_TAG}` = '{pending_id}'"):
            _discard(client, run.info.run_id)
    parent, run_id = _create_child(client, {**j, "tags": {**j.get("tags", {}), PENDING_TAG: pending_id}})
    created.append(run_id)
    for params in j["params"]:
        _log_params(client, run_id, params)
    ms = [Metric(*r) for r in j["metrics"]]
    for i in range(0, len(ms), 1000):
        client.log_batch(run_id, metrics=ms[i : i + 1000])
    for a in j["artifacts"]:
        client.log_artifact(run_id, a)
    if j.get("parent_metrics"):
        client.log_batch(parent, metrics=[Metric(*r) for r in j["parent_metrics"]])
    for i in j.get("inputs") or []:
        _log_input(client, run_id, i["path"], i["name"], i["context"])
    if j.get("model"):
        _log_model(run_id, j["model"]["checkpoint"], j["model"]["register_as"])
    client.set_tag(run_id, "ns.sent_later", "true")
    client.set_terminated(run_id, j["status"], end_time=j["end_ms"])


def _store_fails(client, e: Exception) -> bool:
    """Whether `e` came from the store (down, locked) rather than from the record."""
    from .tracking import _is_locked

    if _is_locked(e):
        return True
    try:
        client.search_experiments(max_results=1)
        return False
    except Exception:
        return True


def _set_aside(claimed: Path, f: Path, e: Exception, discarded: list[str]) -> None:
    failed = f.parent / "failed"
    try:
        failed.mkdir(exist_ok=True)
        where = claimed.rename(failed / f.name)
    except OSError:
        where = claimed.rename(f.with_suffix(".failed"))  # not *.json: never tried again
    arts = f.parent / f"{f.stem}.artifacts"
    if arts.exists() and where.parent == failed:
        try:
            arts.rename(failed / arts.name)
        except OSError:
            pass  # left beside: the error note says where the record is
    note = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    if discarded:
        note += f"\nThe run made for it was ended FAILED and deleted: {', '.join(discarded)}\n"
    try:
        where.with_suffix(".error.txt").write_text(note)
    except OSError:
        pass  # the warning below still says why
    print(f"WARNING: MLflow record {f.name} could not be sent ({type(e).__name__}: {str(e)[:300]}); it is set aside as "
          f"{where} and not tried again (fix it and move it back to {f.parent}/ to retry); other records and "
          f"stages log as usual", file=sys.stderr, flush=True)


def _unavailable(e: Exception, d: Path, quiet: bool, sent: int = 0) -> int:
    if not quiet:  # a stage says so itself when it cannot log
        print(f"MLflow store unavailable ({type(e).__name__}: {str(e)[:300]}); records stay in {d}/", file=sys.stderr)
    return sent


def sync_pending(quiet: bool = False) -> int:
    """Send the spooled runs to the tracking store, one record at a time; returns how many were
    sent. A record that cannot be sent is set aside and reported, never raised."""
    from mlflow.tracking import MlflowClient

    from .tracking import _configure_http, tracking_uri

    d = pending_dir()
    if not d.is_dir():
        return 0
    _reclaim_dead(d, quiet)
    files = sorted(d.glob("*.json"))
    if not files:
        return 0
    _configure_http()
    try:
        client = MlflowClient(tracking_uri())
        client.search_experiments(max_results=1)  # a SQLite store is only opened here
    except Exception as e:
        return _unavailable(e, d, quiet)
    sent = 0
    for f in files:
        claimed = f.with_suffix(_claim_suffix())
        try:
            f.rename(claimed)
        except FileNotFoundError:
            continue  # another stage took it
        created: list[str] = []
        try:
            j = json.loads(claimed.read_text())
            _send(client, j, hashlib.sha256(f.stem.encode()).hexdigest()[:32], created)
        except Exception as e:
            if _store_fails(client, e):
                claimed.rename(f)  # the next stage tries again (and discards what this try left)
                return _unavailable(e, d, quiet, sent)
            for run_id in created:
                _discard(client, run_id)
            _set_aside(claimed, f, e, created)
            continue
        except BaseException:
            claimed.rename(f)  # interrupted: keep it for the next try
            raise
        claimed.unlink()
        shutil.rmtree(d / f"{f.stem}.artifacts", ignore_errors=True)
        sent += 1
        if not quiet:
            print(f"sent {f.name}: {j['stage']} ({len(j['metrics'])} metric values, {len(j['artifacts'])} artifacts)")
    return sent
