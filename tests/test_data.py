import numpy as np
import pandas as pd
import pytest

from noisystudent.data import Prepared, one_hot
from noisystudent.splits import prepare, split_stratified
from noisystudent.params import DataParams


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(3), 20)
    a = split_stratified(labels, {"labeled": 2, "val": 3}, seed=1)
    b = split_stratified(labels, {"labeled": 2, "val": 3}, seed=1)
    c = split_stratified(labels, {"labeled": 2, "val": 3}, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["labeled"], c["labeled"])
    assert np.bincount(labels[a["labeled"]]).tolist() == [2, 2, 2]
    allidx = np.concatenate(list(a.values()))
    assert len(allidx) == 60 and len(set(allidx)) == 60


def test_split_too_small_class_is_an_error():
    with pytest.raises(ValueError, match="class 1 has 2 images"):
        split_stratified(np.array([0] * 10 + [1] * 2), {"labeled": 2, "val": 1}, 0)


def test_split_none_takes_the_rest():
    labels = np.repeat(np.arange(2), 10)
    s = split_stratified(labels, {"labeled": None, "val": 3}, 0)
    assert len(s["val"]) == 6 and len(s["labeled"]) == 14 and len(s["unlabeled"]) == 0


def test_prepare_digits_hides_unlabeled_labels(tmp_path):
    meta = prepare(tmp_path, DataParams(image_size=16, labeled_per_class=3, val_per_class=5, test_per_class=10, seed=0))
    d = Prepared.load(tmp_path)
    assert meta["counts"]["labeled"] == 30 and d.num_classes == 10 and d.in_chans == 1
    assert d.images.array.shape[1:] == (16, 16) and d.images.array.dtype == np.uint8
    assert d.images[0].size == (16, 16) and d.images[0].mode == "L"
    assert list(d.split("unlabeled").columns) == ["id"]
    truth = pd.read_parquet(tmp_path / "unlabeled_truth.parquet")
    assert len(truth) == meta["counts"]["unlabeled"] == 1797 - 30 - 50 - 100
    ids = np.concatenate([d.split(s)["id"].to_numpy() for s in ("labeled", "unlabeled", "val", "test")])
    assert len(set(ids)) == 1797


def test_one_hot_smoothing():
    t = one_hot(np.array([1, 0]), 4, smoothing=0.1)
    assert np.allclose(t.sum(1), 1) and np.isclose(t[0, 1], 0.925) and np.isclose(t[0, 0], 0.025)


def test_test_per_class_null_is_all_of_a_test_split_and_40_carved_for_digits(tmp_path):
    """The default (null) never shrinks a user's test split; digits, which has none, carves 40."""
    meta = prepare(tmp_path, DataParams(image_size=8, labeled_per_class=3, val_per_class=5, test_per_class=None, seed=0))
    assert meta["counts"]["test"] == 400
