import mlflow

from noisystudent.tracking import StageRun, flatten


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_child_runs_share_one_parent_per_pipeline(mlflow_uri, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    params = {"noise": {"dropout": 0.5}}
    with StageRun("train_teacher", "t", params) as r1:
        r1.log_metrics({"val_acc": 0.5}, step=1)
        r1.log_metrics({"val_acc": 0.7}, step=2)
    with StageRun("train_student@s1", "t", params) as r2:
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
    assert parents[parents["run_id"] == abc]["params.noise.dropout"].item() == "0.5"
    hist = r1.client.get_metric_history(r1.run_id, "val_acc")
    assert [(m.step, m.value) for m in hist] == [(1, 0.5), (2, 0.7)]


def test_tracking_failure_warns_once_and_continues(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("")  # a file where the store's folder should be: cannot be created
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}")
    with StageRun("prepare", "t", {}) as r:
        r.log_metrics({"a": 1.0})
        r.log_artifact(__file__)
    err = capsys.readouterr().err
    assert err.count("WARNING: MLflow") == 1
    assert r.run_id is None
