"""Paired statistics for the ablation verdicts (noisystudent/stats.py)."""
import numpy as np
import pytest

from noisystudent.stats import Effect, paired_bootstrap, seed_interval


def test_three_same_sign_seeds_of_one_image_are_not_evidence():
    """The old verdict said "supported (3/3 seeds)" for +1 image in 400 in each seed."""
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(3):
        b = (rng.random(400) < 0.85).astype(float)
        a = b.copy()
        a[np.flatnonzero(b == 0)[0]] = 1  # one more image right
        pairs.append((a, b))
    e = paired_bootstrap(pairs, n_boot=2000)
    assert e.mean == pytest.approx(0.0025) and e.lo <= 0 < e.hi and e.verdict == "not distinguishable at this size"


def test_a_clear_difference_is_supported_and_its_opposite_contradicted():
    rng = np.random.default_rng(1)
    pairs = [((rng.random(400) < 0.95).astype(float), (rng.random(400) < 0.75).astype(float)) for _ in range(5)]
    e = paired_bootstrap(pairs, n_boot=2000)
    assert e.verdict == "supported" and 0.15 < e.mean < 0.25 and e.lo < e.mean < e.hi and e.seeds == 5 and e.images == 2000
    assert paired_bootstrap([(b, a) for a, b in pairs], n_boot=2000).verdict == "contradicted"


def test_interval_covers_a_null_difference_about_95_percent_of_the_time():
    """100 simulated ablations with no true difference (5 seeds x 200 images, paired outcomes
    correlated as two similar models' are): the interval holds 0 in roughly 95 of them."""
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(100):
        pairs = []
        for _ in range(5):
            hard = rng.random(200) < 0.15  # images both tend to miss
            a = ~(hard ^ (rng.random(200) < 0.05))
            b = ~(hard ^ (rng.random(200) < 0.05))
            pairs.append((a.astype(float), b.astype(float)))
        e = paired_bootstrap(pairs, n_boot=400, seed=int(rng.integers(1 << 30)))
        covered += e.lo <= 0 <= e.hi
    assert 85 <= covered <= 100


def test_misaligned_outcomes_are_refused_and_no_seed_cannot_be_judged():
    with pytest.raises(ValueError, match="aligned"):
        paired_bootstrap([(np.ones(3), np.ones(4))])
    assert paired_bootstrap([]).verdict == "cannot be judged"


def test_seed_interval_is_a_t_interval():
    e = seed_interval(np.array([0.01, 0.03, 0.02]))
    # mean 0.02, sd 0.01, t(0.975, 2) = 4.303: half width 0.02484
    assert e.mean == pytest.approx(0.02) and e.hi - e.mean == pytest.approx(4.3027 * 0.01 / np.sqrt(3), rel=1e-3)
    assert isinstance(e, Effect) and e.verdict == "not distinguishable at this size"
