from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from noisystudent.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, raw) -> Path:
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump(raw))
    return f


def default_raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repository_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert list(p.iterations) == ["s1", "s2", "s3"]
    assert p.eval.models == ["teacher", "s1", "s2", "s3", "baseline", "oracle"]
    assert p.arch_of("s2") == p.iterations["s2"].arch


# the full list of bad values (and the docs table of them) is in test_bad_inputs.py


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("[1, 2]\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(tmp_path / "list.yaml")


def test_stage_with_bad_params_fails_in_one_line_and_writes_nothing(tmp_path):
    from stages.prepare import cli

    raw = default_raw()
    raw["noise"]["dropout"] = 1.5
    out = tmp_path / "prepared"
    result = CliRunner().invoke(cli, ["--out", str(out), "--params", str(write(tmp_path, raw))])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "noise.dropout" in lines[0], result.output
    assert not out.exists()


@pytest.mark.parametrize("stage", sorted(f.stem for f in (ROOT / "stages").glob("*.py") if f.stem != "__init__"))
def test_every_stage_has_help(stage):
    import importlib

    cli = importlib.import_module(f"stages.{stage}").cli
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "--params" in result.output


def test_package_cli_has_help_and_a_version():
    from noisystudent import __version__
    from noisystudent.__main__ import cli

    listing = CliRunner().invoke(cli, ["--help"], terminal_width=200).output
    assert all(c in listing for c in ("sync-mlflow", "predict", "export", "tune", "ablate"))
    assert CliRunner().invoke(cli, ["--version"]).output.strip() == f"noisystudent {__version__}"


@pytest.mark.parametrize("stage", sorted(f.stem for f in (ROOT / "stages").glob("*.py") if f.stem != "__init__"))
def test_package_cli_has_every_stage_with_its_defaults(stage):
    """`python -m noisystudent --help` lists every stage module; each command's help names
    its options and shows the defaults it has."""
    from noisystudent.__main__ import STAGES, cli

    assert stage in STAGES
    listing = CliRunner().invoke(cli, ["--help"], terminal_width=200).output
    assert stage.replace("_", "-") in listing
    help_ = CliRunner().invoke(cli, [stage.replace("_", "-"), "--help"], terminal_width=200).output
    assert "--params" in help_ and "[default: params.yaml]" in help_, help_
