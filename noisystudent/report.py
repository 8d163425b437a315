"""One Markdown page per pipeline run or DVC experiment, from what the stages wrote under
`metrics/`: the figures (copied beside the page, so the folder stands alone and renders on
GitHub), the tables behind them, and the params that made them. Nothing is measured here."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from . import plots
from .params import SUPERVISED, Params
from .results import best_student, maybe_json, model_table, read_json


def _pct(v) -> str:
    return "" if v is None or pd.isna(v) else f"{100 * v:.1f}"


def _num(v, fmt: str = ".1f") -> str:
    return "" if v is None or pd.isna(v) else format(v, fmt)


def _with_ci(v, ci, scale: float = 1.0) -> str:
    """A figure and its 95 % interval: `59.4 [52.0, 66.1]`."""
    if v is None or pd.isna(v):
        return ""
    return f"{scale * v:.1f}" + (f" [{scale * ci[0]:.1f}, {scale * ci[1]:.1f}]" if isinstance(ci, (list, tuple)) else "")


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of dict rows (pandas + tabulate), cells as text; shared with the ablation report."""
    if not rows:
        return "_nothing measured_\n"
    return pd.DataFrame(rows).astype(str).to_markdown(index=False, disable_numparse=True) + "\n"


def teachers(p: Params, metrics: Path) -> dict[str, str]:
    """Each student's teacher, as its select stage recorded it (the report then depends on
    what was run, not on the `iterations` params)."""
    return {n: (maybe_json(metrics / "select" / f"{n}.json") or {}).get("teacher", "?") for n in p.iterations}


def _trained_on(p: Params, name: str, teacher: dict[str, str]) -> str:
    if name == "teacher":
        return "labeled"
    if name == "baseline":
        return "labeled (supervised baseline: the teacher's recipe)"
    if name == "oracle":
        return "every label of the pool (oracle: the baseline's recipe)"
    return f"labeled + {teacher[name]}'s labels"


CALIBRATION = ("ECE is the gap between confidence and accuracy (15 bins). *ECE scaled* is the same after temperature "
               "scaling fitted on the validation split (T, applied to the test logits): what is left once one number "
               "rescales every confidence. T < 1 means the model was under-confident (its confidences are sharpened), as "
               "students trained on the flat soft targets of an under-confident teacher are; T > 1, over-confident. "
               "Scaling never changes a prediction.")


def model_rows(p: Params, table: pd.DataFrame, teacher: dict[str, str]) -> list[dict]:
    """Per evaluated model (results.model_table): architecture, test accuracy and calibration,
    robustness, and the accuracy of the pseudo labels it was trained on (students)."""
    return [{
        "model": r.model, "trained on": _trained_on(p, r.model, teacher), "arch": r.arch, "params": f"{r.num_params:,}",
        "val top-1 %": _pct(r.val_acc), "test top-1 %": _pct(r.test_acc), "top-5 %": _pct(r.test_top5), "ECE %": _pct(r.test_ece),
        "ECE scaled %": _pct(r.test_ece_scaled), "T": _num(r.temperature, ".2f"),
        "mCE [95 % CI]": _with_ci(r.mce, r.mce_ci), "mFR [95 % CI]": _with_ci(r.mfr, r.mfr_ci),
        f"FGSM@{p.eval.robustness.fgsm_epsilon:g} % [95 % CI]": _with_ci(r.fgsm_acc, r.fgsm_acc_ci, 100),
        "pseudo-label acc (selected) %": _pct(r.pseudo_label_acc),
    } for r in table.itertuples()]


def selection_rows(p: Params, metrics: Path) -> list[dict]:
    rows = []
    for name in p.iterations:
        s = maybe_json(metrics / "select" / f"{name}.json")
        if s is None:
            continue
        rows.append({"iteration": name, "teacher": s.get("teacher", "?"), "pseudo-labeled": s["pseudo_labeled"],
                     f"conf >= {p.select.threshold:g}": s["kept_after_threshold"],
                     "selected (unique)": f"{s['selected']} ({s['unique']})",
                     "mean confidence": _num(s["mean_confidence"], ".3f"),
                     "label acc, all %": _pct(s.get("pseudo_label_acc_all")),
                     "label acc, selected %": _pct(s.get("pseudo_label_acc_selected"))})
    return rows


def figures(p: Params, metrics: Path) -> dict[str, list[tuple[str, Path]]]:
    """Section -> [(caption, PNG a stage drew, or a training history CSV the report draws)],
    in reading order; missing files are left out (a pipeline without robustness, say) and
    listed on the page (`missing_figures`)."""
    its, models, teacher = list(p.iterations), list(p.eval.models), teachers(p, metrics)
    return {
        "Accuracy per iteration": [("test top-1 (and mCE) per model", metrics / "summary.png")],
        "Where the student corrects the teacher (the paper's Figure 1)": [
            (f"{n} against its teacher ({teacher[n]})", metrics / n / "gallery.png") for n in its],
        "Pseudo labels: confidence and class balance": [
            x for n in its for x in ((f"{n}: confidence of {teacher[n]}'s labels", metrics / n / "confidence.png"),
                                     (f"{n}: per class, before and after balancing", metrics / n / "classes.png"))],
        "Training curves": [(m, metrics / m / "history.csv") for m in models],
        "Confusion matrices (test)": [(m, metrics / "eval" / f"{m}_predictions.png") for m in models],
        "Robustness (corruptions, FGSM)": [(m, metrics / "robustness" / f"{m}.png") for m in ["teacher", *its]],
    }


def missing_figures(p: Params, metrics: Path) -> list[Path]:
    return [f for figs in figures(p, metrics).values() for _, f in figs if not f.exists()]


def build(p: Params, metrics: Path, out: Path, title: str) -> Path:
    """Write `out`/report.md and the figures it shows; returns the page. Writes into a fresh
    folder and swaps it in whole, so a failure leaves the previous report intact."""
    from .io import atomic_dir

    summary = read_json(metrics / "summary.json", "the summary stage")
    table = model_table(list(p.eval.models), metrics / "eval", metrics / "robustness", metrics / "select")
    best = best_student(table)
    models, selection = model_rows(p, table, teachers(p, metrics)), selection_rows(p, metrics)
    chain = " -> ".join(["teacher", *p.iterations])
    md = [f"# Noisy Student: {title}", "",
          f"Dataset `{p.data.name}` ({p.data.labeled_per_class if p.data.labeled_per_class is not None else 'all'} labeled per class), "
          f"chain {chain}; student noise: RandAugment {p.noise.randaugment_n}x{p.noise.randaugment_m:g}, dropout {p.noise.dropout:g}, "
          f"stochastic depth {p.noise.drop_path:g}; {p.student.targets} pseudo labels, threshold {p.select.threshold:g}, "
          f"{p.select.per_class} per class; seed {p.train.seed}.", "",
          f"**Best student {best} (chosen on validation, {_pct(summary['best_student_val_acc'])} %): "
          f"{_pct(summary['best_student_test_acc'])} % test top-1, teacher "
          f"{_pct(summary['teacher_test_acc'])} % ({100 * summary['gain_over_teacher']:+.1f} points), supervised baseline "
          f"({p.arch_of('baseline')}, labeled images only) {_pct(summary['baseline_test_acc'])} % "
          f"({100 * summary['gain_over_baseline']:+.1f} points); the oracle (the same architecture and recipe on every "
          f"label of the pool, the unlabeled images' hidden labels too) {_pct(summary['oracle_test_acc'])} % "
          f"({100 * summary['gap_to_oracle']:.1f} points above the best student).**", ""]
    if "best_student_mce" in summary:
        eps = f"{p.eval.robustness.fgsm_epsilon:g}/255"
        def diff(k: str, scale: float = 1.0) -> str:  # the best student minus the baseline, with its interval
            d, ci = summary.get(f"{k}_vs_baseline"), summary.get(f"{k}_vs_baseline_ci")
            return "" if d is None else f" ({scale * d:+.1f}" + (f" [95 % CI {scale * ci['lo']:+.1f}, {scale * ci['hi']:+.1f}]" if ci else "") + ")"

        md += [f"Robustness, supervised baseline -> best student (the same architecture, the paper's comparison): "
               f"mCE {_num(summary['baseline_mce'])} -> {_num(summary['best_student_mce'])}{diff('mce')}, "
               f"mFR {_num(summary['baseline_mfr'])} -> {_num(summary['best_student_mfr'])}{diff('mfr')}, FGSM accuracy at {eps} "
               f"{_pct(summary['baseline_fgsm_acc'])} -> {_pct(summary['best_student_fgsm_acc'])} %{diff('fgsm_acc', 100)}; "
               "intervals from a bootstrap over the test images, both models and the teacher paired on each draw. Teacher -> best student: "
               f"mCE {_num(summary['teacher_mce'])} -> {_num(summary['best_student_mce'])}, "
               f"mFR {_num(summary['teacher_mfr'])} -> {_num(summary['best_student_mfr'])}, FGSM accuracy "
               f"{_pct(summary['teacher_fgsm_acc'])} -> {_pct(summary['best_student_fgsm_acc'])} % "
               "(CE and FR relative to the teacher = 100; relative mCE leaves out corruptions that barely hurt the teacher, "
               "named in each robustness JSON).", ""]
    md += ["## Models", "", markdown_table(models), CALIBRATION, "", "## Pseudo labels per iteration", "", markdown_table(selection)]
    with atomic_dir(out) as tmp:
        for section, figs in figures(p, metrics).items():
            present = [(cap, f) for cap, f in figs if f.exists()]
            if not present:
                continue
            md += [f"## {section}", ""]
            for cap, f in present:
                name = "_".join(f.relative_to(metrics).with_suffix("").parts) + ".png"
                if f.suffix == ".csv":  # a training history: drawn here, so restyling retrains nothing
                    model = f.parent.name
                    plots.training_curves(pd.read_csv(f), tmp / name, model,
                                          "labeled set" if model in SUPERVISED else "pseudo-labeled set")
                else:
                    shutil.copyfile(f, tmp / name)
                md += [f"**{cap}**", "", f"![{cap}]({name})", ""]
        missing = missing_figures(p, metrics)
        if missing:  # said on the page, not skipped in silence
            md += ["## Not drawn", "", "These figures were not found (their stage has not run or wrote none):", "",
                   *[f"- `{f}`" for f in missing], ""]
        (tmp / "report.md").write_text("\n".join(md).rstrip() + "\n")
        curves = validation_curves(p, metrics)
        if len(curves):  # every model's validation curve in one table: dvc.yaml's `val_acc` overlay plot
            curves.to_csv(tmp / "val_acc.csv", index=False)
    return out / "report.md"


def validation_curves(p: Params, metrics: Path) -> pd.DataFrame:
    """model, step, epoch, val_acc: the validation accuracy of every model while it trained,
    one table whatever the chain (a DVC plot overlays them by `model`)."""
    frames = [pd.read_csv(f)[["step", "epoch", "val_acc"]].assign(model=m)
              for m in p.eval.models if (f := metrics / m / "history.csv").exists()]
    return pd.concat(frames, ignore_index=True)[["model", "step", "epoch", "val_acc"]] if frames else pd.DataFrame()
