"""The stage functions in-process on tiny params (fast; the real `dvc repro` is in test_e2e):
what every stage writes, exactly the params keys each reads (against dvc.yaml), and the same
bytes whatever the `speed` settings. The runs are tests/conftest.py's session fixture
`tiny_runs`, shared by the tests of this file (pytest-xdist keeps a file on one worker)."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, SPEED_CHANGED
from depgraph import dvc_yaml, instances, main_reads
from noisystudent.checkpoint import load_checkpoint
from paramtrace import leaves
from noisystudent.shards import read_labels
from stages.prepare import run as prepare_stage
from stages.pseudo_label import run as pseudo_label_stage
from stages.select import run as select_stage
from stages.train import run as train_stage


def test_tiny_pipeline_outputs(tiny_runs):
    """Every stage's outputs on the tiny pipeline (run once per session, tests/conftest.py;
    test_deps.py checks what the same runs depend on and that they are reproducible)."""
    p, root, s = tiny_runs["params"], tiny_runs["a"], tiny_runs["summary"]
    assert set(s) >= {"teacher_test_acc", "best_student_test_acc", "test_acc", "test_ece", "pseudo_label_acc", "teacher_mce",
                      "best_student_mce", "teacher_mfr", "best_student_mfr", "teacher_fgsm_acc", "best_student_fgsm_acc"}
    assert s["teacher_mce"] == 100 and s["teacher_mfr"] == 100  # the baseline is 100 % of itself
    rob = json.loads((root / "metrics/robustness/s1.json").read_text())
    assert len(rob["corruption_error"]) == 15 and set(rob["fgsm_accuracy"]) == {"0", "4"}
    assert rob["fgsm_accuracy"]["0"] >= rob["fgsm_accuracy"]["4"]  # an attack never helps
    assert (root / "metrics/robustness/s1.png").stat().st_size > 0
    assert list(s["test_acc"]) == ["s1", "s2"] and list(s["pseudo_label_acc"]) == ["s1", "s2"]
    assert all(0 <= a <= 1 for a in [s["teacher_test_acc"], s["best_student_test_acc"], *s["test_acc"].values()])
    table = pd.read_csv(root / "metrics/summary.csv").set_index("model")
    best = table.drop(["teacher", "baseline"])["val_acc"]
    assert s["best_student_val_acc"] == best.max() and s["best_student_test_acc"] == table.loc[best[best == best.max()].index[-1], "test_acc"]

    labels = read_labels(root / "data/pseudo/s1/labels")
    assert list(labels.columns) == ["id", "label", "confidence", "probs"]
    unl = pd.read_parquet(root / "data/prepared/unlabeled.parquet")
    assert sorted(labels["id"]) == sorted(unl["id"])  # every unlabeled image, once
    assert np.allclose(np.stack(labels["probs"]).sum(1), 1, atol=1e-5)

    sel = json.loads((root / "metrics/select/s1.json").read_text())
    assert 0 <= sel["pseudo_label_acc_all"] <= 1 and sel["unique"] <= sel["kept_after_threshold"]

    ev = json.loads((root / "metrics/eval/s2.json").read_text())
    assert {"top1", "top5", "ece", "per_class_acc"} <= set(ev)
    assert (root / "metrics/summary.png").read_bytes()[:4] == b"\x89PNG"
    ck = load_checkpoint(root / "models/s1.pt")
    assert ck["arch"] == "ns_resnet_xs" and ck["name"] == "s1"

    # the pictures' data: training curves, selection, Figure 1
    hist = pd.read_csv(root / "metrics/s1/history.csv")
    assert hist["step"].iloc[-1] == p.student.steps and {"epoch", "loss_labeled", "loss_pseudo", "val_acc"} <= set(hist)
    assert (hist["loss_pseudo"] > 0).all() and hist["epoch"].is_monotonic_increasing
    assert pd.read_csv(root / "metrics/s1/confidence.csv")["images"].sum() == sel["pseudo_labeled"]
    assert pd.read_csv(root / "metrics/s1/classes.csv")["selected"].sum() == sel["selected"]
    shown = pd.read_csv(root / "metrics/s2/gallery.csv")
    assert 0 < len(shown) <= p.eval.gallery.images and set(shown["kind"]) <= {"corrected", "regressed", "disagree", "agree"}
    # the report: every figure there, each linked from the page, nothing listed missing
    page = (root / "docs/report/report.md").read_text()
    pngs = sorted(f.name for f in (root / "docs/report").glob("*.png"))
    # accuracy; 2 galleries; 2 x (confidence, classes); curves and confusion for teacher, s1, s2,
    # baseline, oracle; robustness for teacher, s1, s2
    assert len(pngs) == 1 + 2 + 2 * 2 + 5 + 5 + 3 and all(f"]({f})" in page for f in pngs), pngs
    rows = {m.group(1) for m in re.finditer(r"^\| (\w+)\s+\|", page, flags=re.M)}  # first cells of the tables' rows
    assert "## Not drawn" not in page and {"s2", "baseline", "oracle"} <= rows, rows
    assert s["gain_over_baseline"] == pytest.approx(s["best_student_test_acc"] - s["baseline_test_acc"])
    assert s["gap_to_oracle"] == pytest.approx(s["oracle_test_acc"] - s["best_student_test_acc"])
    for m in ("baseline", "oracle"):
        assert load_checkpoint(root / f"models/{m}.pt")["arch"] == p.baseline.arch
    # the oracle learned from every label of the pool; the baseline from the labeled images alone
    labeled, truth = (len(pd.read_parquet(root / f"data/prepared/{f}.parquet")) for f in ("labeled", "unlabeled_truth"))
    assert json.loads((root / "metrics/baseline/train.json").read_text())["labeled_images"] == labeled
    assert json.loads((root / "metrics/oracle/train.json").read_text())["labeled_images"] == labeled + truth > labeled
    assert s["pseudo_label_acc"]["s1"] == sel["pseudo_label_acc_selected"]


# ---- what the same runs depend on, and that they are reproducible -----------------------


def test_params_deps_are_the_keys_read(tiny_runs):
    p = tiny_runs["params"]
    every = lambda keys: set().union(*[leaves(p, k) for k in keys]) if keys else set()  # noqa: E731
    problems = []
    stages = instances(p)
    assert set(tiny_runs["touched"]) == set(stages), "the tiny run and dvc.yaml disagree on the stages"
    for name, st in stages.items():
        declared = every(st.get("params", []))
        read = every(tiny_runs["touched"][name] | main_reads(st["cmd"]))
        speed = {k for k in read if k.startswith("speed.")}
        if any(k.startswith("speed.") for k in declared):
            problems.append(f"{name}: declares section speed, which must never be a dependency")
        for k in sorted(read - speed - declared):
            problems.append(f"{name}: reads {k} but does not declare it in dvc.yaml")
        for k in sorted(declared - read):
            problems.append(f"{name}: declares {k} but never reads it")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("key", list(SPEED_CHANGED))
def test_speed_setting_changes_no_byte(tiny_runs, key):
    """Every model, selection, metric, plot table and picture of the tiny pipeline is identical
    with this `speed` setting changed — and so reproducible: same params, same seed, same bytes.
    (The stages that read the setting ran again with it changed, on the others' outputs.)"""
    a, b = tiny_runs["a"], tiny_runs["speed"][key]
    readers = tiny_runs["speed_readers"][key]
    expected = {"train_workers": {"train_teacher", "train_baseline", "train_oracle", "train_student@s1", "train_student@s2"},
                "data_workers": {"prepare", "pseudo_label@s1", "pseudo_label@s2", "gallery@s1", "gallery@s2",
                                 *(f"evaluate@{m}" for m in tiny_runs["params"].eval.models)}}
    expected["checkpoint_every"] = expected["augment"] = expected["train_workers"]
    assert readers == expected[key], readers
    # prepare_files.json names the folder it wrote (a vs b); the rest must match
    files = sorted(f.relative_to(a) for f in a.rglob("*") if f.is_file() and f.name != "prepare_files.json")
    assert len(files) > 50 and {Path("models/s2.pt"), Path("metrics/summary.json"), Path("docs/report/report.md")} <= set(files)
    differ = [str(f) for f in files if not (b / f).is_file() or (a / f).read_bytes() != (b / f).read_bytes()]
    assert not differ, f"speed.{key}={SPEED_CHANGED[key]} changed {differ}"


def test_every_model_is_an_artifact_and_in_the_curves_overlay(tiny_runs):
    from noisystudent.params import load_params

    p = load_params(ROOT / "params.yaml")
    assert {k: (a["path"], a["type"]) for k, a in dvc_yaml()["artifacts"].items()} == {m: (f"models/{m}.pt", "model") for m in p.eval.models}
    overlay = next(pl["val_acc"] for pl in dvc_yaml()["plots"] if "val_acc" in pl)
    (table,) = overlay["y"]
    assert (ROOT / ".dvc/plots" / f"{overlay['template']}.json").is_file()
    # the report stage writes the table, one curve per model of the chain, whatever the chain
    curves = pd.read_csv(tiny_runs["a"] / table)
    assert list(curves["model"].unique()) == list(tiny_runs["params"].eval.models)
    assert {overlay["x"], "val_acc", "model"} <= set(curves.columns)


def test_pseudo_labels_use_the_unnoised_teacher(tmp_path, tiny_params):
    # a teacher trained with heavy dropout and stochastic depth must still label deterministically
    p = tiny_params(teacher__dropout=0.9, teacher__drop_path=0.5)
    data = tmp_path / "data"
    prepare_stage(p, data)
    train_stage(p, "teacher", data, tmp_path / "t.pt", tmp_path / "t.json")
    pseudo_label_stage(p, "s1", data, tmp_path / "t.pt", tmp_path / "a")
    pseudo_label_stage(p, "s1", data, tmp_path / "t.pt", tmp_path / "b")
    a, b = read_labels(tmp_path / "a"), read_labels(tmp_path / "b")
    assert np.array_equal(np.stack(a["probs"]), np.stack(b["probs"]))


def test_temperature_shapes_the_targets_never_the_threshold(tmp_path, tiny_params):
    """As the official code: confidence (threshold, balancing) is the T = 1 probability; only the
    soft targets are tempered. At T = 4 the same images are selected as at T = 1, with flatter
    target rows."""
    from noisystudent.pseudo import soft_labels

    p1, p4 = tiny_params(), tiny_params(pseudo__temperature=4.0)
    data, t = tmp_path / "data", tmp_path / "t.pt"
    prepare_stage(p1, data)
    train_stage(p1, "teacher", data, t, tmp_path / "t.json")
    for name, p in (("t1", p1), ("t4", p4)):
        pseudo_label_stage(p, "s1", data, t, tmp_path / name)
        select_stage(p, "s1", data, tmp_path / name, tmp_path / f"{name}.parquet", tmp_path / f"{name}.json")
    a, b = (read_labels(tmp_path / n).sort_values("id", ignore_index=True) for n in ("t1", "t4"))
    pa_, pb = np.stack(a["probs"]), np.stack(b["probs"])
    np.testing.assert_allclose(b["confidence"], pa_.max(1), rtol=1e-6)  # T = 1 confidence at T = 4
    np.testing.assert_allclose(pb, soft_labels(np.log(pa_), 4.0), atol=1e-5)  # the tempered targets
    assert (pb.max(1) < pa_.max(1) - 1e-3).mean() > 0.9
    sa, sb = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in ("t1", "t4"))
    assert sa[["id", "copies"]].equals(sb[["id", "copies"]])


def test_noised_teacher_ablation_labels_by_image_id(tmp_path, tiny_params):
    """pseudo.noised (the paper's "teacher noised too" ablation): the teacher's own dropout,
    stochastic depth and RandAugment on while labeling, each image seeded by its id: the same
    labels whatever the sharding, the batching or a resume, and not the clean ones."""
    import shutil

    noise = {"teacher__dropout": 0.5, "teacher__drop_path": 0.3, "pseudo__rows_per_file": 40}
    p = tiny_params(**noise, pseudo__noised=True)
    data, t = tmp_path / "data", tmp_path / "t.pt"
    prepare_stage(p, data)
    train_stage(p, "teacher", data, t, tmp_path / "t.json")
    pseudo_label_stage(p, "s1", data, t, tmp_path / "a")
    pseudo_label_stage(tiny_params(**noise, pseudo__noised=True, pseudo__batch_size=7), "s1", data, t, tmp_path / "b", num_shards=3)
    shutil.copytree(tmp_path / "a", tmp_path / "resumed")  # a run killed after its first part
    for f in (tmp_path / "resumed").glob("shard-*"):
        if not f.name.endswith("part-00000.parquet"):
            f.unlink()
    assert pseudo_label_stage(p, "s1", data, t, tmp_path / "resumed") == len(read_labels(tmp_path / "a")) - 40
    pseudo_label_stage(tiny_params(**noise), "s1", data, t, tmp_path / "clean")
    a, b, resumed, clean = (np.stack(read_labels(tmp_path / d).sort_values("id")["probs"]) for d in ("a", "b", "resumed", "clean"))
    assert np.array_equal(a, b) and np.array_equal(a, resumed)
    assert not np.allclose(a, clean, atol=1e-3)


def test_noised_teacher_model_has_its_training_dropout_on(tmp_path):
    """load_model(noised=True) builds the teacher with the dropout and stochastic depth of its
    recipe (it had neither before: the ablation measured RandAugment alone); un-noised, none."""
    import torch

    from noisystudent.checkpoint import load_model, save_model
    from noisystudent.models import create_model

    m = create_model("ns_resnet_xs", 10, 1, dropout=0.5, drop_path=0.3)
    save_model(tmp_path / "t.pt", m, m, {"arch": "ns_resnet_xs", "num_classes": 10, "in_chans": 1, "name": "teacher",
                                          "recipe": {"noise": {"dropout": 0.5, "drop_path": 0.3}}, "data_config": {}})
    x = torch.randn(8, 1, 8, 8)
    noised, _ = load_model(tmp_path / "t.pt", noised=True)
    clean, _ = load_model(tmp_path / "t.pt")
    for model in (noised, clean):
        model.train()  # what noised labeling runs in (BatchNorm aside)
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.eval()
    with torch.no_grad():
        assert not torch.equal(noised(x), noised(x))  # masks drawn each pass
        assert torch.equal(clean(x), clean(x))  # nothing random left


def test_student_init_from_teacher_starts_at_the_teacher(tmp_path, tiny_params):
    """student.init: teacher (an ablation): the student's first weights are its teacher's; one
    step at a negligible learning rate leaves the conv weights where the teacher's were."""
    import torch

    p = tiny_params(student__init="teacher", student__steps=1, train__lr=1e-9, train__ema_decay=0.0)
    data, m = tmp_path / "data", tmp_path / "m"
    prepare_stage(p, data)
    train_stage(p, "teacher", data, m / "teacher.pt", tmp_path / "t.json")
    pseudo_label_stage(p, "s1", data, m / "teacher.pt", tmp_path / "labels")
    select_stage(p, "s1", data, tmp_path / "labels", tmp_path / "sel.parquet", tmp_path / "sel.json")
    train_stage(p, "s1", data, m / "s1.pt", tmp_path / "s1.json", tmp_path / "sel.parquet", teacher_ckpt=m / "teacher.pt")
    t, s = load_checkpoint(m / "teacher.pt")["state_dict"], load_checkpoint(m / "s1.pt")["state_dict"]
    convs = [k for k in t if "conv" in k and k.endswith("weight")]
    assert convs and all(torch.allclose(t[k], s[k], atol=1e-6) for k in convs)


def test_hard_targets_are_one_hot(tmp_path, tiny_params):
    from noisystudent.pseudo import targets as _pseudo_targets

    sel = pd.DataFrame({"id": [0, 1], "probs": [np.array([0.6, 0.4], np.float32)] * 2, "label": [0, 1], "confidence": [0.6, 0.6]})
    assert np.allclose(_pseudo_targets(sel, 2, "soft", 0.1), [[0.6, 0.4], [0.6, 0.4]])
    assert np.allclose(_pseudo_targets(sel, 2, "hard", 0.0), [[1, 0], [0, 1]])


def test_malicious_checkpoint_is_refused(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(ValueError, match="refused to load"):
        load_checkpoint(bad)
    assert not marker.exists()


def test_checkpoints_are_byte_identical_for_identical_content(tmp_path):
    import torch

    from noisystudent.io import atomic_save_torch

    obj = {"arch": "x", "state_dict": {"w": torch.arange(6.0)}}
    atomic_save_torch(tmp_path / "a.pt", obj)
    atomic_save_torch(tmp_path / "b.pt", obj)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(load_checkpoint(tmp_path / "a.pt")["state_dict"]["w"], obj["state_dict"]["w"])


def test_atomic_dir_is_all_or_nothing(tmp_path):
    from noisystudent.io import atomic_dir

    d = tmp_path / "prepared"
    d.mkdir()
    (d / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(d) as t:
            (t / "new.txt").write_text("half")
            raise RuntimeError("killed")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["prepared"] and (d / "old.txt").exists() and not (d / "new.txt").exists()
    with atomic_dir(d) as t:
        (t / "new.txt").write_text("new")
    assert sorted(f.name for f in d.iterdir()) == ["new.txt"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["prepared"]  # nothing left beside it


def test_outputs_honour_the_umask_and_stale_temporaries_are_cleared(tmp_path):
    """mkstemp / mkdtemp make 0600 / 0700: an output must get what open() would give under the
    umask, so another user, an MLflow or web server can read it. A killed writer's temporary
    file (named with its dead pid) inside an output folder is removed before the next write."""
    import os
    import subprocess
    import sys

    from noisystudent.io import atomic_dir, atomic_write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    folder = tmp_path / "eval"
    folder.mkdir()
    stale, live = folder / f".s1.json.{dead}.abc123.tmp", folder / f".s1.json.{os.getpid()}.def456.tmp"
    stale.write_text("half")
    live.write_text("a writer still at work")
    old = os.umask(0o022)
    try:
        atomic_write_text(folder / "s1.json", "{}")
        with atomic_dir(tmp_path / "prepared") as d:
            (d / "a.txt").write_text("x")
    finally:
        os.umask(old)
    assert (folder / "s1.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "prepared").stat().st_mode & 0o777 == 0o755
    assert not stale.exists() and live.exists()


# ---- using a trained model --------------------------------------------------------------


def test_predict_on_files_matches_evaluate_and_reports_junk(tiny_runs, tmp_path):
    """The test split saved as PNG files in class folders, with junk beside them: `predict`
    gives evaluate's top-1 on the images, lists each junk file with prepare's reason, goes on."""
    from PIL import Image
    from typer.testing import CliRunner

    from noisystudent.__main__ import cli
    from noisystudent.data import Prepared

    root = tiny_runs["a"]
    data = Prepared.load(root / "data/prepared")
    test = data.split("test")
    folder = tmp_path / "images"
    for i, label in zip(test["id"], test["label"]):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        data.images[int(i)].save(folder / str(label) / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    whole = (folder / str(test["label"].iloc[0]) / f"{test['id'].iloc[0]}.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    Image.new("L", (3, 3)).save(folder / ".hidden.png")  # hidden: not searched
    out = tmp_path / "pred.csv"
    r = CliRunner().invoke(cli, ["predict", "--checkpoint", str(root / "models/s2.pt"), "--out", str(out), "--top-k", "2", str(folder)])
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(out, dtype={"label_1": str, "label_2": str})
    assert len(pred) == len(test) and list(pred.columns) == ["path", "label_1", "prob_1", "label_2", "prob_2"]
    truth = pred["path"].map(lambda s: Path(s).parent.name)
    top1 = json.loads((root / "metrics/eval/s2.json").read_text())["top1"]
    assert (pred["label_1"] == truth).mean() == pytest.approx(top1)
    assert (pred["prob_1"] >= pred["prob_2"]).all() and pred["prob_1"].between(0, 1).all()
    bad = pd.read_csv(tmp_path / "pred.bad_files.csv").set_index("path")["reason"]
    assert sorted(Path(p).name for p in bad.index) == ["cut.png", "empty.png", "notes.txt"]
    assert bad[str(folder / "notes.txt")].startswith("not an image") and bad[str(folder / "empty.png")].startswith("empty file")
    assert bad[str(folder / "cut.png")].startswith("truncated or corrupt") and "3 bad files skipped" in r.output
    # a path that does not exist: one line naming it, nothing written
    r = CliRunner().invoke(cli, ["predict", "--checkpoint", str(root / "models/s2.pt"), "--out", str(tmp_path / "x.csv"), str(tmp_path / "nope")])
    assert r.exit_code == 1 and "no such file or folder" in r.output and not (tmp_path / "x.csv").exists()
