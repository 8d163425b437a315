"""The whole pipeline in-process on tiny params, stage by stage as dvc.yaml runs it (DVC's
stage names, the same file layout under `root`). `view(stage)` gives the params each stage
reads (tests/test_deps.py passes recording views); by default the params themselves."""
from __future__ import annotations

from pathlib import Path

from stages import corrupt, evaluate, gallery, prepare, pseudo_label, report, robustness, select, summary, train


def run_all(p, root: Path, view=None) -> dict:
    v = view or (lambda stage: p)
    data, m, models = root / "data/prepared", root / "metrics", root / "models"
    prepare.run(v("prepare"), data, m / "prepare.json")
    for name in ("teacher", "baseline", "oracle"):
        train.run(v(f"train_{name}"), name, data, models / f"{name}.pt", m / f"{name}/train.json", history_out=m / f"{name}/history.csv")
    for name, it in p.iterations.items():
        labels, sel = root / f"data/pseudo/{name}/labels", root / f"data/pseudo/{name}/selected.parquet"
        pseudo_label.run(v(f"pseudo_label@{name}"), name, data, models / f"{it.teacher}.pt", labels)
        select.run(v(f"select@{name}"), name, data, labels, sel, m / f"select/{name}.json", m / f"{name}/confidence.csv", m / f"{name}/classes.csv")
        train.run(v(f"train_student@{name}"), name, data, models / f"{name}.pt", m / f"{name}/train.json", sel,
                  history_out=m / f"{name}/history.csv", teacher_ckpt=models / f"{it.teacher}.pt")
        gallery.run(v(f"gallery@{name}"), name, data, models / f"{it.teacher}.pt", models / f"{name}.pt", m / f"{name}/gallery.png")
    corrupt.run(v("corrupt"), data, root / "data/robustness")
    rob = m / "robustness"
    for name in p.eval.models:
        evaluate.run(v(f"evaluate@{name}"), name, data, models / f"{name}.pt", m / f"eval/{name}.json", m / f"eval/{name}_predictions.csv")
    robustness.run(v("robustness_teacher"), "teacher", root / "data/robustness", models / "teacher.pt", rob / "teacher.json")
    for name in p.iterations:
        robustness.run(v(f"robustness@{name}"), name, root / "data/robustness", models / f"{name}.pt", rob / f"{name}.json", rob / "teacher.json")
    robustness.run(v("robustness_baseline"), "baseline", root / "data/robustness", models / "baseline.pt", rob / "baseline.json", rob / "teacher.json")
    s = summary.run(v("summary"), m / "eval", m / "summary.json", m / "summary.csv", m / "summary.png", rob, m / "select")
    report.run(v("report"), m, root / "docs/report")
    return s
