"""The robustness measurements against cases computed by hand."""
import numpy as np
import pytest
import torch

from noisystudent import robustness as R
from noisystudent import robustness_figures as F


@pytest.mark.parametrize("shape", [(16, 16), (32, 32, 3)], ids=["gray16", "rgb32"])
@pytest.mark.parametrize("name", R.CORRUPTIONS)
def test_corruption_is_deterministic_keeps_shape_and_range(name, shape):
    img = np.random.default_rng(0).integers(40, 216, shape, dtype=np.uint8)
    a = [R.corrupt_image(img, name, s, seed=3) for s in (1, 5)]
    b = [R.corrupt_image(img, name, s, seed=3) for s in (1, 5)]
    for x, y in zip(a, b):
        assert x.shape == img.shape and x.dtype == np.uint8  # uint8: 0..255 by type
        assert np.array_equal(x, y)  # same seed, same image
    assert not np.array_equal(a[1], img)  # severity 5 changes the image
    # severity 5 moves further from the clean image than severity 1 (not for pixelate on
    # tiny images, whose coarse grid at severity 1 can already be the coarsest possible)
    d = [np.abs(x.astype(float) - img).mean() for x in a]
    if name != "pixelate":
        assert d[1] >= d[0] - 1e-9, d


def test_noise_corruptions_depend_on_the_seed():
    img = np.full((32, 32, 3), 128, np.uint8)
    for name in ("gaussian_noise", "shot_noise", "impulse_noise"):
        assert not np.array_equal(R.corrupt_image(img, name, 3, 1), R.corrupt_image(img, name, 3, 2))


def test_unknown_corruption_is_refused():
    with pytest.raises(ValueError, match="unknown corruption 'fire'"):
        R.corrupt_image(np.zeros((32, 32), np.uint8), "fire", 1, 0)


@pytest.mark.parametrize("name", R.PERTURBATIONS)
def test_perturbation_sequences(name):
    img = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    seq = R.perturb_sequence(img, name, 6, seed=0)
    assert seq.shape == (6, 16, 16, 3) and seq.dtype == np.uint8
    assert np.array_equal(seq, R.perturb_sequence(img, name, 6, seed=0))
    if name not in R.NOISE_SEQUENCES:  # gradual: starts at the clean image, drifts away
        assert np.array_equal(seq[0], img)
        d = [np.abs(f.astype(float) - img).mean() for f in seq]
        assert d[-1] > d[1] > 0


def test_mce_by_hand():
    # two corruptions x two severities; the model's and the baseline's errors
    err = {"blur": np.array([0.2, 0.4]), "noise": np.array([0.1, 0.1])}
    base = {"blur": np.array([0.3, 0.5]), "noise": np.array([0.4, 0.4])}
    ce = {c: F.corruption_error(err[c], base[c]) for c in err}
    assert ce["blur"] == pytest.approx(0.6 / 0.8) and ce["noise"] == pytest.approx(0.2 / 0.8)
    assert F.mean_defined(ce.values()) == pytest.approx((0.75 + 0.25) / 2)
    # relative: (0.2-0.1 + 0.4-0.1) / (0.3-0.2 + 0.5-0.2) = 0.4 / 0.4 = 1
    assert F.relative_corruption_error(err["blur"], 0.1, base["blur"], 0.2) == pytest.approx(1.0)
    assert F.relative_corruption_error(err["noise"], 0.1, base["noise"], 0.2) == pytest.approx(0.0)
    assert F.corruption_error(np.array([0.1]), np.array([0.0])) is None  # a perfect baseline: undefined
    assert F.mean_defined([None, 0.5, 1.5]) == 1.0


def test_flip_probability_by_hand():
    preds = np.array([
        [3, 3, 1, 1],  # previous frame: one flip in 3; first frame: two in 3
        [0, 2, 0, 0],  # previous: two flips in 3; first: one in 3
    ])
    assert F.flip_probability(preds, noise=False) == pytest.approx((1 + 2) / 6)
    assert F.flip_probability(preds, noise=True) == pytest.approx((2 + 1) / 6)
    assert F.flip_probability(np.array([[5, 5, 5]]), noise=False) == 0


def test_fgsm_on_a_linear_model_by_hand():
    # two classes, logits = W x + b with w1 - w0 = (0.5, 0.5, 0.5, 0.5), b1 - b0 = -1
    lin = torch.nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[0.0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]])
        lin.bias[:] = torch.tensor([0.0, -1.0])
    # image i is the constant a_i: class-1 margin = 2 a_i - 1 = 0.1, 0.2, 0.3, 0.4
    a = torch.tensor([0.55, 0.6, 0.65, 0.7])
    x = a[:, None].repeat(1, 4)
    y = torch.ones(4, dtype=torch.long)
    ident = lambda t: t  # noqa: E731  (no normalisation: pixel space is model space)
    # FGSM moves every pixel by eps against w1 - w0: the margin drops by eps * ||w1 - w0||_1 = 2 eps
    # (no clipping: every pixel stays within [0.3, 0.95])
    by_hand = {0.0: 1.0, 0.02: 1.0, 0.075: 0.75, 0.125: 0.5, 0.25: 0.0}
    for eps, acc in by_hand.items():
        xa = R.fgsm(lin, x, y, eps, ident)
        assert torch.allclose(xa, x - eps)
        assert float((lin(xa).argmax(1) == y).float().mean()) == acc
    # and the step is clipped to the valid pixel range
    assert float(R.fgsm(lin, torch.full((1, 4), 0.01), torch.ones(1, dtype=torch.long), 0.5, ident).min()) == 0.0


def test_relative_ce_is_left_out_where_the_baseline_barely_degrades():
    """The reviewer's case: the baseline's jpeg errors sum to 1.095 over 5 severities against
    5 x 0.22 clean (degradation -0.005): the ratio was -21, dragging relative mCE to -60.8. A
    degradation within two standard errors of 0 (200 images) is left out, and named."""
    jpeg_base = np.array([0.215, 0.22, 0.22, 0.22, 0.22])
    student = np.array([0.25, 0.25, 0.25, 0.25, 0.25])
    assert F.relative_corruption_error(student, 0.12, jpeg_base, 0.22, num_images=200) is None
    # a clear degradation (0.2 a severity on 200 images) keeps its ratio
    blur_base = np.array([0.4, 0.4, 0.4, 0.4, 0.4])
    assert F.relative_corruption_error(student, 0.15, blur_base, 0.2, num_images=200) == pytest.approx(0.5 / 1.0)
    sev = {f"{s}": v for s, v in zip(range(1, 6), jpeg_base)}
    base = {"num_images": 200, "clean_error": 0.22, "flip_probability": {},
            "corruption_error": {"jpeg_compression": sev, "blur": {f"{s}": 0.4 for s in range(1, 6)}}}
    raw = {"clean_error": 0.15, "flip_probability": {},
           "corruption_error": {"jpeg_compression": {f"{s}": 0.25 for s in range(1, 6)}, "blur": {f"{s}": 0.25 for s in range(1, 6)}}}
    rel = F.relative_to(raw, base)
    assert rel["relative_mce_left_out"] == ["jpeg_compression"] and rel["relative_mce"] == pytest.approx(100 * 0.5 / 0.9)


# ---- intervals (issue: every robustness figure carries one) ------------------------------


def _outcomes(rng, n, err, C=4, S=3, P=2, E=3):
    """Random per-image outcomes shaped as `score` keeps them; `err` the error rate."""
    wrong = rng.random((C, S, n)) < err * np.linspace(1, 2, S)[None, :, None]
    return {"clean_wrong": rng.random(n) < err / 2, "wrong": wrong, "fgsm_correct": rng.random((E, n)) > err,
            "flips": rng.integers(0, 4, (P, n)) / 3.0}


def _raw(o, names):
    """What `score` reports from these outcomes (the JSON side)."""
    C, S, _ = o["wrong"].shape
    return {"num_images": len(o["clean_wrong"]), "clean_error": float(o["clean_wrong"].mean()),
            "corruption_error": {names[c]: {str(s + 1): float(o["wrong"][c, s].mean()) for s in range(S)} for c in range(C)},
            "flip_probability": {f"p{k}": float(o["flips"][k].mean()) for k in range(len(o["flips"]))}}


def test_resampled_figures_of_all_images_are_the_reported_figures():
    """The bootstrap recomputes the figures with the same definitions: on the identity
    resample it must give exactly what relative_to reports."""
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "d"]
    o, base = _outcomes(rng, 200, 0.2), _outcomes(rng, 200, 0.35)
    want = F.relative_to(_raw(o, names), _raw(base, names))
    left = [names.index(c) for c in want["relative_mce_left_out"]]
    got = F.resampled_figures(o, base, np.arange(200)[None], left, fgsm_at=1)
    for k in ("mce", "relative_mce", "mfr"):
        assert got[k][0] == pytest.approx(want[k]), k
    assert got["fgsm_acc"][0] == pytest.approx(o["fgsm_correct"][1].mean())
    assert got["clean_error"][0] == pytest.approx(o["clean_wrong"].mean())


def test_each_resample_gives_the_figures_of_the_images_it_draws():
    """A resample's row (computed from how often it draws each image) equals the figures of
    the outcomes taken image by image in the order drawn, repeats included."""
    rng = np.random.default_rng(4)
    o, base = _outcomes(rng, 60, 0.2), _outcomes(rng, 60, 0.35)
    idx = F.bootstrap_rows(60, 5, seed=1)
    got = F.resampled_figures(o, base, idx, [1], fgsm_at=2)
    for r, rows in enumerate(idx):
        drawn = lambda d: {k: np.asarray(v)[..., rows] for k, v in d.items()}  # noqa: E731
        one = F.resampled_figures(drawn(o), drawn(base), np.arange(60)[None], [1], fgsm_at=2)
        for k in got:
            assert got[k][r] == pytest.approx(one[k][0], rel=1e-12, nan_ok=True), (r, k)


def test_intervals_cover_the_figure_and_shrink_with_more_images():
    rng = np.random.default_rng(1)
    widths = []
    for n in (200, 3200):
        o, base = _outcomes(rng, n, 0.2), _outcomes(rng, n, 0.35)
        point = F.resampled_figures(o, base, np.arange(n)[None], [], fgsm_at=0)
        ci = F.intervals(o, base, [], fgsm_at=0, n_boot=500)
        for k, (lo, hi) in ci.items():
            assert lo <= point[k][0] <= hi, (n, k)
        widths.append(ci["fgsm_acc"][1] - ci["fgsm_acc"][0])
    # a proportion near 0.8 over 200 images: 95 % half-width ~ 1.96 * sqrt(.16 / 200) ~ 5.5 points
    assert 0.08 < widths[0] < 0.14 and widths[1] < widths[0] / 3


def test_difference_of_a_model_with_itself_is_exactly_zero():
    rng = np.random.default_rng(2)
    o, base = _outcomes(rng, 100, 0.2), _outcomes(rng, 100, 0.3)
    for k, ci in F.difference_intervals(o, o, base, [], fgsm_at=2, n_boot=200).items():
        assert ci == [0.0, 0.0], k
    # a clearly better model: every FGSM interval above 0
    better = {**o, "fgsm_correct": np.ones_like(o["fgsm_correct"])}
    assert F.difference_intervals(better, o, base, [], fgsm_at=2, n_boot=200)["fgsm_acc"][0] > 0


def test_outcomes_file_is_byte_stable_and_round_trips(tmp_path):
    o = _outcomes(np.random.default_rng(3), 50, 0.3)
    F.save_outcomes(tmp_path / "a.npz", o)
    import time

    time.sleep(1.1)  # np.savez would stamp each member with the clock: a second later, other bytes
    F.save_outcomes(tmp_path / "b.npz", o)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = F.load_outcomes(tmp_path / "a.npz")
    assert set(back) == set(o) and all(np.array_equal(back[k], o[k]) for k in o)
    with pytest.raises(FileNotFoundError, match="robustness stage"):
        F.load_outcomes(tmp_path / "none.npz")
