"""Batched RandAugment (noisystudent/randaugment.py) against the PIL reference
(transforms.RandAugment, timm's ops on Pillow): every op on the same images, the draws, and the
whole training transform. Tolerance: none, every pixel equal (measured so on Pillow 13)."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

import timm.data.auto_augment as A
from noisystudent import lut_ops as L
from noisystudent import randaugment as R
from noisystudent.transforms import RandAugment

REFERENCE = {"AutoContrast": A.auto_contrast, "Equalize": A.equalize, "Invert": A.invert, "Rotate": A.rotate,
             "Posterize": A.posterize, "Solarize": A.solarize, "Color": A.color, "Contrast": A.contrast,
             "Brightness": A.brightness, "Sharpness": A.sharpness, "ShearX": A.shear_x, "ShearY": A.shear_y,
             "TranslateXRel": A.translate_x_rel, "TranslateYRel": A.translate_y_rel, "SolarizeAdd": A.solarize_add}
# the arguments RandAugment draws at M = 9 (both signs), the extremes, and values between
ARGS = {"Rotate": [27.0, -27.0, 13.3, 90.0, 180.0], "Posterize": [3, 1, 8], "Solarize": [230, 0, 256], "SolarizeAdd": [99, 0],
        "Color": [1.72, 0.1], "Contrast": [1.72, 0.3], "Brightness": [1.72, 0.4], "Sharpness": [1.72, 0.1],
        "ShearX": [0.27, -0.27], "ShearY": [0.27, -0.1], "TranslateXRel": [0.27, -0.27], "TranslateYRel": [-0.27, 0.05]}
CASES = [(name, arg, interp) for name in REFERENCE for arg in ARGS.get(name, [None])
         for interp in ([R.BILINEAR, R.BICUBIC] if name in R.GEOMETRIC else [None])]


def images(channels: int, h: int, w: int, n: int = 24) -> np.ndarray:
    """uint8 [n, h, w, channels]: full-range noise, a few grey levels, a flat image, a narrow range."""
    rng = np.random.default_rng(channels * 1000 + h)
    a = rng.integers(0, 256, (n, h, w, channels), dtype=np.uint8)
    a[: n // 3] = a[: n // 3] // 64 * 40 + 20
    a[n // 3] = 77
    a[n // 3 + 1] = a[n // 3 + 1] // 16 + 100
    return a


def pil_reference(a: np.ndarray, fn, arg, interp) -> torch.Tensor:
    out = []
    for im in a:
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
        kw = {"fillcolor": 0, "resample": Image.Resampling(interp)} if interp else {}
        o = np.asarray(fn(pil, *([arg] if arg is not None else []), **kw))
        out.append(o[..., None] if o.ndim == 2 else o)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name,arg,interp", CASES)
@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 12, 20)])
def test_each_op_equals_pillows_pixel_for_pixel(name, arg, interp, shape):
    a = images(*shape)
    got = R.OPS[name](torch.from_numpy(a).permute(0, 3, 1, 2).contiguous(), arg, interp)
    ref = pil_reference(a, REFERENCE[name], arg, interp)
    diff = (got.int() - ref.int()).abs()
    assert got.dtype == torch.uint8 and got.shape == ref.shape
    assert diff.max().item() == 0, f"{name}({arg}, filter {interp}): {(diff > 0).sum().item()} pixels differ, by up to {diff.max().item()}"


def test_autocontrast_and_contrast_over_every_level_range():
    """Images spanning lo..hi for many (lo, hi) pairs: the scale 255 / (hi - lo) must be Python's
    division, not torch's reciprocal-times-scalar (an ulp off: 224 x scale truncated to 254)."""
    pairs = [(lo, hi) for lo in range(0, 256, 3) for hi in range(lo + 1, 256, 2)]
    a = np.zeros((len(pairs), 1, 16, 16), dtype=np.uint8)
    for k, (lo, hi) in enumerate(pairs):
        a[k, 0].flat[:] = np.linspace(lo, hi, 256).round().astype(np.uint8)
    hwc = a.transpose(0, 2, 3, 1)
    for name, arg in [("AutoContrast", None), ("Contrast", 1.72), ("Equalize", None)]:
        got = R.OPS[name](torch.from_numpy(a), arg, None)
        ref = pil_reference(hwc, REFERENCE[name], arg, None)
        assert torch.equal(got, ref), (name, int((got != ref).flatten(1).any(1).sum()), "images differ")


def record_pil_draws(ra: RandAugment, img, monkeypatch) -> list:
    """What the PIL path applied: (op, argument, filter) per layer, from wrapped timm op functions
    and timm's filter draw (`_interpolation`)."""
    seen, filters, originals = [], [], [op.aug_fn for op in ra.ops]
    draw_filter = A._interpolation

    def recording_filter(kwargs):
        filters.append(int(draw_filter(kwargs)))
        return filters[-1]
    monkeypatch.setattr(A, "_interpolation", recording_filter)
    for op, fn in zip(ra.ops, originals):
        def wrapped(im, *args, _fn=fn, _name=op.name, **kw):
            before = len(filters)
            out = _fn(im, *args, **kw)
            seen.append((_name, args[0] if args else None, filters[-1] if len(filters) > before else None))
            return out
        op.aug_fn = wrapped
    try:
        ra(img)
    finally:
        for op, fn in zip(ra.ops, originals):
            op.aug_fn = fn
        monkeypatch.setattr(A, "_interpolation", draw_filter)
    return seen


@pytest.mark.parametrize("m", [9, 27])
def test_draws_are_the_pil_paths_draws_exactly(m, monkeypatch):
    """Same seed: the same ops, arguments and filters, and the RNG left in the same state."""
    img = Image.fromarray(images(1, 16, 16)[0, ..., 0])
    for seed in range(300):
        ra = RandAugment(2, m)
        random.seed(seed)
        pil = record_pil_draws(ra, img, monkeypatch)
        after_pil = random.getstate()
        random.seed(seed)
        drawn = R.plan(RandAugment(2, m))
        assert drawn == pil, (seed, drawn, pil)
        assert random.getstate() == after_pil, seed


def test_whole_transform_batched_equals_pil_per_image():
    """The training transform both ways on seeded keys, as the sampler gives them: equal tensors."""
    from noisystudent.data import ImageDataset
    from noisystudent.runtime import runtime
    from noisystudent.transforms import train_transform

    class Store:  # images by id, as ArrayImages / FileImages give them (PIL images)
        def __init__(self, a):
            self.a = a

        def __getitem__(self, i):
            im = self.a[i]
            return Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)

    rt = runtime("cpu", "fp32", False, 0, False)
    for shape, size in [((1, 8, 8), 16), ((3, 20, 20), 20)]:
        a = images(*shape, n=64)
        cfg = {"input_size": [shape[0], size, size], "mean": [0.5] * shape[0], "std": [0.25] * shape[0],
               "interpolation": "bilinear", "crop_pct": 1.0, "native_size": shape[1]}
        keys = [(i, 1000 + 7 * i) for i in range(64)]
        out = {}
        for batched in (False, True):
            ds = ImageDataset(Store(a), np.arange(64), np.eye(64, dtype=np.float32), train_transform(cfg, 2, 9, batched=batched))
            x, _ = ds.__getitems__(keys)
            out[batched] = rt.input(x)
        assert torch.equal(out[False], out[True]), shape


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 12, 20)])
def test_one_batch_of_different_warps_equals_each_image_alone(shape):
    """`apply` warps every geometric image of a layer in one call, each with its own matrix and
    filter (and rotations by 90/180 degrees transposed): every image as Pillow would do it alone."""
    cases = [(n, a, i) for n, a, i in CASES if n in R.GEOMETRIC] + [("Invert", None, None), ("Posterize", 3, None)]
    a = images(*shape, n=len(cases) * 2)
    plans = [[cases[k % len(cases)], cases[(k * 7 + 3) % len(cases)]] for k in range(len(a))]
    got = R.apply(torch.from_numpy(a).permute(0, 3, 1, 2).contiguous(), plans)
    for k, plan in enumerate(plans):
        ref = a[k : k + 1]
        for name, arg, interp in plan:
            ref = pil_reference(ref, REFERENCE[name], arg, interp).permute(0, 2, 3, 1).numpy()
        assert torch.equal(got[k], torch.from_numpy(ref[0]).permute(2, 0, 1)), (k, plan)


def test_batches_finished_together_equal_each_alone():
    """The labeled and pseudo-labeled batches of a step are augmented in one pass (Runtime.inputs):
    the same tensors as each finished alone; batches of different shapes are finished apart."""
    from noisystudent.runtime import runtime
    from noisystudent.transforms import AugmentBatch

    ra = RandAugment(2, 9)

    def batch(n, shape, first_seed):
        plans = []
        for s in range(first_seed, first_seed + n):
            random.seed(s)
            plans.append(R.plan(ra))
        a = images(*shape, n=n)
        return AugmentBatch(torch.from_numpy(a).permute(0, 3, 1, 2).contiguous(), plans, [0.5] * shape[0], [0.25] * shape[0])

    rt = runtime("cpu", "fp32", False, 0, False)
    for shapes in ([(1, 16, 16), (1, 16, 16)], [(1, 16, 16), (3, 12, 20)]):
        a, b = batch(8, shapes[0], 0), batch(24, shapes[1], 100)
        x_a, none, x_b = rt.inputs(a, None, b)
        assert none is None
        assert torch.equal(x_a, a.finish(rt.device)) and torch.equal(x_b, b.finish(rt.device))


def test_op_frequencies_are_uniform_and_every_op_is_applied():
    """The official rule: each layer one op of the 15, uniformly, always applied (no skip)."""
    ra = RandAugment(2, 9)
    counts = {name: 0 for name in R.OPS}
    for seed in range(3000):
        random.seed(seed)
        drawn = R.plan(ra)
        assert len(drawn) == 2
        for name, _, _ in drawn:
            counts[name] += 1
    expected = 6000 / 15
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 36.1, counts  # 14 degrees of freedom, p = 0.001


def test_bad_batch_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        R.apply(torch.zeros(2, 1, 4, 4), [[("Invert", None, None)]] * 2)


LUT_CASES = [(name, arg) for name in L.OPS for arg in ARGS.get(name, [None])]


@pytest.mark.parametrize("name,arg", LUT_CASES)
@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 12, 20)])
def test_numpy_lookup_table_ops_equal_timms_pixel_for_pixel(name, arg, shape):
    """The PIL path's fast lookup-table ops (lut_ops.py) against timm's own, image by image."""
    a = images(*shape)
    got = pil_reference(a, L.OPS[name], arg, None)
    ref = pil_reference(a, REFERENCE[name], arg, None)
    assert torch.equal(got, ref), f"{name}({arg}): {(got != ref).sum().item()} pixels differ"


def test_numpy_autocontrast_and_equalize_over_every_level_range():
    pairs = [(lo, hi) for lo in range(0, 256, 3) for hi in range(lo + 1, 256, 2)]
    a = np.zeros((len(pairs), 16, 16, 1), dtype=np.uint8)
    for k, (lo, hi) in enumerate(pairs):
        a[k, ..., 0].flat[:] = np.linspace(lo, hi, 256).round().astype(np.uint8)
    for name in ("AutoContrast", "Equalize"):
        got, ref = pil_reference(a, L.OPS[name], None, None), pil_reference(a, REFERENCE[name], None, None)
        assert torch.equal(got, ref), (name, int((got != ref).flatten(1).any(1).sum()), "images differ")


def test_pil_path_uses_the_numpy_tables_and_other_modes_fall_back_to_timm():
    ra = RandAugment(2, 9)
    assert {op.name for op in ra.ops if op.aug_fn is L.OPS.get(op.name)} == set(L.OPS)
    rgba = Image.fromarray(images(3, 8, 8)[3]).convert("RGBA")  # not a mode prepare writes: timm's op, whatever it does

    def outcome(fn, *args):
        try:
            return fn(rgba, *args).tobytes()
        except Exception as e:  # noqa: BLE001  (PIL refuses some ops on RGBA: the same refusal)
            return type(e), str(e)
    for name, arg in LUT_CASES:
        args = [arg] if arg is not None else []
        assert outcome(L.OPS[name], *args) == outcome(REFERENCE[name], *args), name
    # past 64x64 pixels PIL's C loops win: timm's ops, the same pixels
    assert L._fast(Image.new("L", (64, 64))) and not L._fast(Image.new("L", (65, 64))) and not L._fast(rgba)
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 90, 3), dtype=np.uint8))
    for name, arg in LUT_CASES:
        args = [arg] if arg is not None else []
        assert L.OPS[name](big, *args).tobytes() == REFERENCE[name](big, *args).tobytes(), name
