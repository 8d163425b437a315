"""A full disk while a stage writes (a patched write: no tmpfs, no root): the stage's previous
outputs stay byte-identical, it ends with one line naming the file it was writing (exit 1, no
traceback), no temporary is left, and the next run, with space again, completes.

The stage is evaluate (three outputs: a CSV, a JSON, a PNG) on the tiny prepared set. The
previous outputs come from another checkpoint, so the run after the fault must change them."""
import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tiny_raw

# the stage on a full disk: the patch, then the stage's own command line (argv after the mode)
FULL_DISK = '''
import errno, io, os, runpy, stat, sys

mode, folder, module, *args = sys.argv[1:]
folder = os.path.abspath(folder)
nospace = lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

if mode == "write":  # a write reaches the disk half, then ENOSPC (every writer: pandas, json, matplotlib)
    class FullDisk(io.FileIO):
        def write(self, b):
            super().write(bytes(b)[: len(b) // 2])
            raise nospace()

    real_open = io.open

    def open_(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wxa") and os.path.abspath(file).startswith(folder):
            raw = io.BufferedWriter(FullDisk(file, mode.replace("b", "").replace("t", "")))
            return raw if "b" in mode else io.TextIOWrapper(raw, encoding=encoding or "utf-8", errors=errors, newline=newline)
        return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)

    import builtins
    builtins.open = io.open = open_
elif mode == "fsync":  # delayed allocation: the data were accepted, the disk fills when they must reach it
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise nospace()
        return real_fsync(fd)

    os.fsync = fsync

sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
'''


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A folder with the tiny prepared set, checkpoint `new.pt`, and the previous outputs of
    evaluate@teacher in `out/` (made from another checkpoint); the arguments of the command."""
    from typer.testing import CliRunner

    from noisystudent.params import Params
    from stages import evaluate, prepare, train

    root = tmp_path_factory.mktemp("diskfull")
    raw = tiny_raw(teacher__steps=2)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    p = Params.model_validate(raw)
    prepare.run(p, root / "data")
    train.run(p, "teacher", root / "data", root / "old.pt", root / "old.json")
    train.run(Params.model_validate(tiny_raw(teacher__steps=4, train__seed=1)), "teacher", root / "data", root / "new.pt", root / "new.json")
    args = ["--model", "teacher", "--data", "data", "--checkpoint", "new.pt", "--metrics", "out/teacher.json",
            "--predictions", "out/teacher_predictions.csv", "--params", "params.yaml"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        r = CliRunner().invoke(evaluate.cli, [a.replace("new.pt", "old.pt") for a in args])
    finally:
        os.chdir(cwd)
    assert r.exit_code == 0 and {"teacher.json", "teacher_predictions.csv"} <= set(os.listdir(root / "out")), r.output
    return root, args


def contents(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def copy(evaluated, tmp_path) -> tuple[Path, dict, list[str]]:
    root, args = evaluated
    shutil.copytree(root, tmp_path / "w")
    return tmp_path / "w", contents(tmp_path / "w/out"), args


def after_a_full_disk(work: Path, args: list[str], out: str, code: int, before: dict, monkeypatch) -> None:
    """What a stage that met a full disk must leave: one line naming the file, its previous
    outputs byte for byte and nothing else (no temporary: io.py names them .<name>.<pid>.*.tmp,
    beside the target); then a run with space again writes the new outputs."""
    from typer.testing import CliRunner

    from stages import evaluate

    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in out, out
    named = re.fullmatch(r"error: disk full writing (out/[^:]+): .+ \(its previous version is unchanged; free space and re-run\)", lines[0])
    assert named and Path(named[1]).name in before, lines[0]  # the output it was writing, not a temporary
    assert contents(work / "out") == before and sorted(os.listdir(work / "out")) == sorted(before)

    monkeypatch.chdir(work)
    r = CliRunner().invoke(evaluate.cli, args)
    assert r.exit_code == 0, r.output
    after = contents(work / "out")
    assert sorted(os.listdir(work / "out")) == sorted(before)
    assert after["teacher.json"] != before["teacher.json"]  # the new checkpoint's figures


def test_enospc_in_a_write_keeps_previous_outputs_and_says_so_in_one_line(evaluated, tmp_path, monkeypatch):
    """The real command in its own process: what a user sees on stderr, the exit code."""
    work, before, args = copy(evaluated, tmp_path)
    (work / "full_disk.py").write_text(FULL_DISK)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NS_QUIET": "1"}
    r = subprocess.run([sys.executable, "full_disk.py", "write", "out", "stages.evaluate", *args],
                       cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "", r.stdout
    assert "No space left on device" in r.stderr
    after_a_full_disk(work, args, r.stderr, r.returncode, before, monkeypatch)


def test_edquot_at_fsync_keeps_previous_outputs_and_says_so_in_one_line(evaluated, tmp_path, monkeypatch):
    """The quota variant, surfacing at fsync (delayed allocation: the data were accepted, the
    quota is met when they must reach the disk), in-process."""
    import stat

    from typer.testing import CliRunner

    from stages import evaluate

    work, before, args = copy(evaluated, tmp_path)
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.chdir(work)
    r = CliRunner().invoke(evaluate.cli, args)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert isinstance(r.exception, SystemExit), r.exception  # typer.Exit(1), not an exception's traceback
    assert "Disk quota exceeded" in r.stderr
    after_a_full_disk(work, args, r.stderr, r.exit_code, before, monkeypatch)


def test_a_folder_output_comes_back_when_its_rename_meets_a_full_disk(tmp_path, monkeypatch):
    """atomic_dir moves the previous folder aside before renaming the new one in: when that
    rename fails, the previous folder is put back (not left under a temporary name)."""
    from noisystudent.io import atomic_dir

    with atomic_dir(tmp_path / "robustness") as tmp:
        (tmp / "c.npy").write_bytes(b"previous")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new folder into place
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left on device") as e:
        with atomic_dir(tmp_path / "robustness") as tmp:
            (tmp / "c.npy").write_bytes(b"new")
    assert os.listdir(tmp_path) == ["robustness"] and (tmp_path / "robustness/c.npy").read_bytes() == b"previous"
    assert len(calls) == 3 and calls[2] == tmp_path / "robustness"  # aside, (failed) in, back
    assert e.value.filename == str(tmp_path / "robustness")
