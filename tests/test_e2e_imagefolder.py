"""A user's own image folder (nested pool, junk files, odd modes) through the real `dvc repro`,
exactly as the README tells users to run their data. Its own file: it needs no shared fixture,
so it runs beside the other end-to-end tests."""
import json

import pytest

from dvcrepo import FIRST_ITER, dvc, make_repo, ran

pytestmark = pytest.mark.slow


def test_imagefolder_through_dvc_repro(tmp_path):
    """The user's own folder (nested pool, junk files, odd modes) through the real pipeline."""
    from fixtures import BAD_KINDS, make_imagefolder

    root, env = make_repo(tmp_path / "repo", data={"name": "imagefolder", "root": "data/raw/mine", "image_size": 12,
                                                    "labeled_per_class": None, "val_per_class": 2, "test_per_class": None,
                                                    },
                          # the README's command plus decoding workers (a speed setting: no byte changes),
                          # so that file decoding in worker processes runs end to end too
                          speed={"data_workers": 2},
                          # MLflow is tested on the shared repository (test_e2e.py); here it would only cost
                          # seconds per stage
                          mlflow={"enabled": False},
                          iterations={"s1": {"teacher": "teacher", "arch": "ns_resnet_xs"}}, eval={"models": ["teacher", "s1", "baseline", "oracle"]})
    make_imagefolder(root / "data/raw/mine", train=8, test=4, unlabeled=40)
    out = dvc("repro", cwd=root, env=env)
    assert ran(out) == FIRST_ITER | {"train_student@s1", "evaluate@s1", "robustness@s1", "gallery@s1", "summary", "report"}, out
    prep = json.loads((root / "metrics/prepare.json").read_text())
    assert prep["bad_files"] == len(BAD_KINDS) and prep["n_unlabeled"] == 45 and prep["converted"] == 5
    assert f"{len(BAD_KINDS)} unusable file(s) left out" in out
    assert len(open(root / "data/prepared/bad_files.csv").read().splitlines()) == len(BAD_KINDS) + 1
    summary = json.loads((root / "metrics/summary.json").read_text())
    assert list(summary["test_acc"]) == ["s1"] and 0 <= summary["best_student_test_acc"] <= 1
    sel = json.loads((root / "metrics/select/s1.json").read_text())
    assert sel["pseudo_labeled"] == 45 and "pseudo_label_acc_all" not in sel  # a folder pool has no hidden labels
    assert ran(dvc("repro", cwd=root, env=env)) == set()
    # a file moved in the folder is a change DVC sees: prepare (and all after it) is out of date
    (root / "data/raw/mine/unlabeled/batch0/sub0/img0000.jpg").rename(root / "data/raw/mine/unlabeled/moved.jpg")
    status = dvc("status", "prepare", cwd=root, env=env)
    assert "changed deps" in status and "data/raw/mine" in status, status

    # a pretrained teacher from a local file (here the teacher just trained, exported as timm
    # writes it) with from-scratch students, through `dvc exp run`: how users apply the method
    import shutil

    from noisystudent.checkpoint import load_checkpoint, load_model
    from noisystudent.export import save_timm

    model, ckpt = load_model(root / "models/teacher.pt")
    save_timm(model, ckpt, tmp_path / "export")
    shutil.copy(tmp_path / "export/model.safetensors", root / "models/pretrained/teacher.safetensors")
    # up to the student it teaches: the later stages are the from-scratch run's machinery, and
    # `dvc status` shows they are out of date too
    out = dvc("exp", "run", "-S", "teacher.pretrained=models/pretrained/teacher.safetensors", "evaluate@teacher",
              "train_student@s1", cwd=root, env=env)
    assert {"prepare", "train_teacher", "evaluate@teacher", "pseudo_label@s1", "select@s1", "train_student@s1"} == ran(out), ran(out)
    assert load_checkpoint(root / "models/teacher.pt")["recipe"]["pretrained"] == "models/pretrained/teacher.safetensors"
    assert load_checkpoint(root / "models/s1.pt")["recipe"].get("pretrained") is None  # the student from scratch
    stale = dvc("status", cwd=root, env=env)
    assert all(f"{stage}:" in stale for stage in ("evaluate@s1", "gallery@s1", "robustness@s1", "summary")), stale
    pre = json.loads((root / "metrics/eval/teacher.json").read_text())
    print(f"pretrained teacher on the image folder: teacher {pre['top1']:.3f} (from scratch: {summary['teacher_test_acc']:.3f})")
