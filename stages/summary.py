"""Stage summary: the headline figures of the run (the DVC metric `dvc exp show` and `dvc
metrics diff` display), a table per model and the accuracy-per-iteration picture."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors
from noisystudent.params import SUPERVISED, Params

cli = app(__doc__)


def headline(table, best: str) -> dict:
    """Numbers only, a few dozen at most: breakdowns stay in the per-stage JSON files."""
    by = table.set_index("model")
    students = [m for m in by.index if m not in SUPERVISED]
    deliverable = [m for m in by.index if m != "oracle"]  # the oracle is a reference line, not a model to use
    acc = lambda m: float(by.loc[m, "test_acc"])  # noqa: E731
    h = {"teacher_test_acc": acc("teacher"), "baseline_test_acc": acc("baseline"), "best_student_test_acc": acc(best),
         "best_student_val_acc": float(by.loc[best, "val_acc"]),  # what it was chosen by
         "gain_over_teacher": round(acc(best) - acc("teacher"), 6),
         # the paper's comparison: the same architecture, trained without the unlabeled images
         "gain_over_baseline": round(acc(best) - acc("baseline"), 6),
         # the ceiling: the same architecture and recipe given every label of the pool
         "oracle_test_acc": acc("oracle"), "gap_to_oracle": round(acc("oracle") - acc(best), 6),
         "test_acc": {m: acc(m) for m in students},
         "test_ece": {m: float(by.loc[m, "test_ece"]) for m in deliverable},
         # after temperature scaling fitted on validation: what is left once confidences are rescaled
         "test_ece_scaled": {m: float(by.loc[m, "test_ece_scaled"]) for m in deliverable},
         "pseudo_label_acc": {m: float(v) for m in students if (v := by.loc[m, "pseudo_label_acc"]) is not None and v == v}}
    # how much data the figures rest on: a default that quietly shrank a split would show here
    h["test_images"] = int(by.loc["teacher", "test_images"])
    selected = by.loc[students].dropna(subset=["pseudo_selected"])
    if len(selected):
        h["unlabeled_pool"] = int(selected["unlabeled_pool"].iloc[0])  # the pool every teacher labels
        h["pseudo_selected"] = {m: int(n) for m, n in selected["pseudo_selected"].items()}  # unique images kept
    if not h["pseudo_label_acc"]:
        del h["pseudo_label_acc"]  # a pool without hidden labels (an image folder)
    return h


def robustness_vs_baseline(p: Params, rob_dir: Path, rob: dict, best: str) -> dict:
    from noisystudent import robustness_figures as F

    outcomes = {role: F.load_outcomes(F.outcomes_file(rob_dir / f"{name}.json"))
                for role, name in (("teacher", "teacher"), ("baseline", "baseline"), ("best_student", best))}
    names = list(rob["teacher"]["corruption_error"])
    left_out = [names.index(c) for c in rob["best_student"]["relative_mce_left_out"]]
    fgsm_at = list(rob["best_student"]["fgsm_accuracy"]).index(f"{rob['best_student']['fgsm_epsilon']:g}")  # keyed by epsilon as text
    ci = F.difference_intervals(outcomes["best_student"], outcomes["baseline"], outcomes["teacher"], left_out, fgsm_at)
    out = {}
    for k in ("mce", "mfr", "fgsm_acc"):
        a, b = rob["best_student"][k], rob["baseline"][k]
        out[f"{k}_vs_baseline"] = None if a is None or b is None else round(a - b, 6)
        out[f"{k}_vs_baseline_ci"] = None if ci[k] is None else {"lo": round(ci[k][0], 6), "hi": round(ci[k][1], 6)}
    return out


def run(p: Params, eval_dir: Path, out: Path, table_out: Path, png_out: Path, rob_dir: Path | None = None,
        select_dir: Path | None = None) -> dict:
    from noisystudent import plots
    from noisystudent.io import atomic_write_csv, atomic_write_json
    from noisystudent.results import best_student, model_table, read_json
    from noisystudent.tracking import flatten, stage_run

    table = model_table(list(p.eval.models), eval_dir, rob_dir, select_dir)
    best = best_student(table)  # by validation accuracy: test labels choose nothing
    summary = headline(table, best)
    if rob_dir is not None:
        rob = {role: read_json(rob_dir / f"{name}.json", f"robustness@{name}")
               for role, name in (("teacher", "teacher"), ("baseline", "baseline"), ("best_student", best))}
        summary.update({f"{role}_{k}": rob[role][k] for k in ("mce", "relative_mce", "mfr", "fgsm_acc") for role in rob})
        # the paper's comparison: the best student against the same architecture without the unlabeled images,
        # with a 95 % interval from a bootstrap over the images (both models and the teacher paired on each draw)
        summary.update(robustness_vs_baseline(p, rob_dir, rob, best))
    with stage_run(p, "summary") as tracked:
        atomic_write_json(out, summary)
        atomic_write_csv(table_out, table)
        arch = table.set_index("model").loc["baseline", "arch"]
        plots.accuracy_per_iteration(table[~table["model"].isin(("baseline", "oracle"))], png_out, references=[
            (f"supervised baseline ({arch})", summary["baseline_test_acc"]), (f"oracle: all labels ({arch})", summary["oracle_test_acc"])])
        # the names `dvc metrics show` gives (nested keys joined by dots), on the stage's run and on
        # the pipeline's parent run, so the MLflow table can sort pipeline runs and experiments by them
        flat = {k: v for k, v in flatten(summary).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tracked.log_metrics(flat)
        tracked.log_parent_metrics(flat)
        for f in (out, table_out, png_out):
            tracked.log_artifact(f)
    return {**summary, "best_student": best}


@cli.command()
def main(
    evals: Annotated[Path, typer.Option(help="folder of evaluate outputs (<model>.json)")],
    out: Annotated[Path, typer.Option(help="summary JSON to write (the headline DVC metric)")],
    table: Annotated[Path, typer.Option(help="per-model CSV to write (DVC plot)")],
    plot: Annotated[Path, typer.Option(help="accuracy-per-iteration PNG to write")],
    robustness: Annotated[Optional[Path], typer.Option(help="folder of robustness outputs (<model>.json), if measured")] = None,
    selection: Annotated[Optional[Path], typer.Option(help="folder of select outputs (<iteration>.json)")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    """Gather every model's figures into the run's headline metrics."""
    p = read_params(params, models=False)  # builds no model: no torch, no timm
    with user_errors():
        s = run(p, evals, out, table, plot, robustness, selection)
        typer.echo(f"teacher {s['teacher_test_acc']:.4f} -> students {s['test_acc']}; best {s['best_student']}")


if __name__ == "__main__":
    cli()
