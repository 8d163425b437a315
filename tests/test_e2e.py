"""The real pipeline through the real tools: dvc repro, dvc exp run (workspace and queued),
dvc metrics/params diff, and the MLflow run tree they leave. Tiny params; a few minutes."""
import json
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import yaml

from dvcrepo import FIRST_ITER, STUDENT_SIDE, dvc, make_repo, ran, sh
from mlflow_ui import CHROMIUM_ARGS, EXPERIMENT, FIRST_LOAD_MS, NO_ASSISTANT, STEP_MS, WIDTH, chromium, mlflow_ui, screenshot, store  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow



def mlflow_runs(root: Path):
    con = sqlite3.connect(root / "mlflow.db")
    rows = con.execute(
        "select r.run_uuid, r.name, "
        " (select value from tags t where t.run_uuid = r.run_uuid and t.key = 'mlflow.parentRunId'),"
        " (select value from tags t where t.run_uuid = r.run_uuid and t.key = 'dvc_exp_name')"
        " from runs r"
    ).fetchall()
    con.close()
    return rows


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_dvc_status_lists_exactly_what_a_change_touches(reproduced, tmp_path):
    """From a reproduced workspace: a comment in one stage's file outdates that stage alone; a
    library module outdates exactly the stages that import it; a speed setting outdates nothing."""
    from depgraph import closure, stage_script

    root, env, _ = reproduced
    work = tmp_path / "work"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    outdated = lambda: set(re.findall(r"^(\S+):\s*$", dvc("status", cwd=work, env=env), flags=re.M))  # noqa: E731
    assert outdated() == set()
    with open(work / "stages/report.py", "a") as f:
        f.write("# a comment\n")
    assert outdated() == {"report"}
    shutil.copy2(root / "stages/report.py", work / "stages/report.py")
    with open(work / "noisystudent/transforms.py", "a") as f:
        f.write("# a comment\n")
    dvcyaml = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    users = {n for n, st in dvcyaml.items() if "noisystudent/transforms.py" in closure(stage_script(st.get("do", st)["cmd"]))}
    assert users and "summary" not in users
    assert {s.split("@")[0] for s in outdated()} == users
    shutil.copy2(root / "noisystudent/transforms.py", work / "noisystudent/transforms.py")
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["speed"].update(train_workers=3, data_workers=1, checkpoint_every=7, augment="batched")
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert outdated() == set()


def test_mlflow_model_of_a_student_reproduces_its_test_accuracy(reproduced, monkeypatch):
    """The student's training run holds an MLflow model that `mlflow.pytorch.load_model` loads
    and that scores evaluate's test top-1; the pipeline's parent run carries the summary. Before
    the experiment test below, which replaces the workspace's results with an experiment's."""
    import mlflow

    from noisystudent.checkpoint import load_checkpoint
    from noisystudent.data import Prepared
    from noisystudent.inference import accuracy
    from noisystudent.transforms import eval_transform

    root, env, _ = reproduced
    db = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", db)
    client = mlflow.tracking.MlflowClient(db)
    exp = client.get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'train_student@s2'", max_results=1,
                                order_by=["attributes.start_time ASC"])  # the first: `dvc repro`'s own
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    cfg = load_checkpoint(root / "models/s2.pt")["data_config"]
    top1 = accuracy(model, Prepared.load(root / "data/prepared"), "test", eval_transform(cfg))
    assert top1 == json.loads((root / "metrics/eval/s2.json").read_text())["top1"]
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    summary = json.loads((root / "metrics/summary.json").read_text())
    assert parent.data.metrics["best_student_test_acc"] == summary["best_student_test_acc"]
    assert parent.data.metrics["test_acc.s2"] == summary["test_acc"]["s2"]  # DVC's flattened names
    assert parent.data.tags["mlflow.source.git.commit"]
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name.startswith("pseudo-labeled set of s2")


def test_repro_experiment_queue_and_mlflow(reproduced):
    root, env, out = reproduced
    assert ran(out) == FIRST_ITER | STUDENT_SIDE
    summary = json.loads((root / "metrics/summary.json").read_text())
    assert list(summary["test_acc"]) == ["s1", "s2"]
    assert all(0 <= v <= 1 for v in (summary["teacher_test_acc"], summary["best_student_test_acc"]))
    # what dvc exp show / metrics diff display: the headline, numbers only, a terminal's width
    shown = json.loads(dvc("metrics", "show", "--json", cwd=root, env=env))
    (files,) = [rev["data"] for rev in shown.values()]  # one revision: the workspace
    assert list(files) == ["metrics/summary.json"], list(files)
    values = [v for f in files.values() for v in _leaves(f["data"]).values()]
    # (45 for this chain: test top-1 and ECE per model, gains, robustness with the intervals of the
    # best student minus the baseline; breakdowns live in the per-stage files)
    assert 15 <= len(values) <= 50 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values), values

    # nothing changed: nothing runs
    again = dvc("repro", cwd=root, env=env)
    assert ran(again) == set(), again
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-qm", "baseline"], root, env)

    # student noise changed: only the student side re-runs
    exp = dvc("exp", "run", "-S", "noise.dropout=0.5", cwd=root, env=env)
    assert ran(exp) == STUDENT_SIDE, exp
    every = dvc("metrics", "diff", "--all", cwd=root, env=env)
    assert "metrics/summary.json" in every and "best_student_test_acc" in every
    changed = dvc("metrics", "diff", cwd=root, env=env)  # tiny models: which figures move is chance,
    assert re.search(r"(test_acc|test_ece)\.(s1|s2)", changed), changed  # but only on the student side
    assert "teacher_test_acc" not in changed and "test_ece.teacher" not in changed and "prepare.json" not in changed
    params_diff = dvc("params", "diff", cwd=root, env=env)
    assert re.search(r"noise\.dropout\s+0\.2\s+0\.5", params_diff), params_diff
    # every declared plot renders; the diff holds both sides (images: one entry per side)
    plots = json.loads(dvc("plots", "diff", "HEAD", "--json", cwd=root, env=env))["data"]
    wanted = {"metrics/summary.csv", "metrics/summary.png", "metrics/s1/history.csv", "metrics/baseline/history.csv",
              "metrics/s2/confidence.csv", "metrics/s2/classes.png", "metrics/s2/gallery.png",
              "metrics/eval/s2_predictions.csv", "metrics/robustness/s1_fgsm.csv", "val_acc"}
    assert wanted <= set(plots), sorted(wanted - set(plots))
    assert set(plots["metrics/summary.csv"][0]["revisions"]) == {"workspace", "HEAD"}
    assert {r for entry in plots["metrics/s2/gallery.png"] for r in entry["revisions"]} == {"workspace", "HEAD"}
    assert (root / "docs/report/report.md").read_text().count("](") == 20  # tiny: 1 + 2 + 2 x 2 + 5 + 5 + 3 figures

    # the README's sweep: one -S with two values queues two experiments
    dvc("exp", "run", "--queue", "-S", "select.per_class=15,25", cwd=root, env=env)
    queued = [line for line in dvc("queue", "status", cwd=root, env=env).splitlines() if "Queued" in line]
    assert len(queued) == 2, queued
    dvc("queue", "remove", "--queued", cwd=root, env=env)
    # a queued experiment runs in a temporary copy, re-runs only what its change touches (the
    # rest comes from the cache) and still logs into this repository's store
    dvc("exp", "run", "--queue", "-S", "eval.gallery.images=12", "-n", "queued-exp", cwd=root, env=env)
    dvc("queue", "start", cwd=root, env=env)
    deadline = time.time() + 420
    while time.time() < deadline:
        status = dvc("queue", "status", cwd=root, env=env)
        if "queued-exp" in status and re.search(r"queued-exp\s+\S+\s+\S+\s+(Success|Failed)", status):
            break
        time.sleep(5)
    dvc("queue", "stop", "--kill", cwd=root, env=env, check=False)
    assert re.search(r"queued-exp\s+\S+\s+\S+\s+Success", status), status
    shown = dvc("exp", "show", "--md", cwd=root, env=env)
    assert "queued-exp" in shown

    runs = mlflow_runs(root)
    parents = {r[0]: r for r in runs if r[2] is None}
    children = [r for r in runs if r[2] is not None]
    assert len(parents) == 3, parents  # repro, workspace experiment, queued experiment
    by_parent: dict[str, set[str]] = {}
    for _, name, parent, _ in children:
        by_parent.setdefault(parent, set()).add(name)
    assert sorted(len(v) for v in by_parent.values()) == sorted([len(FIRST_ITER | STUDENT_SIDE), len(STUDENT_SIDE), len(by_parent[[p for p, r in parents.items() if r[3] == "queued-exp"][0]])])
    assert FIRST_ITER | STUDENT_SIDE in by_parent.values()
    assert STUDENT_SIDE in by_parent.values()
    queued = [p for p, r in parents.items() if r[3] == "queued-exp"]
    assert len(queued) == 1 and by_parent[queued[0]] == {"gallery@s1", "gallery@s2", "report"}, by_parent[queued[0]]
    assert not (root / "mlruns").exists()


def test_push_to_a_remote_and_pull_into_a_fresh_clone(reproduced, tmp_path):
    """The README's sharing recipe: `dvc remote add -d` + `dvc push`, then a fresh clone's `dvc
    pull` brings every model and picture back, and nothing is left to run."""
    root, env, _ = reproduced
    work, remote, clone = tmp_path / "work", tmp_path / "remote", tmp_path / "clone"
    shutil.copytree(root, work, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    dvc("remote", "add", "-d", "storage", str(remote), cwd=work, env=env)
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-qm", "results"], work, env)
    dvc("push", cwd=work, env=env)
    sh(["git", "clone", "-q", str(work), str(clone)], tmp_path, env)
    assert not (clone / "models/s2.pt").exists()
    dvc("pull", cwd=clone, env=env)
    for f in ("models/teacher.pt", "models/s2.pt", "models/oracle.pt", "metrics/summary.png", "metrics/s2/gallery.png",
              "metrics/eval/s2_predictions.png", "docs/report/report.md"):
        assert (clone / f).read_bytes() == (work / f).read_bytes(), f
    assert "Data and pipelines are up to date" in dvc("status", cwd=clone, env=env)


def test_bad_param_fails_stage_and_writes_nothing(reproduced, tmp_path):
    root, env, _ = reproduced
    bad = tmp_path / "bad"
    shutil.copytree(root, bad, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    raw = yaml.safe_load((bad / "params.yaml").read_text())
    raw["teacher"]["arch"] = "no_such_model"
    (bad / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = (bad / "models/teacher.pt").read_bytes()
    out = dvc("repro", "train_teacher", cwd=bad, env=env, check=False)
    assert "teacher.arch: unknown timm model 'no_such_model'" in out
    # DVC removes a stage's outputs before running it; none is half-written or re-created
    assert not (bad / "models/teacher.pt").exists() or (bad / "models/teacher.pt").read_bytes() == before


@pytest.mark.browser
def test_mlflow_ui_shows_pipeline_runs(chromium, mlflow_ui, tmp_path):
    """The parent run, its teacher and student child runs, and their comparison with the
    accuracy metrics, in the real MLflow UI (tests/mlflow_ui.py)."""
    from mlflow import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    url, store, experiment = mlflow_ui
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {store}"
    parents = client.search_runs([exp.experiment_id], "tags.`ns.role` = 'pipeline'",
                                 order_by=["attributes.start_time DESC"])
    assert parents, "no pipeline parent run in the store"
    # the newest whole run: `dvc exp run`s that change only the students have no teacher runs
    for parent in parents:
        children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        if any(r.info.run_name == "evaluate@teacher" for r in children):
            break
    else:
        pytest.fail(f"no pipeline run in {experiment!r} has an evaluate@teacher child run")
    # the teacher's and students' training and evaluation runs; the evaluations (test_top1) are
    # compared: a training run logs a dozen metrics, which would push the accuracy out of the shot
    shown = sorted((r for r in children if r.data.tags.get("ns.model")
                    and r.info.run_name.startswith(("train_", "evaluate@"))), key=lambda r: r.info.start_time)
    compared = [r for r in shown if r.info.run_name.startswith("evaluate@")]
    models = {r.data.tags["ns.model"] for r in compared}
    assert "teacher" in models and len(models) >= 2, f"need teacher and student evaluation runs, got {models}"
    trained = {r.data.tags["ns.model"] for r in shown if r.info.run_name.startswith("train_")}
    assert trained == models, f"training runs for {sorted(trained)}, evaluation runs for {sorted(models)}"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            page.add_init_script(NO_ASSISTANT)
            page.set_default_timeout(STEP_MS)

            # MLflow 3 opens an experiment in its GenAI (traces) view; runs live in "Model training"
            page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
            expect(page.locator(f'a[href$="/runs/{parent.info.run_id}"]'),
                   f"parent run {parent.info.run_name} not shown in the runs table").to_have_text(
                parent.info.run_name, timeout=FIRST_LOAD_MS)
            # child runs sit folded under their parent: the button in its run-name cell unfolds them
            page.locator(f'[row-id="{parent.info.run_id}"] [col-id="attributes.`Run Name`"] button').click()
            for run in shown:
                model, name = run.data.tags["ns.model"], run.info.run_name
                kind = "teacher" if model == "teacher" else f"student {model}"
                expect(page.locator(f'a[href$="/runs/{run.info.run_id}"]'),
                       f"{kind} child run {name} not shown under the parent in the runs table").to_have_text(name)
            for run in compared:
                # ag-grid renders each row twice (pinned left + scrolling part); the checkbox is on the left
                page.locator(f'[row-id="{run.info.run_id}"] input.ag-checkbox-input').check()
            screenshot(page, tmp_path, "mlflow_runs.png")

            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.get_by_role("heading", name=f"Comparing {len(compared)} Runs"),
                   "the run comparison did not open").to_be_visible()
            run_names = page.locator("tr", has=page.locator("th", has_text="Run Name:"))
            for run in compared:
                expect(run_names, f"run {run.info.run_name} missing from the comparison").to_contain_text(
                    run.info.run_name)
            expect(page.get_by_role("link", name="test_top1", exact=True),
                   "accuracy metric test_top1 missing from the comparison").to_be_visible()
            screenshot(page, tmp_path, "mlflow_compare.png")

            # the parent run carries the pipeline's headline metrics (what the runs table sorts by)
            page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}")
            expect(page.get_by_text("best_student_test_acc", exact=True).first,
                   "the parent run shows no best_student_test_acc metric").to_be_visible(timeout=FIRST_LOAD_MS)
            # a student's training run links the MLflow model logged in it
            student = next(r for r in shown if r.info.run_name.startswith("train_student@"))
            (logged,) = client.search_logged_models([exp.experiment_id], filter_string=f"source_run_id = '{student.info.run_id}'")
            page.goto(f"{url}/#/experiments/{exp.experiment_id}/runs/{student.info.run_id}")
            expect(page.locator(f'a[href*="{logged.model_id}"]').first,
                   f"run {student.info.run_name} does not link its logged model").to_be_visible(timeout=FIRST_LOAD_MS)
            screenshot(page, tmp_path, "mlflow_student_run.png")
        finally:
            browser.close()
