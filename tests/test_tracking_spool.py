"""The MLflow spool (noisystudent/spool.py) never breaks a stage and never jams tracking: a
spool that cannot be written (disk full), a pending record the store refuses, a record whose
sender was killed after claiming it."""
import errno
import json
import subprocess

import mlflow
import psutil
import pytest
from mlflow.entities import ViewType

from noisystudent.tracking import StageRun, pending_dir, sync_pending


@pytest.fixture
def store(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-spool")
    return mlflow.tracking.MlflowClient(mlflow_uri)


def _runs(view=ViewType.ALL):
    return mlflow.search_runs(experiment_names=["t"], output_format="list", run_view_type=view)


def _record(stage="select@s1", metrics=(("loss", 0.5, 1, 1),)) -> dict:
    """A pending record as StageRun keeps it."""
    return {"stage": stage, "experiment": "t", "pipeline_params": {}, "params": [{"select": {"per_class": 5}}],
            "metrics": [list(m) for m in metrics], "artifacts": [], "start_ms": 1000, "tags": {},
            "pipeline_key": "exp:exp-spool", "parent_name": "exp-spool", "parent_tags": {}, "status": "FINISHED",
            "end_ms": 2000, "partial_run_id": None}


def test_a_spool_that_cannot_be_written_warns_what_was_lost_and_the_stage_succeeds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "a_file").write_text("")  # the store cannot be created: the stage spools its records
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}")

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("noisystudent.io.atomic_write_text", disk_full)
    art = tmp_path / "select.json"
    art.write_text("{}")
    with StageRun("select@s1", "t", {}) as r:  # must not raise: the stage had finished
        r.log_metrics({"loss": 1.0}, step=1)
        r.log_artifact(art)
    err = capsys.readouterr().err
    lost = [line for line in err.splitlines() if "are lost" in line]
    assert len(lost) == 1 and "select@s1" in lost[0] and "No space left on device" in lost[0]
    assert "1 metric values and 1 artifacts" in lost[0] and "succeeded" in lost[0]
    assert not list(pending_dir().glob("*.json")) and not list(pending_dir().glob("*.artifacts"))  # nothing half-kept

    with pytest.raises(ZeroDivisionError):  # a stage's own error still propagates, not the spool's
        with StageRun("select@s2", "t", {}):
            1 / 0
    assert "select@s2 are lost" in capsys.readouterr().err


@pytest.mark.parametrize("bad, why", [("metric MLflow rejects", 'Invalid value "abc"'), ("not JSON", "JSONDecodeError")])
def test_a_bad_pending_record_is_set_aside_once_and_later_stages_log(store, capsys, bad, why):
    d = pending_dir()
    d.mkdir()
    name = "20240101-000000-select_s1-deadbeef"
    if bad == "not JSON":
        (d / f"{name}.json").write_text('{"stage": "select@s1", "metr')
    else:
        (d / f"{name}.json").write_text(json.dumps(_record(metrics=[("loss", "abc", 1, 0)])))
    # a good record sorted after the bad one is still sent
    (d / "20240102-000000-evaluate_s1-0badcafe.json").write_text(json.dumps(_record("evaluate@s1")))

    stages = []
    for stage in ("pseudo_label@s2", "train_student@s2", "evaluate@s2"):  # as stage_run opens them
        with StageRun(stage, "t", {"noise": {"dropout": 0.5}}, tags={"ns.model": "s2"}) as r:
            r.log_metrics({"acc": 0.5})
        stages.append(r)
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1 and f"{name}.json could not be sent" in err
    assert all(r.run_id and not r.failed for r in stages)
    assert all(store.get_run(r.run_id).info.status == "FINISHED" for r in stages)
    assert all(store.get_run(r.run_id).data.metrics == {"acc": 0.5} for r in stages)

    assert not list(d.glob("*.json")) and not list(d.glob("*.claimed-*"))  # the spool does not grow
    assert (d / "failed" / f"{name}.json").exists()
    assert why in (d / "failed" / f"{name}.error.txt").read_text()
    assert not [x for x in _runs() if x.info.status == "RUNNING"]  # no run left half-made, deleted or not
    active = sorted(x.info.run_name for x in _runs(ViewType.ACTIVE_ONLY))
    assert active == ["evaluate@s1", "evaluate@s2", "exp-spool", "pseudo_label@s2", "train_student@s2"]


def test_a_record_the_store_cannot_take_now_stays_pending(tmp_path, monkeypatch, capsys):
    """A failing store is not a bad record: the record waits for a later stage."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}")
    pending_dir().mkdir()
    (pending_dir() / "20240101-000000-select_s1-deadbeef.json").write_text(json.dumps(_record()))
    assert sync_pending(quiet=True) == 0
    assert [f.name for f in pending_dir().iterdir()] == ["20240101-000000-select_s1-deadbeef.json"]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert not psutil.pid_exists(proc.pid)
    return proc.pid


def test_a_claim_whose_process_is_gone_is_sent_again(store, monkeypatch, capsys):
    d = pending_dir()
    d.mkdir()
    me = psutil.Process()
    # killed after claiming (the claim name of an earlier version: the pid alone)
    (d / "20240101-000000-select_s1-aaaaaaaa.claimed-{}".format(_dead_pid())).write_text(json.dumps(_record("select@s1")))
    # the pid lives, but it is another process than the claimer (a reused pid)
    (d / f"20240101-000000-select_s2-bbbbbbbb.claimed-{me.pid}-{me.create_time() - 3600:.0f}").write_text(
        json.dumps(_record("select@s2")))
    # a live claim: another stage is sending it right now
    live = d / f"20240101-000000-select_s3-cccccccc.claimed-{me.pid}-{me.create_time():.0f}"
    live.write_text(json.dumps(_record("select@s3")))

    assert sync_pending(quiet=True) == 2
    assert [f.name for f in d.iterdir()] == [live.name]
    assert sorted(x.info.run_name for x in _runs() if x.data.tags.get("ns.sent_later")) == ["select@s1", "select@s2"]


def test_what_an_interrupted_send_left_is_discarded_when_the_record_is_sent_again(store, monkeypatch):
    d = pending_dir()
    d.mkdir()
    f = d / "20240101-000000-select_s1-deadbeef.json"
    f.write_text(json.dumps(_record()))
    real = mlflow.tracking.MlflowClient.log_batch

    def killed(self, run_id, metrics=(), **kw):
        if metrics:
            raise KeyboardInterrupt  # the sender dies with the run made, its metrics not yet sent
        return real(self, run_id, metrics=metrics, **kw)

    monkeypatch.setattr(mlflow.tracking.MlflowClient, "log_batch", killed)
    with pytest.raises(KeyboardInterrupt):
        sync_pending(quiet=True)
    assert sorted(x.info.status for x in _runs()) == ["FINISHED", "RUNNING"]  # its parent, the half-sent child
    monkeypatch.setattr(mlflow.tracking.MlflowClient, "log_batch", real)
    f.rename(f.with_suffix(f".claimed-{_dead_pid()}"))  # as a SIGKILL leaves it

    assert sync_pending(quiet=True) == 1
    active = [x for x in _runs(ViewType.ACTIVE_ONLY) if x.info.run_name == "select@s1"]
    assert len(active) == 1 and active[0].info.status == "FINISHED" and active[0].data.metrics == {"loss": 0.5}
    assert not [x for x in _runs() if x.info.status == "RUNNING"]
