import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from noisystudent.pseudo import copies_per_image, filter_confident, pseudo_label_accuracy, select, soft_labels


def frame_from(labels, conf):
    n = len(labels)
    return pd.DataFrame({"id": np.arange(n), "probs": [np.zeros(3, np.float32)] * n, "label": labels, "confidence": conf})


def test_soft_labels_with_temperature():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    p = soft_labels(logits, temperature=1.0)
    assert p.dtype == np.float32 and list(p.argmax(1)) == [0, 2]
    assert np.isclose(p[0, 0], np.exp(2) / (np.exp(2) + 2), atol=1e-6)
    assert np.allclose(p.sum(1), 1, atol=1e-6)
    assert soft_labels(logits, temperature=2.0)[0, 0] < p[0, 0]  # higher T, softer labels


def test_threshold_filter():
    f = frame_from([0, 1, 2], [0.2, 0.3, 0.9])
    assert list(filter_confident(f, 0.3)["id"]) == [1, 2]


def test_overfull_class_keeps_only_most_confident():
    conf = np.array([0.99, 0.98, 0.97, 0.50, 0.40, 0.35])
    copies = copies_per_image(conf, per_class=2, min_threshold=0.3, rng=np.random.default_rng(0))
    # scan: at 0.98 two images qualify -> exactly those two, one copy each
    assert list(copies) == [1, 1, 0, 0, 0, 0]


def test_downsampling_is_random_among_the_confident():
    conf = np.array([0.995] * 10 + [0.5] * 5)
    copies = copies_per_image(conf, per_class=4, min_threshold=0.3, rng=np.random.default_rng(1))
    assert copies[10:].sum() == 0  # never the less confident ones
    assert set(np.unique(copies[:10])) <= {0, 1} and copies.sum() == 4
    # each confident image is kept with probability 4/10, as in the official code
    hits = sum(copies_per_image(conf, 4, 0.3, np.random.default_rng(s))[:10] for s in range(2000))
    assert np.allclose(hits / 2000, 0.4, atol=0.05)


def test_underfull_class_is_duplicated():
    conf = np.array([0.9, 0.8, 0.4])
    copies = copies_per_image(conf, per_class=7, min_threshold=0.3, rng=np.random.default_rng(0))
    # 7 / 3 = 2.33 copies each: 2 or 3, 7 in all
    assert set(copies) <= {2, 3} and copies.sum() == 7


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.floats(0.2, 1.0)), min_size=1, max_size=300),
    st.integers(1, 80),
    st.integers(0, 2**31 - 1),
)
def test_balance_properties(rows, per_class, seed):
    labels = np.array([r[0] for r in rows])
    conf = np.array([r[1] for r in rows])
    f = frame_from(labels, conf)
    out = select(f, 0.3, per_class, 5, seed)
    # every selected row passed the threshold and is a real input row
    assert (out["confidence"] >= 0.3).all()
    assert set(out["id"]) <= set(f["id"])
    # pure: same seed, same result
    pd.testing.assert_frame_equal(out, select(f, 0.3, per_class, 5, seed))
    for c in range(5):
        have = int(((labels == c) & (conf >= 0.3)).sum())
        got = out[out["label"] == c]
        if have == 0:
            assert len(got) == 0
            continue
        # every class that has an image above the threshold holds exactly per_class
        kept = got["id"].nunique()
        assert len(got) == per_class
        counts = got["id"].value_counts()
        assert counts.max() - counts.min() <= 1  # copies differ by at most one
        eligible = np.sort(conf[(labels == c) & (conf >= 0.3)])[::-1]
        if have >= per_class:
            # over-full: only images at or above the grid threshold where the class first
            # holds per_class images, i.e. floor(k-th largest confidence, 0.01)
            t = np.floor(eligible[per_class - 1] * 100 + 1e-9) / 100
            assert (got["confidence"] >= t - 1e-9).all()
        else:
            # under-full: every eligible image is kept, duplicated
            assert kept == have


def literal_official_scan(conf, per_class, min_threshold):
    """The official loop, literally: thresholds 1.00, 0.99, ... down to the minimum."""
    t = 1.0
    while True:
        keep = conf >= t - 1e-12
        if keep.sum() >= per_class or t <= min_threshold + 1e-9:
            return keep
        t = round(t - 0.01, 2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.3, 1.0), min_size=1, max_size=200), st.integers(1, 250))
def test_threshold_search_equals_the_official_scan(conf, per_class):
    conf = np.array(conf, dtype=np.float32)
    copies = copies_per_image(conf, per_class, 0.3, np.random.default_rng(0))
    keep = literal_official_scan(conf.astype(np.float64), per_class, 0.3)
    # the kept set is exactly the scan's; only kept images get copies, and all of them do
    # whenever the class is under-full (copies >= 1)
    assert not (copies[~keep] > 0).any()
    if keep.any():
        assert copies.sum() == per_class
    if keep.sum() <= per_class:
        assert (copies[keep] >= 1).all()


def test_pseudo_label_accuracy_against_hidden_labels():
    f = frame_from([0, 1, 1, 2], [0.9, 0.9, 0.9, 0.9])
    truth = pd.Series([0, 1, 0, 0], index=[0, 1, 2, 3])
    assert pseudo_label_accuracy(f, truth) == 0.5
    assert pseudo_label_accuracy(f.iloc[:2], truth) == 1.0
