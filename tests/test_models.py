import pytest
import torch

from noisystudent.models import SmallResNet, check_arch, create_model, num_params


@pytest.mark.parametrize("arch", ["ns_resnet_xs", "ns_resnet_s", "ns_resnet_m", "ns_resnet_l", "test_efficientnet"])
def test_any_timm_arch_by_name(arch):
    m = create_model(arch, num_classes=10, in_chans=1, dropout=0.5, drop_path=0.2)
    out = m.eval()(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 10)


def test_family_grows():
    sizes = [num_params(create_model(a, 10, 1)) for a in ("ns_resnet_xs", "ns_resnet_s", "ns_resnet_m", "ns_resnet_l")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_stochastic_depth_decays_linearly_and_dropout_before_classifier():
    m = SmallResNet((8, 8, 8), (2, 1, 1), num_classes=3, in_chans=1, drop_rate=0.5, drop_path_rate=0.2)
    rates = [b.drop_path.drop_prob for b in m.blocks]
    assert rates == pytest.approx([0.05, 0.1, 0.15, 0.2])  # survival 0.8 at the last block
    assert m.drop.p == 0.5


def test_unknown_arch_message():
    with pytest.raises(ValueError, match="student.arch: unknown timm model 'resnet_nope'"):
        check_arch("resnet_nope", "student.arch")
