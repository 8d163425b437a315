import numpy as np
import pytest
import torch
from PIL import Image

from noisystudent.transforms import eval_transform, randaugment_config, train_transform


def test_randaugment_magnitude_above_10_is_not_clipped():
    assert randaugment_config(2, 27) == "rand-m27-n2-mmax27"
    assert randaugment_config(2, 9) == "rand-m9-n2-mmax10"
    assert randaugment_config(0, 9) == "" and randaugment_config(2, 0) == ""
    # timm parses mmax and keeps the magnitude unclipped
    tf = train_transform(1, "rand-m27-n2-mmax27").transforms[0]
    assert all(op.magnitude == 27 and op.magnitude_max == 27 for op in tf.ops)


@pytest.mark.parametrize("mode, chans", [("L", 1), ("RGB", 3)])
def test_train_transform_noises_and_eval_does_not(mode, chans):
    rng = np.random.default_rng(0)
    shape = (16, 16) if mode == "L" else (16, 16, 3)
    img = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode)
    ev = eval_transform(chans)
    assert torch.equal(ev(img), ev(img)) and ev(img).shape == (chans, 16, 16)
    torch.manual_seed(0)
    import random

    random.seed(0)
    tr = train_transform(chans, randaugment_config(2, 15))
    outs = [tr(img) for _ in range(8)]
    assert all(o.shape == (chans, 16, 16) for o in outs)
    assert any(not torch.equal(o, ev(img)) for o in outs)
