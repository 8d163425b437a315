"""Every bad params value in docs/bad_inputs.md, tried here: each stops with one line naming
the key (and the value), before anything is written. The docs table is checked against this
list, so neither can drift from the other."""
import re
from pathlib import Path

import pytest
import yaml

from noisystudent.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]

# (overrides on the repository's params.yaml, dotted key -> value; what the message must say)
CASES = [
    ({"noise.dropout": 1.5}, "noise.dropout: Input should be less than or equal to 1 (got 1.5)"),
    ({"noise.drop_path": -0.1}, "noise.drop_path: Input should be greater than or equal to 0 (got -0.1)"),
    ({"noise.droput": 0.1}, "noise.droput: unknown key"),
    ({"nosie": {}}, "nosie: unknown key"),
    ({"noise.randaugment_m": 31}, "noise.randaugment_m: Input should be less than or equal to 30 (got 31)"),
    ({"teacher.arch": "resnet_does_not_exist"}, "teacher.arch: unknown timm model 'resnet_does_not_exist'"),
    ({"iterations.s2.arch": "nope"}, "iterations.s2.arch: unknown timm model 'nope'"),
    ({"iterations.s2.teacher": "s9"}, "s2.teacher='s9' must be 'teacher' or an earlier iteration"),
    ({"iterations.s1.arch": "ns_resnet_xs"}, "iterations.s1.arch: ns_resnet_xs (19,954 parameters) is smaller than its teacher ns_resnet_s"),
    ({"iterations": {}, "eval.models": ["teacher"]}, "iterations: at least one iteration is needed"),
    ({"iterations": {"teacher": {"teacher": "teacher", "arch": "ns_resnet_s"}}, "eval.models": ["teacher", "teacher"]}, "'teacher' is reserved"),
    ({"iterations": {"s/1": {"teacher": "teacher", "arch": "ns_resnet_s"}}, "eval.models": ["teacher", "s/1"]}, "an iteration name becomes a file name"),
    ({"iterations.baseline": {"teacher": "s3", "arch": "ns_resnet_m"}}, "'baseline' is reserved"),
    ({"eval.models": ["teacher", "s1"]}, "eval.models must list the teacher, every iteration in order, the baseline and the oracle"),
    ({"baseline.arch": "nope"}, "baseline.arch: unknown timm model 'nope'"),
    ({"teacher.pretrained": "/etc/weights.pt"}, "teacher.pretrained: '/etc/weights.pt': a weights file must be under models/pretrained/"),
    ({"teacher.pretrained": "in1k"}, "teacher.pretrained: 'in1k' is not a pretrained tag timm knows for ns_resnet_s"),
    ({"student.pretrained": {"s9": "models/pretrained/w.safetensors"}}, "student.pretrained.s9: no such iteration (one of s1, s2, s3)"),
    ({"student.init": "teacher"}, "student.init: teacher needs each student in its teacher's architecture (iterations.s2.arch ns_resnet_m, its teacher's ns_resnet_s)"),
    ({"select.unlabeled_fraction": 0}, "select.unlabeled_fraction: Input should be greater than 0 (got 0)"),
    ({"eval.gallery.images": 0}, "eval.gallery.images: Input should be greater than or equal to 1 (got 0)"),
    ({"train.batch_size": 0}, "train.batch_size: Input should be greater than 0 (got 0)"),
    ({"train.lr": "fast"}, "train.lr: Input should be a valid number"),
    ({"train.momentum": 1.2}, "train.momentum: Input should be less than or equal to 1 (got 1.2)"),
    ({"train.label_smoothing": 1.0}, "train.label_smoothing: Input should be less than 1 (got 1.0)"),
    ({"speed.checkpoint_every": -1}, "speed.checkpoint_every: Input should be greater than or equal to 0 (got -1)"),
    ({"train.precision": "fp8"}, "train.precision: Input should be 'fp32', 'bf16', 'fp16' or 'mixed' (got 'fp8')"),
    ({"train.device": "tpu"}, "train.device: Input should be 'auto', 'cpu' or 'cuda' (got 'tpu')"),
    ({"train.nproc": 3}, "train.batch_size: 32 does not split over nproc=3 processes (make it a multiple)"),
    ({"train.ema_decay": 1.0}, "train.ema_decay: Input should be less than 1 (got 1.0)"),
    ({"speed.train_workers": -1}, "speed.train_workers: Input should be greater than or equal to 0 (got -1)"),
    ({"pseudo.precision": "half"}, "pseudo.precision: Input should be 'fp32', 'bf16', 'fp16' or 'mixed' (got 'half')"),
    ({"student.targets": "fuzzy"}, "student.targets: Input should be 'soft' or 'hard' (got 'fuzzy')"),
    ({"student.batch_ratio": 0}, "student.batch_ratio: Input should be greater than 0 (got 0)"),
    ({"select.threshold": -0.1}, "select.threshold: Input should be greater than or equal to 0 (got -0.1)"),
    ({"select.per_class": -5}, "select.per_class: Input should be greater than 0 (got -5)"),
    ({"pseudo.temperature": 0}, "pseudo.temperature: Input should be greater than 0 (got 0)"),
    ({"pseudo.num_shards": 0}, "pseudo.num_shards: Input should be greater than 0 (got 0)"),
    ({"data.name": "imagenet"}, "data.name: Input should be 'digits', 'cifar10', 'svhn', 'stl10' or 'imagefolder' (got 'imagenet')"),
    ({"data.name": "cifar10", "data.root": "no/such/folder"}, "data.root: folder 'no/such/folder' not found"),
    ({"data.name": "imagefolder", "data.download": True}, "data.download: an image folder cannot be downloaded"),
    ({"data.channels": 2}, "data.channels: Input should be 1 or 3 (got 2)"),
    ({"data.val_per_class": 0}, "data.val_per_class: Input should be greater than 0 (got 0)"),
    ({"data.max_pixels": 0}, "data.max_pixels: Input should be greater than 0 (got 0)"),
    ({"eval.robustness.corruptions": ["fire"]}, "eval.robustness.corruptions.0: Input should be 'gaussian_noise', 'shot_noise'"),
    ({"eval.robustness.severities": [0, 6]}, "eval.robustness.severities.0: Input should be greater than or equal to 1 (got 0)"),
    ({"eval.robustness.severities": []}, "eval.robustness.severities: List should have at least 1 item"),
    ({"eval.robustness.fgsm_epsilon": 3}, "eval.robustness.fgsm_epsilon: 3 must be one of epsilons"),
    ({"mlflow.enabled": "maybe"}, "mlflow.enabled: Input should be a valid boolean"),
    ({"mlflow.experiment": ""}, "mlflow.experiment: String should have at least 1 character"),
    # no infinities, no NaN, no seed or size beyond what the arrays and RNGs take
    ({"train.lr": float("inf")}, "train.lr: Input should be a finite number (got inf)"),
    ({"train.weight_decay": float("inf")}, "train.weight_decay: Input should be a finite number (got inf)"),
    ({"pseudo.temperature": float("nan")}, "pseudo.temperature: Input should be a finite number (got nan)"),
    ({"train.seed": 10**30}, "train.seed: Input should be less than or equal to 2147483647"),
    ({"data.seed": -1}, "data.seed: Input should be greater than or equal to 0 (got -1)"),
    ({"train.batch_size": 2**40}, "train.batch_size: Input should be less than or equal to 2147483647"),
]


def case_id(overrides: dict) -> str:
    return ", ".join(f"{k}: {yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}" for k, v in overrides.items())


def apply(raw: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        node, *path = raw, *key.split(".")
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return raw


@pytest.mark.parametrize("overrides, message", CASES, ids=[case_id(o) for o, _ in CASES])
def test_bad_param_is_one_line_naming_key_and_value(tmp_path, overrides, message):
    raw = apply(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as e:
        load_params(tmp_path / "params.yaml")
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def _doc_tables() -> tuple[list[str], list[str]]:
    """The params rows (their `change` cell) and the rows of the files-and-failures table."""
    doc = (ROOT / "docs/bad_inputs.md").read_text()
    params_part, files_part = doc.split("## Bad files")
    params_rows = re.findall(r"^\| `([^`]+)` \|", params_part, flags=re.M)
    file_rows = [r for r in re.findall(r"^\|.*\|$", files_part, flags=re.M) if not r.startswith(("| input", "|---"))]
    return params_rows, file_rows


def test_docs_params_table_is_exactly_the_tested_cases():
    """No untested row in the docs, no tested case missing from them."""
    rows, _ = _doc_tables()
    cases = [case_id(o) for o, _ in CASES]
    assert sorted(rows) == sorted(cases), {"not tested": sorted(set(rows) - set(cases)), "not in docs": sorted(set(cases) - set(rows))}


def test_docs_file_rows_name_tests_that_exist():
    """Every row of the files-and-failures table names at least one test, and each named test
    file (and function, where named) exists."""
    _, rows = _doc_tables()
    assert rows
    for row in rows:
        refs = re.findall(r"`(test_\w+\.py)(?:::(\w+)(?:\[([\w-]+)\])?)?", row.rsplit("|", 2)[-2])
        assert refs, f"row names no test: {row[:80]}"
        for file, func, case in refs:
            path = ROOT / "tests" / file
            assert path.exists(), f"{file} (named in docs/bad_inputs.md) does not exist"
            assert not func or re.search(rf"^def {func}\(", path.read_text(), flags=re.M), f"{file}::{func} does not exist"
            assert not case or f'"{case}"' in path.read_text(), f"{file}::{func}[{case}]: no such case id"


def test_readme_counts_match_the_docs():
    params_rows, file_rows = _doc_tables()
    m = re.search(r"(\d+) bad params values and (\d+) bad files, folders, checkpoints and failures", (ROOT / "README.md").read_text())
    assert m and (int(m[1]), int(m[2])) == (len(params_rows), len(file_rows))


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "'nope' is not a model of this pipeline: teacher, baseline, oracle or one of s1, s2"),
    (["--model", "s1"], "student s1 needs --selected (the pseudo-labeled set)"),
])
def test_train_command_refuses_a_wrong_model_in_one_line(tmp_path, args, message):
    from typer.testing import CliRunner

    from conftest import tiny_raw
    from noisystudent.params import Params
    from stages import prepare, train

    raw = tiny_raw()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    prepare.run(Params.model_validate(raw), tmp_path / "data")
    out = tmp_path / "m.pt"
    r = CliRunner().invoke(train.cli, [*args, "--data", str(tmp_path / "data"), "--out", str(out), "--metrics",
                                       str(tmp_path / "m.json"), "--params", str(tmp_path / "params.yaml")])
    assert r.exit_code == 1 and f"error: {message}" in r.output and "Traceback" not in r.output, r.output
    assert not out.exists() and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("field, value, message", [
    ("arch", "local-dir:/etc", "arch 'local-dir:/etc' is not a registered timm architecture name"),
    ("arch", "hf-hub:timm/resnet18.a1_in1k", "arch 'hf-hub:timm/resnet18.a1_in1k' is not a registered timm architecture name"),
    ("num_classes", 10**9, "num_classes 1000000000 is not an integer from 2 to 1,000,000"),
    ("in_chans", 7, "in_chans 7 is not 1 or 3"),
    ("class_names", ["a", "b"], "class_names is not a list of 10 names"),
])
def test_checkpoint_fields_are_checked_before_timm_sees_them(tmp_path, field, value, message):
    import torch

    from noisystudent.checkpoint import CheckpointError, load_model

    ckpt = {"arch": "ns_resnet_xs", "num_classes": 10, "in_chans": 1, "state_dict": {}, field: value}
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_model(tmp_path / "m.pt")


def test_torch_requirement_excludes_the_weights_only_bypass():
    """The checkpoint defence is torch.load(weights_only=True), bypassable before torch 2.6
    (CVE-2025-32434): the project must not admit such a torch, nor block patch releases."""
    import tomllib

    import torch
    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(Requirement(d) for d in deps if Requirement(d).name == "torch").specifier
    assert "2.5.1" not in spec and "2.14.1" in spec and "2.14.2" in spec, spec
    assert Version(torch.__version__.split("+")[0]) >= Version("2.6")


def test_a_missing_pretrained_weights_file_is_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from conftest import tiny_raw
    from noisystudent.params import Params
    from stages import prepare, train

    monkeypatch.chdir(tmp_path)
    raw = tiny_raw(teacher__pretrained="models/pretrained/none.safetensors")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    prepare.run(Params.model_validate(raw), tmp_path / "data")
    r = CliRunner().invoke(train.cli, ["--model", "teacher", "--data", "data", "--out", "t.pt", "--metrics", "t.json"])
    assert r.exit_code == 1 and "error: models/pretrained/none.safetensors (pretrained weights of teacher) not found" in r.output, r.output
    assert not (tmp_path / "t.pt").exists() and "Traceback" not in r.output
