"""Model factory: any timm architecture by name, plus small ResNets for tiny images.

timm's own ResNets downsample by 4 in the stem, which leaves nothing of a 16x16 digit, so we
register a family of small pre-activation-free ResNets (`ns_resnet_*`) in timm's registry:
`timm.create_model("ns_resnet_s", num_classes=10, in_chans=1, drop_rate=0.5,
drop_path_rate=0.2)` then works exactly like any other timm model. Model noise lives here
and only here: dropout before the classifier (`drop_rate`) and stochastic depth
(`drop_path_rate`, linearly increasing from the stem to the last block, as in the paper).
"""
from __future__ import annotations

import functools

import timm
import torch
from timm.layers import DropPath
from timm.models import build_model_with_cfg, register_model
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, drop_path: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(self.shortcut(x) + self.drop_path(out))


class SmallResNet(nn.Module):
    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        depths: tuple[int, ...] = (1, 1, 1),
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        **_: object,  # timm passes pretrained_cfg and friends
    ):
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans  # read by timm (export, data config)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        n_blocks, idx, blocks, cin = sum(depths), 0, [], widths[0]
        for stage, (w, d) in enumerate(zip(widths, depths)):
            for j in range(d):
                idx += 1
                # survival probability decays linearly from 1 at the stem to 1 - rate at the end
                blocks.append(BasicBlock(cin, w, 2 if (stage > 0 and j == 0) else 1, drop_path_rate * idx / n_blocks))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# timm reads a module's `default_cfgs` when registering: this gives the small ResNets a data
# config (inputs in [-1, 1], native size, no crop) like any timm model has
_CFG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 1.0,
        "interpolation": "bilinear", "num_classes": 10,
        # which layers timm adapts when loading weights into another channel / class count
        "first_conv": "stem.0", "classifier": "fc"}
default_cfgs = {f"ns_resnet_{k}": dict(_CFG) for k in ("xs", "s", "m", "l")}


def _build(name: str, pretrained: bool, widths: tuple[int, ...], depths: tuple[int, ...], **kw) -> SmallResNet:
    # timm's builder, as its own models use: the model then carries its pretrained_cfg, so timm can
    # export it (save_for_hf) and load weights into it (pretrained=True from a local file or a
    # `local-dir:` export); the construction itself is SmallResNet's, the same draws as a direct call
    return build_model_with_cfg(SmallResNet, name, pretrained, widths=widths, depths=depths, **kw)


@register_model
def ns_resnet_xs(pretrained: bool = False, **kw) -> SmallResNet:
    return _build("ns_resnet_xs", pretrained, (8, 16, 32), (1, 1, 1), **kw)


@register_model
def ns_resnet_s(pretrained: bool = False, **kw) -> SmallResNet:
    return _build("ns_resnet_s", pretrained, (16, 32, 64), (1, 1, 1), **kw)


@register_model
def ns_resnet_m(pretrained: bool = False, **kw) -> SmallResNet:
    return _build("ns_resnet_m", pretrained, (24, 48, 96), (1, 2, 2), **kw)


@register_model
def ns_resnet_l(pretrained: bool = False, **kw) -> SmallResNet:
    return _build("ns_resnet_l", pretrained, (32, 64, 128), (2, 2, 2), **kw)


def check_arch(name: str, key: str) -> None:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"{key}: unknown timm model {name!r}{hint}")


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def is_weights_file(pretrained: str) -> bool:
    return "/" in pretrained or pretrained.endswith(WEIGHT_SUFFIXES)


def check_pretrained(pretrained: str | None, arch: str, key: str) -> None:
    """A weights file must be a relative path under models/pretrained/ (what the training stages
    depend on); anything else must be a pretrained tag timm knows for `arch`."""
    from pathlib import PurePosixPath

    from .params import PRETRAINED_DIR

    if pretrained is None:
        return
    if is_weights_file(pretrained):
        p = PurePosixPath(pretrained)
        if p.is_absolute() or ".." in p.parts or not str(p).startswith(PRETRAINED_DIR + "/"):
            raise ValueError(f"{key}: {pretrained!r}: a weights file must be under {PRETRAINED_DIR}/ (the folder the "
                             "training stages depend on, so that changing the file re-runs them), as a relative path")
        return
    if not timm.list_pretrained(f"{arch}.{pretrained}"):
        known = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")][:8]
        raise ValueError(f"{key}: {pretrained!r} is not a pretrained tag timm knows for {arch}"
                         + (f" (it knows: {', '.join(known)})" if known else f" ({arch} has no pretrained weights in timm)"))


def create_model(arch: str, num_classes: int, in_chans: int, dropout: float = 0.0, drop_path: float = 0.0,
                 pretrained: str | None = None) -> nn.Module:
    """`pretrained`: None (random initialisation; nothing is downloaded), a weights file, or a
    timm pretrained tag of `arch` (fetched from the Hugging Face hub: the user asked for it).
    Pretrained weights keep everything but the classifier when the class count differs (re-
    initialised) and adapt the first convolution to `in_chans`, as timm does."""
    kw = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=dropout, drop_path_rate=drop_path)
    if pretrained is None:
        return timm.create_model(arch, pretrained=False, **kw)
    if is_weights_file(pretrained):
        # timm drops the classifier when the class count differs from the one its config gives
        # for the weights: a local file's is read from the file itself
        cfg = timm.models.get_pretrained_cfg(arch)
        head = f"{cfg.classifier}.weight" if cfg is not None and isinstance(cfg.classifier, str) else None
        state = timm.models.load_state_dict(pretrained, weights_only=True)
        overlay = {"file": pretrained, **({"num_classes": int(state[head].shape[0])} if head in state else {})}
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kw)
    return timm.create_model(f"{arch}.{pretrained}", pretrained=True, **kw)


@functools.lru_cache(maxsize=None)
def count_params(arch: str) -> int:
    """Parameters of `arch` (10 classes, RGB), built on the meta device: no memory, no time."""
    with torch.device("meta"):
        return num_params(timm.create_model(arch, pretrained=False, num_classes=10, in_chans=3))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
