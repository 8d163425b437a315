"""dvc.yaml never lies: each stage depends on exactly the code it runs (the params keys it
reads, and `speed` changing no byte, are checked on the tiny runs in test_pipeline.py), and the
DVC niceties are in place."""
import pytest
import yaml

from conftest import ROOT
from depgraph import closure, code_deps, stage_script

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


@pytest.mark.parametrize("name", list(DVC["stages"]))
def test_code_deps_are_the_import_closure(name):
    st = DVC["stages"][name].get("do", DVC["stages"][name])
    want, have = closure(stage_script(st["cmd"])), code_deps(st)
    missing, extra = sorted(want - have), sorted(have - want)
    assert not missing and not extra, f"stage {name}: missing code deps {missing}, extra code deps {extra}"


def test_every_stage_has_a_description():
    assert all(st.get("desc", st.get("do", {}).get("desc")) for st in DVC["stages"].values())


def test_dvc_plots_folder_is_ignored():
    assert "dvc_plots/" in (ROOT / ".gitignore").read_text().split()
