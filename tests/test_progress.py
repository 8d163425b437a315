"""Progress off a terminal (CI logs, files): no bar, one closing line with the rate and the
loop's own figures; nothing at all under NS_QUIET=1."""
from noisystudent.progress import progress


def run(n=5):
    with progress("pseudo_label@s1", total=n, unit="img", per=256) as bar:
        for _ in range(n):
            bar.advance()
        bar.show(loss=0.25, epoch=2)


def test_one_line_off_a_terminal(monkeypatch, capsys):
    monkeypatch.delenv("NS_QUIET", raising=False)
    run()
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert out.out == "" and len(lines) == 1, out
    assert lines[0].startswith("pseudo_label@s1: 5/5 in ") and " img/s loss 0.25 epoch 2" in lines[0], lines


def test_quiet(monkeypatch, capsys):
    monkeypatch.setenv("NS_QUIET", "1")
    run()
    assert capsys.readouterr() == ("", "")
