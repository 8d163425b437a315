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


def test_code_digest_follows_the_closure(tmp_path):
    """The resume and labeling fingerprints hash the code a stage runs: a line changed in a
    module it imports changes the digest; a line in a module it never imports does not."""
    import shutil

    from noisystudent.provenance import code_digest

    for pkg in ("stages", "noisystudent"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "stages" / "train.py"
    before = code_digest(script, tmp_path)
    assert before == code_digest(ROOT / "stages" / "train.py")  # the same bytes, wherever they are
    with open(tmp_path / "noisystudent" / "report.py", "a") as f:  # not imported by training
        f.write("\n# unrelated\n")
    assert code_digest(script, tmp_path) == before
    with open(tmp_path / "noisystudent" / "transforms.py", "a") as f:  # imported (via recipe -> train -> ...)
        f.write("\n# changed\n")
    assert code_digest(script, tmp_path) != before


def test_fingerprints_cover_every_key_any_stage_depends_on():
    """The params part of a fingerprint (noisystudent/provenance.py) holds every key that
    dvc.yaml lists for any stage: a key a stage reads can never be left out of it."""
    from depgraph import instances
    from paramtrace import leaves

    from noisystudent.params import load_params
    from noisystudent.provenance import params_fingerprint

    p = load_params(ROOT / "params.yaml")
    declared = {leaf for st in instances(p).values() for k in st.get("params", []) for leaf in leaves(p, k)}
    assert declared and declared <= {k.removeprefix("params.") for k in params_fingerprint(p)}
