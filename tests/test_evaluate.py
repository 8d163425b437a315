import numpy as np

from noisystudent.evaluate import classification_metrics, expected_calibration_error


def test_ece_hand_computed():
    # two bins used: conf 0.9 (2 images, 1 right) and conf 0.6 (2 images, 2 right)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    # |0.5 - 0.9| * 2/4 + |1.0 - 0.6| * 2/4 = 0.2 + 0.2
    assert np.isclose(expected_calibration_error(probs, labels, bins=10), 0.4)


def test_top5_by_hand():
    """7 classes; the true class ranks 1st, 5th and 6th: top-1 1/3, top-5 2/3 (scikit-learn's)."""
    p = np.array([0.30, 0.20, 0.15, 0.12, 0.10, 0.08, 0.05])
    probs = np.stack([p, p, p])
    m = classification_metrics(np.log(probs), np.array([0, 4, 5]), 7)
    assert np.isclose(m["top1"], 1 / 3) and np.isclose(m["top5"], 2 / 3)
    assert classification_metrics(np.log(probs[:, :5] / probs[:, :5].sum(1, keepdims=True)), np.array([0, 4, 1]), 5)["top5"] == 1.0


def test_classification_metrics_per_class():
    logits = np.log(np.array([[0.8, 0.2], [0.3, 0.7], [0.9, 0.1]]))
    m = classification_metrics(logits, np.array([0, 1, 1]), 2)
    assert np.isclose(m["top1"], 2 / 3)
    assert m["per_class_acc"] == {"0": 1.0, "1": 0.5}


def test_best_student_is_chosen_on_validation_never_on_test():
    """Test labels choose nothing: s1 has the best test top-1, s2 and s3 tie on validation,
    the later iteration (s3) is the best student."""
    import pandas as pd

    from noisystudent.results import best_student

    table = pd.DataFrame({"model": ["teacher", "s1", "s2", "s3", "baseline"], "val_acc": [0.9, 0.80, 0.85, 0.85, 0.99],
                          "test_acc": [0.8, 0.95, 0.70, 0.75, 0.99]})
    assert best_student(table) == "s3"


def test_temperature_scaling_fixes_an_overconfident_model_and_no_prediction():
    """Logits of a calibrated model made 4x overconfident: the fitted temperature is ~4, the
    scaled ECE falls back to the calibrated one, every prediction stays."""
    from noisystudent.evaluate import expected_calibration_error, fit_temperature, softmax

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 2
    labels = np.array([rng.choice(5, p=p) for p in softmax(logits)])  # calibrated by construction
    t = fit_temperature(4 * logits, labels)
    assert 3.5 < t < 4.5
    raw, scaled = (expected_calibration_error(softmax(4 * logits / s), labels) for s in (1.0, t))
    assert scaled < 0.03 < raw and (softmax(4 * logits / t).argmax(1) == logits.argmax(1)).all()
