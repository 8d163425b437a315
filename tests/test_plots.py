"""Every picture function writes a real PNG of its declared pixel size from small fixture data,
and the pure functions that choose what a picture shows pick what they promise."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from noisystudent import plots
from noisystudent.evaluate import gallery_kinds, gallery_rows


def check_png(path, size):
    assert path.stat().st_size > 1000  # more than an empty canvas's header
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size
        a = np.asarray(im.convert("L"))
    assert a.std() > 5  # something was drawn: not a blank page


def history(student: bool):
    e = np.linspace(0.1, 3, 12)
    return pd.DataFrame({"step": np.arange(1, 13) * 25, "epoch": e, "loss_labeled": 2 / (1 + e),
                         "loss_pseudo": (1.5 / (1 + e)) if student else 0.0, "train_acc": 1 - 1 / (1 + e),
                         "val_acc": 0.9 - 0.5 / (1 + e), "lr": 0.05})


def test_accuracy_per_iteration(tmp_path):
    table = pd.DataFrame({"model": ["teacher", "s1", "s2"], "test_acc": [0.8, 0.86, 0.88], "mce": [100.0, 80.0, 72.0]})
    check_png(plots.accuracy_per_iteration(table, tmp_path / "a.png"), plots.pixel_size("accuracy"))
    # without robustness figures, and with a supervised baseline line
    plots.accuracy_per_iteration(table.drop(columns="mce"), tmp_path / "b.png", references=[("supervised", 0.82), ("oracle", 0.97)])
    check_png(tmp_path / "b.png", plots.pixel_size("accuracy"))


@pytest.mark.parametrize("k", [3, 10, 40])  # 40 classes: no numbers in the cells, still a picture
def test_confusion(tmp_path, k):
    cm = np.random.default_rng(0).integers(0, 9, (k, k)) + np.eye(k, dtype=int) * 30
    check_png(plots.confusion(cm, tmp_path / "c.png", "s1"), plots.pixel_size("confusion"))


def test_confidence_histogram_and_class_counts(tmp_path):
    counts, edges = np.histogram(np.random.default_rng(0).beta(5, 2, 500), bins=20, range=(0, 1))
    check_png(plots.confidence_histogram(counts, edges, 0.3, tmp_path / "h.png", "s1"), plots.pixel_size("confidence"))
    classes = pd.DataFrame({"class": range(10), "pseudo_labeled": np.arange(10) * 20 + 50,
                            "above_threshold": np.arange(10) * 15 + 30, "selected": [100] * 10})
    check_png(plots.class_counts(classes, tmp_path / "k.png", "s1"), plots.pixel_size("classes"))


@pytest.mark.parametrize("student", [False, True])
def test_training_curves(tmp_path, student):
    check_png(plots.training_curves(history(student), tmp_path / "t.png", "s1"), plots.pixel_size("curves"))


def test_robustness(tmp_path):
    rows = pd.DataFrame([{"corruption": c, "severity": s, "accuracy": 0.9 - 0.1 * s} for c in ("fog", "snow") for s in (1, 3, 5)])
    fgsm = pd.DataFrame({"epsilon": [0.0, 4.0, 8.0], "accuracy": [0.9, 0.6, 0.4]})
    check_png(plots.robustness(rows, fgsm, tmp_path / "r.png", "s1"), plots.pixel_size("robustness"))


@pytest.mark.parametrize("n,channels", [(18, 1), (5, 3)])
def test_prediction_grid(tmp_path, n, channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 16, 16, channels), dtype=np.uint8)
    rows = pd.DataFrame({"id": range(n), "teacher": rng.integers(0, 10, n), "teacher_conf": rng.random(n),
                         "student": rng.integers(0, 10, n), "student_conf": rng.random(n), "truth": [-1, *range(n - 1)]})
    check_png(plots.prediction_grid(images, rows, tmp_path / "g.png", "s1 vs teacher"), plots.grid_pixel_size(n))


def test_gallery_shows_corrections_first_then_regressions_then_agreements():
    f = pd.DataFrame({
        "id": range(7),
        "teacher": [1, 2, 3, 4, 5, 6, 7], "teacher_conf": [0.5, 0.6, 0.7, 0.9, 0.4, 0.3, 0.8],
        "student": [9, 2, 8, 4, 0, 1, 7], "student_conf": [0.9, 0.8, 0.95, 0.7, 0.6, 0.99, 0.6],
        "truth": [9, 2, 8, -1, 5, -1, 7],
    })
    # 0, 2: corrected (teacher wrong, student right); 4: regressed; 5: disagree (truth unknown);
    # 1, 3, 6: agree
    assert gallery_kinds(f).tolist() == ["corrected", "agree", "corrected", "agree", "regressed", "disagree", "agree"]
    rows = gallery_rows(f, 6)
    assert rows["id"].tolist() == [2, 0, 4, 5, 1, 6]  # most confident student first; agreements least confident teacher first
    # corrections take two thirds of the places at most, so regressions are shown too
    assert gallery_rows(f, 3)["kind"].tolist() == ["corrected", "corrected", "regressed"]
    assert gallery_rows(f, 2)["kind"].tolist() == ["corrected", "corrected"]
    many = pd.concat([f.iloc[[0]].assign(id=i) for i in range(10, 20)] + [f], ignore_index=True)  # 12 corrections
    assert gallery_rows(many, 6)["kind"].tolist() == ["corrected"] * 4 + ["regressed", "disagree"]


def test_accuracy_curve(tmp_path):
    t = pd.DataFrame({"x": [1, 0.5, 0.25, 0.125], "mean": [0.88, 0.87, 0.85, 0.84], "std": [0.01, 0.02, np.nan, 0.01]})
    check_png(plots.accuracy_curve(t, tmp_path / "f.png", "fraction of the unlabeled pool", "accuracy vs data", logx=True),
              plots.pixel_size("ablation"))
