from pathlib import Path

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


def test_pretrained_weights_file_keeps_the_features_and_reinitialises_the_classifier(tmp_path):
    """A weights file of the same architecture for 5 RGB classes, started from for 10 grayscale
    classes: every layer but the first conv (adapted to 1 channel) and the classifier (new, 10
    outputs) is the file's; the first conv is timm's channel sum of the file's."""
    import torch
    from safetensors.torch import save_file

    from noisystudent.models import create_model

    torch.manual_seed(1)
    src = create_model("ns_resnet_s", 5, 3)
    weights = tmp_path / "models/pretrained/w.safetensors"
    weights.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(weights))
    torch.manual_seed(2)
    m = create_model("ns_resnet_s", 10, 1, pretrained=str(weights))
    new, old = m.state_dict(), src.state_dict()
    assert new["fc.weight"].shape == (10, 64) and not torch.equal(new["fc.weight"][:5], old["fc.weight"])
    assert torch.allclose(new["stem.0.weight"], old["stem.0.weight"].sum(1, keepdim=True))
    same = [k for k in old if not k.startswith(("fc.", "stem.0."))]
    assert same and all(torch.equal(new[k], old[k]) for k in same)
    scratch = create_model("ns_resnet_s", 10, 1)
    assert not torch.equal(scratch.state_dict()["blocks.0.conv1.weight"], old["blocks.0.conv1.weight"])


def test_a_teacher_trained_from_pretrained_weights(tmp_path, monkeypatch):
    """teacher.pretrained end to end in the training stage: the teacher starts from the file, its
    checkpoint records it, and the file is part of what a resume state must match."""
    import torch
    from safetensors.torch import save_file

    from conftest import tiny_raw
    from noisystudent.checkpoint import load_checkpoint
    from noisystudent.models import create_model
    from noisystudent.params import Params
    from stages import prepare, train

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(1)
    src = create_model("ns_resnet_xs", 10, 1)
    Path("models/pretrained").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, "models/pretrained/t.safetensors")
    p = Params.model_validate(tiny_raw(teacher__pretrained="models/pretrained/t.safetensors", teacher__steps=1,
                                       train__lr=1e-9, train__ema_decay=0.0))
    prepare.run(p, tmp_path / "data")
    train.run(p, "teacher", tmp_path / "data", tmp_path / "t.pt", tmp_path / "t.json")
    ck = load_checkpoint(tmp_path / "t.pt")
    assert ck["recipe"]["pretrained"] == "models/pretrained/t.safetensors"
    # one step at lr 1e-9: the convolutions are still the file's (BatchNorm statistics moved)
    assert torch.allclose(ck["state_dict"]["blocks.0.conv1.weight"], src.state_dict()["blocks.0.conv1.weight"], atol=1e-6)
