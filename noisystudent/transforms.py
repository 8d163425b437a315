"""Input transforms. Input noise lives here and only here (RandAugment); labeling and
evaluation always use `eval_transform`."""
from __future__ import annotations

from timm.data.auto_augment import rand_augment_transform
from torchvision import transforms as T

MEAN, STD = 0.5, 0.5


def randaugment_config(n: int, m: float) -> str:
    """timm config string. timm clips magnitude at `mmax` (10 by default); the paper uses
    M up to 27 unclipped, so mmax is raised to M when M > 10."""
    if n == 0 or m == 0:
        return ""
    mmax = max(10.0, m)
    return f"rand-m{m:g}-n{n}-mmax{mmax:g}"


def _to_tensor(in_chans: int) -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize([MEAN] * in_chans, [STD] * in_chans)])


def eval_transform(in_chans: int) -> T.Compose:
    return _to_tensor(in_chans)


def train_transform(in_chans: int, randaugment: str) -> T.Compose:
    if not randaugment:
        return _to_tensor(in_chans)
    # fill with black (an int works for both 'L' and 'RGB' PIL images); translation relative
    # to image size, since timm's absolute default (250 px) assumes ImageNet-sized images
    hparams = {"img_mean": 0, "translate_pct": 0.3}
    return T.Compose([rand_augment_transform(randaugment, hparams), _to_tensor(in_chans)])
