"""The whole pipeline in-process on tiny params, stage by stage as dvc.yaml runs it (DVC's
stage names, the same file layout under `root`). `view(stage)` gives the params each stage
reads (tests/test_deps.py passes recording views); by default the params themselves."""
from __future__ import annotations

from pathlib import Path

from stages import corrupt, evaluate, gallery, prepare, pseudo_label, report, robustness, select, summary, train


def run_all(p, root: Path, view=None, only: set[str] | None = None) -> dict | None:
    """Every stage, or the stages in `only` (DVC's names; the caller includes what they need)."""
    v = view or (lambda stage: p)

    def want(stage: str) -> bool:
        return only is None or stage in only

    data, m, models = root / "data/prepared", root / "metrics", root / "models"
    if want("prepare"):
        prepare.run(v("prepare"), data, m / "prepare.json")
    for name in ("teacher", "baseline", "oracle"):
        if want(f"train_{name}"):
            train.run(v(f"train_{name}"), name, data, models / f"{name}.pt", m / f"{name}/train.json", history_out=m / f"{name}/history.csv")
    for name, it in p.iterations.items():
        labels, sel = root / f"data/pseudo/{name}/labels", root / f"data/pseudo/{name}/selected.parquet"
        if want(f"pseudo_label@{name}"):
            pseudo_label.run(v(f"pseudo_label@{name}"), name, data, models / f"{it.teacher}.pt", labels)
        if want(f"select@{name}"):
            select.run(v(f"select@{name}"), name, data, labels, sel, m / f"select/{name}.json", m / f"{name}/confidence.csv", m / f"{name}/classes.csv")
        if want(f"train_student@{name}"):
            train.run(v(f"train_student@{name}"), name, data, models / f"{name}.pt", m / f"{name}/train.json", sel,
                      history_out=m / f"{name}/history.csv", teacher_ckpt=models / f"{it.teacher}.pt")
        if want(f"gallery@{name}"):
            gallery.run(v(f"gallery@{name}"), name, data, models / f"{it.teacher}.pt", models / f"{name}.pt", m / f"{name}/gallery.png")
    if want("corrupt"):
        corrupt.run(v("corrupt"), data, root / "data/robustness")
    rob = m / "robustness"
    for name in p.eval.models:
        if want(f"evaluate@{name}"):
            evaluate.run(v(f"evaluate@{name}"), name, data, models / f"{name}.pt", m / f"eval/{name}.json", m / f"eval/{name}_predictions.csv")
    if want("robustness_teacher"):
        robustness.run(v("robustness_teacher"), "teacher", root / "data/robustness", models / "teacher.pt", rob / "teacher.json")
    for name in p.iterations:
        if want(f"robustness@{name}"):
            robustness.run(v(f"robustness@{name}"), name, root / "data/robustness", models / f"{name}.pt", rob / f"{name}.json", rob / "teacher.json")
    if want("robustness_baseline"):
        robustness.run(v("robustness_baseline"), "baseline", root / "data/robustness", models / "baseline.pt", rob / "baseline.json", rob / "teacher.json")
    s = None
    if want("summary"):
        s = summary.run(v("summary"), m / "eval", m / "summary.json", m / "summary.csv", m / "summary.png", rob, m / "select")
    if want("report"):
        report.run(v("report"), m, root / "docs/report")
    return s
