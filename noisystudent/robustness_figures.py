"""Robustness figures from what `robustness.score` measured, pure numpy (no torch: the summary
reads these without loading a model): the paper's CE, mCE, relative mCE (ImageNet-C), FR, mFR
(ImageNet-P), and their 95 % intervals from a bootstrap over the images, each resample giving
the figures by the same definitions as all the images do (checked by a test)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

def corruption_error(errors: np.ndarray, base_errors: np.ndarray) -> float | None:
    """CE_c = sum_s E(s, c) / sum_s E_base(s, c); None when the baseline makes no error."""
    b = float(np.sum(base_errors))
    return None if b == 0 else float(np.sum(errors)) / b


def relative_corruption_error(errors: np.ndarray, clean: float, base_errors: np.ndarray, base_clean: float,
                              num_images: int | None = None) -> float | None:
    """Relative CE_c = sum_s (E(s, c) - E_clean) / sum_s (E_base(s, c) - E_base_clean).

    None where the denominator is not clearly above zero: a corruption that barely hurts the
    baseline (small images, mild corruptions) gives a ratio of noise, even of sign (-21 was
    seen). With `num_images`, "clearly" means above two standard errors of that sum, each
    severity's error and the clean error taken as independent proportions over the images (a
    conservative bound: paired errors co-vary)."""
    e_b = np.asarray(base_errors, dtype=np.float64)
    b = float(np.sum(e_b - base_clean))
    if num_images:
        se = math.sqrt(float(np.sum(e_b * (1 - e_b) + base_clean * (1 - base_clean))) / num_images)
        if b <= 2 * se:
            return None
    return None if b <= 0 else float(np.sum(np.asarray(errors) - clean)) / b


def mean_defined(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def flips_per_sequence(preds: np.ndarray, noise: bool) -> np.ndarray:
    """preds [N sequences, F frames] of predicted classes: per sequence, the mean over frames
    t >= 1 of 1[pred_t != pred_ref], ref = frame 0 for noise sequences, frame t-1 otherwise."""
    preds = np.asarray(preds)
    ref = preds[:, :1] if noise else preds[:, :-1]
    return (preds[:, 1:] != ref).mean(1)


def flip_probability(preds: np.ndarray, noise: bool) -> float:
    """The flip probability of ImageNet-P: `flips_per_sequence` averaged over the sequences."""
    return float(flips_per_sequence(preds, noise).mean())


def relative_to(raw: dict, base: dict) -> dict:
    """CE, relative CE per corruption and FR per perturbation against a baseline's raw
    figures (`score` of the baseline model), and their means (x100, None where undefined)."""
    ce, rce = {}, {}
    for c, by_sev in raw["corruption_error"].items():
        e = np.array(list(by_sev.values()))
        b = np.array([base["corruption_error"][c][s] for s in by_sev])
        ce[c] = corruption_error(e, b)
        rce[c] = relative_corruption_error(e, raw["clean_error"], b, base["clean_error"], base["num_images"])
    fr = {k: (None if base["flip_probability"][k] == 0 else v / base["flip_probability"][k]) for k, v in raw["flip_probability"].items()}
    pct = lambda v: None if v is None else 100 * v  # noqa: E731
    return {"mce": pct(mean_defined(ce.values())), "relative_mce": pct(mean_defined(rce.values())),
            # left out of relative mCE: the baseline's degradation is within two standard errors of 0
            "relative_mce_left_out": sorted(c for c, v in rce.items() if v is None),
            "mfr": pct(mean_defined(fr.values())), "ce": ce, "relative_ce": rce, "fr": fr}


# ---- intervals: a bootstrap over the images ---------------------------------------------


def resampled_figures(o: dict, base: dict, idx: np.ndarray, left_out: list[int], fgsm_at: int) -> dict[str, np.ndarray]:
    """The figures of `relative_to` (x100) and the clean error and FGSM accuracy, for each row
    of `idx` [B, n] (a resample of the images; the identity row gives the figures themselves),
    from per-image outcomes (`score`'s "outcomes") of the model `o` and its reference `base`
    on the same images. A corruption or perturbation whose reference figure is 0 in a resample
    is undefined there and left out of that resample's mean, as `mean_defined` does;
    `left_out` (indices) are left out of relative mCE, decided once on all the images."""
    # a resample as how often it draws each image: its mean of any outcome is then one matrix
    # product, where indexing the outcomes with `idx` would copy them B times over (75
    # corruption-severities x 2,000 resamples x 200 images x 8 bytes: 240 MB per model)
    (B, drawn), n = idx.shape, np.shape(o["clean_wrong"])[-1]
    counts = np.bincount((np.arange(B)[:, None] * n + idx).ravel(), minlength=B * n).reshape(B, n).astype(np.float64)

    def rate(a):  # [..., n] -> [..., B]
        return np.asarray(a, dtype=np.float64) @ counts.T / drawn

    e, eb, c, cb = rate(o["wrong"]), rate(base["wrong"]), rate(o["clean_wrong"]), rate(base["clean_wrong"])  # [C, S, B], [B]
    with np.errstate(divide="ignore", invalid="ignore"):
        ce = np.where(eb.sum(1) > 0, e.sum(1) / eb.sum(1), np.nan)  # [C, B]
        rel = (e - c).sum(1) / (eb - cb).sum(1)
        keep = np.array([i not in left_out for i in range(len(rel))], dtype=bool)
        rel = np.where(((eb - cb).sum(1) > 0) & keep[:, None], rel, np.nan)
        f, fb = rate(o["flips"]), rate(base["flips"])  # [P, B]
        fr = np.where(fb > 0, f / fb, np.nan)
    mean = lambda a: np.nanmean(a, 0) if len(a) else np.full(idx.shape[0], np.nan)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where every term is undefined: nan
        return {"clean_error": c, "mce": 100 * mean(ce), "relative_mce": 100 * mean(rel[keep]) if keep.any() else np.full(idx.shape[0], np.nan),
                "mfr": 100 * mean(fr), "fgsm_acc": rate(o["fgsm_correct"][fgsm_at])}


def bootstrap_rows(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> list[float] | None:
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return None
    alpha = (1 - level) / 2
    return [float(x) for x in np.quantile(d, [alpha, 1 - alpha])]


def intervals(o: dict, base: dict, left_out: list[int], fgsm_at: int, n_boot: int = 2000, seed: int = 0) -> dict[str, list[float] | None]:
    """95 % percentile-bootstrap intervals of a model's robustness figures: the images resampled
    with replacement, the model's and its reference's outcomes on the same draw (paired: both
    see one set of images, so the reference's own sampling noise enters CE and FR too)."""
    n = len(o["clean_wrong"])
    figs = resampled_figures(o, base, bootstrap_rows(n, n_boot, seed), left_out, fgsm_at)
    return {k: percentile_interval(v) for k, v in figs.items()}


def difference_intervals(a: dict, b: dict, base: dict, left_out: list[int], fgsm_at: int, n_boot: int = 2000,
                         seed: int = 0) -> dict[str, list[float] | None]:
    """Intervals of (figure of a - figure of b), both relative to `base`, all three paired on one
    resample of the images per draw: the best student against the supervised baseline."""
    idx = bootstrap_rows(len(a["clean_wrong"]), n_boot, seed)
    fa, fb = resampled_figures(a, base, idx, left_out, fgsm_at), resampled_figures(b, base, idx, left_out, fgsm_at)
    return {k: percentile_interval(fa[k] - fb[k]) for k in fa}


def outcomes_file(figures: Path) -> Path:
    """metrics/robustness/<model>.json -> its per-image outcomes, <model>_images.npz."""
    return Path(figures).with_name(f"{Path(figures).stem}_images.npz")


def save_outcomes(path: Path, outcomes: dict) -> None:
    """An .npz numpy loads, written byte for byte the same for the same arrays (np.savez stamps
    each member with the clock, which would change DVC's hash of an unchanged result)."""
    import zipfile

    from .io import atomic_path

    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as z:
        for name, array in outcomes.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            with z.open(member, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)


def load_outcomes(path: Path) -> dict:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing: the robustness stage of that model has not run")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
