import shutil

import mlflow
import pytest

from noisystudent.tracking import StageRun, flatten, sync_pending


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_child_runs_share_one_parent_per_pipeline(mlflow_uri, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    params = {"noise": {"dropout": 0.5}}
    with StageRun("train_teacher", "t", params) as r1:
        r1.log_metrics({"val_acc": 0.5}, step=1)
        r1.log_metrics({"val_acc": 0.7}, step=2)
    with StageRun("train_student@s1", "t", params, tags={"ns.model": "s1"}) as r2:
        r2.log_params({"arch": "x"})
    monkeypatch.setenv("DVC_EXP_NAME", "exp-other")
    with StageRun("train_teacher", "t", params):
        pass
    runs = mlflow.search_runs(experiment_names=["t"], output_format="pandas")
    parents = runs[runs["tags.ns.role"] == "pipeline"]
    assert sorted(parents["tags.dvc_exp_name"]) == ["exp-abc", "exp-other"]
    abc = parents[parents["tags.dvc_exp_name"] == "exp-abc"]["run_id"].item()
    assert abc in (r1.client.get_run(r1.run_id).data.tags["mlflow.parentRunId"],)
    assert r2.client.get_run(r2.run_id).data.tags["mlflow.parentRunId"] == abc
    assert r2.client.get_run(r2.run_id).data.tags["ns.model"] == "s1"
    assert parents[parents["run_id"] == abc]["params.noise.dropout"].item() == "0.5"
    hist = r1.client.get_metric_history(r1.run_id, "val_acc")
    assert [(m.step, m.value) for m in hist] == [(1, 0.5), (2, 0.7)]


def test_an_experiment_name_with_quotes_finds_its_parent(mlflow_uri, monkeypatch, capsys):
    """The parent run is looked up by a digest of the key: DVC_EXP_NAME="it's-\"exp\"" once
    broke the filter string, so no stage of that experiment could log."""
    monkeypatch.setenv("DVC_EXP_NAME", "it's-\"exp\"")
    runs = []
    for stage in ("prepare", "train_teacher"):
        with StageRun(stage, "q", {}) as r:
            r.log_metrics({"a": 1.0})
        runs.append(r)
    assert all(r.run_id and not r.failed for r in runs) and "WARNING" not in capsys.readouterr().err
    parents = {r.client.get_run(r.run_id).data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1


def test_tracking_failure_warns_once_and_continues(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "a_file").write_text("")  # a file where the store's folder should be: cannot be created
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}")
    with StageRun("prepare", "t", {}) as r:
        r.log_metrics({"a": 1.0})
        r.log_artifact(__file__)
    err = capsys.readouterr().err
    assert err.count("WARNING: MLflow") == 1 and "mlflow-pending" in err
    assert r.run_id is None
    assert len(list((tmp_path / "mlflow-pending").glob("*.json"))) == 1


def test_server_down_records_are_spooled_and_sent_later(tmp_path, monkeypatch, capsys, empty_store):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-down")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    art = tmp_path / "select.json"
    art.write_text('{"selected": 7}')
    with StageRun("select@s1", "t", {"select": {"threshold": 0.3}}) as r:
        r.log_params({"select": {"per_class": 5}})
        r.log_metrics({"loss": 1.0}, step=1)
        r.log_metrics({"loss": 0.5}, step=2)
        r.log_artifact(art)
    assert capsys.readouterr().err.count("WARNING: MLflow") == 1
    art.write_text('{"selected": 999}')  # a later run overwrites the file: the spool kept a copy
    spooled = list((tmp_path / "mlflow-pending").glob("*.json"))
    assert len(spooled) == 1

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    assert sync_pending() == 1
    assert not list((tmp_path / "mlflow-pending").iterdir())
    client = mlflow.tracking.MlflowClient(db)
    runs = mlflow.search_runs(experiment_names=["t"], output_format="list")
    child = next(x for x in runs if x.info.run_name == "select@s1")
    parent = next(x for x in runs if x.data.tags.get("ns.role") == "pipeline")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and parent.data.tags["dvc_exp_name"] == "exp-down"
    assert child.data.params["select.per_class"] == "5" and parent.data.params["select.threshold"] == "0.3"
    assert [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "loss")] == [(1, 1.0), (2, 0.5)]
    assert child.info.status == "FINISHED" and child.data.tags["ns.sent_later"] == "true"
    local = client.download_artifacts(child.info.run_id, "select.json", str(tmp_path / "dl"))
    assert open(local).read() == '{"selected": 7}'


def test_locked_store_is_retried_then_spooled_and_sent_by_the_next_stage(tmp_path, monkeypatch, capsys, empty_store):
    import sqlite3

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-locked")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(StageRun, "RETRIES", 0)  # MLflow itself waits 20 s on a locked SQLite store
    with StageRun("prepare", "t", {}):  # creates the store
        pass
    lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=0)
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        with StageRun("train_teacher", "t", {}) as r:
            r.log_metrics({"val_acc": 0.9}, step=10)
    finally:
        lock.rollback()
        lock.close()
    assert "locked" in capsys.readouterr().err
    assert len(list((tmp_path / "mlflow-pending").glob("*.json"))) == 1
    with StageRun("evaluate@teacher", "t", {}):  # the next stage sends what was kept
        pass
    names = sorted(x.info.run_name for x in mlflow.search_runs(experiment_names=["t"], output_format="list"))
    assert names == ["evaluate@teacher", "exp-locked", "prepare", "train_teacher"]
    assert not list((tmp_path / "mlflow-pending").glob("*.json"))


def test_a_locked_store_is_retried_before_giving_up(monkeypatch, capsys):
    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    r = StageRun("x", "t", {})
    assert r._guard("log", flaky) == "ok" and len(calls) == 3 and not r.failed
    assert capsys.readouterr().err == ""

    def down():
        calls.append(1)
        raise ConnectionError("connection refused")

    calls.clear()
    assert r._guard("log", down) is None and len(calls) == 1 and r.failed  # not a lock: no retry


def _tiny_checkpoint(path):
    import torch

    from noisystudent.checkpoint import save_model
    from noisystudent.models import create_model
    from noisystudent.transforms import data_config

    torch.manual_seed(0)
    m = create_model("ns_resnet_xs", 3, 1).eval()
    save_model(path, m, m, {"arch": "ns_resnet_xs", "num_classes": 3, "in_chans": 1, "class_names": ["a", "b", "c"],
                            "name": "s1", "data_config": data_config("ns_resnet_xs", 1, 12, 12)})
    return path


def _selected(path):
    import pandas as pd

    pd.DataFrame({"id": [3, 5, 8], "label": [0, 2, 1], "confidence": [0.9, 0.8, 0.7]}).to_parquet(path)
    return path


def _check_model_run(client, uri: str, run, ckpt) -> None:
    """The student's run holds a loadable MLflow model and its pseudo-labeled set as an input."""
    import torch

    from noisystudent.checkpoint import load_model

    loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    model, _ = load_model(ckpt)
    assert type(loaded).__name__ == type(model).__name__ and not loaded.eval().training  # the module, usable as one
    x = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))
    (inp,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert inp.dataset.name == "pseudo-labeled set of s1" and {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"


def test_models_inputs_and_pipeline_metrics_reach_mlflow(mlflow_uri, monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-m")
    ckpt, sel = _tiny_checkpoint(tmp_path / "s1.pt"), _selected(tmp_path / "selected.parquet")
    with StageRun("train_student@s1", "t", {}, tags={"ns.model": "s1"}) as r:
        r.log_model(ckpt, register_as="t-s1")
        r.log_input(sel, "pseudo-labeled set of s1")
    with StageRun("summary", "t", {}) as s:
        s.log_parent_metrics({"best_student_test_acc": 0.9, "test_acc.s1": 0.9})
    client = mlflow.tracking.MlflowClient(mlflow_uri)
    _check_model_run(client, mlflow_uri, client.get_run(r.run_id), ckpt)
    parent = client.get_run(r.parent_id)
    assert s.parent_id == r.parent_id and parent.data.metrics == {"best_student_test_acc": 0.9, "test_acc.s1": 0.9}
    assert parent.data.tags["mlflow.source.git.commit"] == parent.data.tags["git_commit"]
    assert client.get_experiment_by_name("t").tags["mlflow.experimentKind"] == "custom_model_development"
    assert [int(v.version) for v in client.search_model_versions("name='t-s1'")] == [1]


def test_a_spooled_model_and_input_are_sent_later(tmp_path, monkeypatch, capsys, empty_store):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_EXP_NAME", "exp-down")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    ckpt, sel = _tiny_checkpoint(tmp_path / "s1.pt"), _selected(tmp_path / "selected.parquet")
    with StageRun("train_student@s1", "t", {}) as r:
        r.log_model(ckpt)
        r.log_input(sel, "pseudo-labeled set of s1")
        r.log_parent_metrics({"best_student_test_acc": 0.5})
    ckpt.unlink()  # the pipeline may replace the file: the spool kept a copy
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    assert sync_pending() == 1
    client = mlflow.tracking.MlflowClient(db)
    runs = mlflow.search_runs(experiment_names=["t"], output_format="list")
    child = next(x for x in runs if x.info.run_name == "train_student@s1")
    parent = next(x for x in runs if x.data.tags.get("ns.role") == "pipeline")
    _check_model_run(client, db, child, _tiny_checkpoint(tmp_path / "again.pt"))  # the same seeded weights
    assert parent.data.metrics == {"best_student_test_acc": 0.5}
