import numpy as np
import pytest
import torch
from PIL import Image

from noisystudent.transforms import RandAugment, data_config, eval_transform, train_transform


def test_randaugment_magnitude_above_10_is_not_clipped_nor_rounded():
    for m in (27, 9.5):
        ra = train_transform(data_config("ns_resnet_s", 1, 16, 16), 2, m).pil.transforms[0]
        assert all(op.magnitude == m and op.magnitude_max == max(10, m) for op in ra.ops)
    assert train_transform(data_config("ns_resnet_s", 1, 16, 16), 0, 9).pil is None  # N = 0: no RandAugment


@pytest.mark.parametrize("mode, chans", [("L", 1), ("RGB", 3)])
def test_train_transform_noises_and_eval_does_not(mode, chans):
    rng = np.random.default_rng(0)
    shape = (16, 16) if mode == "L" else (16, 16, 3)
    img = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode)
    cfg = data_config("ns_resnet_s", chans, 16, 16)
    ev = eval_transform(cfg)
    assert torch.equal(ev(img), ev(img)) and ev(img).shape == (chans, 16, 16)
    torch.manual_seed(0)
    import random

    random.seed(0)
    tr = train_transform(cfg, 2, 15)
    outs = [tr(img) for _ in range(8)]
    assert all(o.shape == (chans, 16, 16) for o in outs)
    assert any(not torch.equal(o, ev(img)) for o in outs)


def test_data_config_follows_model_and_data():
    # small ResNets: [-1, 1] inputs; array data keeps its own size (no resampling at all)
    cfg = data_config("ns_resnet_s", 1, None, 32)
    assert cfg["input_size"] == [1, 32, 32] and cfg["mean"] == [0.5] and cfg["std"] == [0.5]
    assert eval_transform(cfg).pil is None  # no PIL op at all: batches go straight from the array
    # a timm ImageNet model on an image folder: its own input size, mean/std, resize + centre crop
    cfg = data_config("resnet18", 3, None, None)
    assert cfg["input_size"] == [3, 224, 224] and cfg["mean"] == pytest.approx([0.485, 0.456, 0.406])
    big = Image.new("RGB", (300, 200))
    assert eval_transform(cfg)(big).shape == (3, 224, 224)
    # grayscale: the three-channel statistics averaged to one
    g = data_config("resnet18", 1, 64, None)
    assert g["input_size"] == [1, 64, 64] and g["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert eval_transform(g)(Image.new("L", (90, 70))).shape == (1, 64, 64)
    # an explicit image_size resizes array data too
    assert eval_transform(data_config("ns_resnet_s", 3, 48, 32))(Image.new("RGB", (32, 32))).shape == (3, 48, 48)


@pytest.mark.parametrize("mode, chans, size, native", [("L", 1, 16, 16), ("RGB", 3, 16, 16), ("RGB", 3, 24, 16), ("L", 1, 12, 16)])
def test_batched_preprocessing_equals_torchvision_per_image(mode, chans, size, native):
    """Preprocess.batch is the arithmetic of ToTensor + Normalize, one batch at a time; the
    array fast path (no PIL at all) and the PIL path give the same tensors."""
    from torchvision import transforms as T

    rng = np.random.default_rng(1)
    shape = (5, native, native) if mode == "L" else (5, native, native, 3)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    cfg = data_config("ns_resnet_s", chans, size, native)
    pre = eval_transform(cfg)
    ref = T.Compose(([] if pre.pil is None else list(pre.pil.transforms)) + [T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])])
    imgs = [Image.fromarray(a, mode) for a in arr]
    expected = torch.stack([ref(im) for im in imgs])
    assert torch.equal(pre.batch(np.stack([pre.pixels(im) for im in imgs])), expected)
    assert torch.equal(torch.stack([pre(im) for im in imgs]), expected)
    if pre.pil is None:
        assert torch.equal(pre.batch(arr), expected)


def test_randaugment_applies_exactly_n_official_ops_drawn_uniformly_from_python_random():
    """The official application: every image gets exactly N ops (timm's default applies each
    with probability 0.5), drawn uniformly with replacement from the official 15, at M."""
    import random
    from collections import Counter

    pre = train_transform(data_config("ns_resnet_s", 1, 16, 16), 2, 9)
    ra = pre.pil.transforms[0]
    assert ra.num_layers == 2 and [op.name for op in ra.ops] == list(RandAugment.OPS) and len(ra.ops) == 15
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8), "L")
    random.seed(7)
    a = [np.asarray(ra(img)) for _ in range(20)]
    random.seed(7)  # Python's RNG alone decides: the same seed, the same augmentations
    b = [np.asarray(ra(img)) for _ in range(20)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and any(not np.array_equal(a[0], x) for x in a)
    applied, per_image = Counter(), []
    for op in ra.ops:  # record each op that really transforms the image (past any probability check)
        op.aug_fn = (lambda fn, name: lambda im, *args, **kw: applied.update([name]) or fn(im, *args, **kw))(op.aug_fn, op.name)
    for _ in range(3000):
        before = sum(applied.values())
        ra(img)
        per_image.append(sum(applied.values()) - before)
    assert set(per_image) == {2}  # never 0 or 1 op
    # 6,000 uniform draws over 15 ops: 400 each, sd ~19; 5 sd either side
    assert len(applied) == 15 and all(300 < k < 500 for k in applied.values()), applied
