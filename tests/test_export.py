"""Exports of a trained model load back and predict what the model predicts."""
import json

import pytest
import torch
from typer.testing import CliRunner

from noisystudent.__main__ import cli
from noisystudent.checkpoint import load_model, save_model
from noisystudent.models import create_model
from noisystudent.transforms import data_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    m = create_model("ns_resnet_xs", 3, 1).eval()
    with torch.no_grad():  # BatchNorm statistics away from their initial values: a non-trivial model
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5), mod.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    save_model(path, m, m, {"arch": "ns_resnet_xs", "num_classes": 3, "in_chans": 1, "class_names": ["cat", "dog", "eel"],
                            "name": "s1", "data_config": data_config("ns_resnet_xs", 1, 12, 12)})
    return path


def test_timm_and_onnx_exports_agree_with_pytorch(checkpoint, tmp_path):
    import onnxruntime as ort
    import timm

    out = tmp_path / "export"
    r = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoint), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(f.name for f in out.iterdir()) == ["config.json", "model.onnx", "model.safetensors"]
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert {f.stat().st_mode & 0o777 for f in out.iterdir()} == {0o666 & ~umask}  # readable as the umask allows
    model, _ = load_model(checkpoint)
    x = torch.randn(5, 1, 12, 12, generator=torch.Generator().manual_seed(7))  # another batch size than the export's
    with torch.inference_mode():
        want = model(x)
        got_timm = timm.create_model(f"local-dir:{out}", pretrained=True).eval()(x)
    assert (got_timm - want).abs().max() < 1e-6  # the same weights, the same code
    s = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got_onnx = torch.from_numpy(s.run(None, {"pixels": x.numpy()})[0])
    assert (got_onnx - want).abs().max() < 1e-4, (got_onnx - want).abs().max()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "ns_resnet_xs" and cfg["label_names"] == ["cat", "dog", "eel"]
    assert cfg["pretrained_cfg"]["input_size"] == [1, 12, 12] and "max |logit difference|" in r.output


def test_export_refuses_an_unknown_format_and_keeps_the_folder(checkpoint, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("earlier export")
    r = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--format", "tflite"])
    assert r.exit_code == 1 and "--format tflite" in r.output and (out / "keep.txt").exists()
