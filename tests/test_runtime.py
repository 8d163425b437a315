import pytest
import torch

from noisystudent.io import InputError
from noisystudent.runtime import Runtime, amp_dtype, pick_device, relaunch


def test_cuda_asked_for_without_a_gpu_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="train.device: cuda, but torch .* sees no CUDA device"):
        pick_device("cuda")
    assert pick_device("auto") == torch.device("cpu")


def test_precision_names_map_to_autocast_dtypes():
    cpu = torch.device("cpu")
    assert amp_dtype("fp32", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16 and amp_dtype("fp16", cpu) is torch.float16
    has_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert amp_dtype("mixed", cpu) is (torch.bfloat16 if has_bf16 else torch.float16)
    with pytest.raises(ValueError, match="precision 'fp8'"):
        amp_dtype("fp8", cpu)


def test_runtime_describes_what_changes_numbers():
    rt = Runtime(torch.device("cpu"), torch.bfloat16, channels_last=True, world=2)
    assert rt.describe() == {"device": "cpu", "precision": "bfloat16", "channels_last": True, "compile": False, "world_size": 2}
    assert Runtime().main and not Runtime(rank=1, world=2).main


def test_relaunch_is_a_no_op_for_one_process_or_inside_torchrun(monkeypatch):
    calls = []
    monkeypatch.setattr("os.execv", lambda *a: calls.append(a))
    relaunch(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    relaunch(2)  # already under torchrun: never nested
    assert calls == []
    monkeypatch.delenv("WORLD_SIZE")
    relaunch(3)
    (exe, cmd), = calls
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]


def test_inference_runtime_under_torchrun_joins_no_group(monkeypatch):
    """Labeling and evaluation ranks work apart: no process group, a world of one."""
    from noisystudent.runtime import runtime

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    rt = runtime("cpu", "bf16", group=False)
    assert (rt.rank, rt.world, rt.amp) == (0, 1, torch.bfloat16) and rt.main
    assert not torch.distributed.is_initialized()
