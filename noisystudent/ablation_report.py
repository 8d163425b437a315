"""The ablation report: from finished DVC experiments (records of `ablation.experiments_from_show`)
to one Markdown page with a table per suite (mean +- std over seeds per variant), the gains
over the teacher and the supervised baseline, one sentence per paper finding saying whether
the data here supports it (with the evidence), and plots. Every number comes from the
experiments' own metrics files as `dvc exp show` reports them; nothing is re-measured."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import plots
from .ablation import SUITES, experiment_name
from .report import markdown_table


def _iterations(params: dict) -> list[str]:
    seen = []
    for k in params:
        if k.startswith("iterations.") and k.count(".") == 2:
            name = k.split(".")[1]
            if name not in seen:
                seen.append(name)
    return seen


def run_figures(rec: dict) -> dict:
    """One finished experiment's figures: the last student's test top-1 and ECE, the teacher's
    and the baseline's accuracy, the accuracy of the pseudo labels the last student learned
    from, and the accuracy after each iteration."""
    m, its = rec["metrics"], _iterations(rec["params"])
    if not its:
        raise KeyError("no iterations in its params")
    last = its[-1]
    s = lambda key: m[f"metrics/summary.json:{key}"]  # noqa: E731 - a KeyError names the missing metric
    acc = s(f"test_acc.{last}")
    return {
        "acc": acc, "teacher": s("teacher_test_acc"), "baseline": s("baseline_test_acc"),
        "gain_teacher": acc - s("teacher_test_acc"), "gain_baseline": acc - s("baseline_test_acc"),
        "pl_acc": m.get(f"metrics/summary.json:pseudo_label_acc.{last}", np.nan),
        "ece": s(f"test_ece.{last}"),
        "per_iteration": [s("teacher_test_acc")] + [s(f"test_acc.{i}") for i in its],
    }


def collect(records: list[dict], suite: str, seeds: list[int]) -> tuple[pd.DataFrame, list[str]]:
    """One row per (variant, seed) that finished, and the problems: experiments missing,
    failed, still queued or running, or finished without the metrics the report needs."""
    by_name = {r["name"]: r for r in records}
    rows, problems = [], []
    for v in SUITES[suite]:
        for s in seeds:
            name = experiment_name(v, s)
            rec = by_name.get(name)
            if rec is None:
                problems.append(f"`{name}` ({v.name}, seed {s}): no such experiment (not queued, or removed)")
                continue
            if rec["status"] != "success":
                why = f": {rec['error']}" if rec.get("error") else ""
                problems.append(f"`{name}` ({v.name}, seed {s}): {rec['status']}{why}")
                continue
            try:
                rows.append({"variant": v.name, "seed": s, "experiment": name, **run_figures(rec)})
            except KeyError as e:
                problems.append(f"`{name}` ({v.name}, seed {s}): finished without metric {e}")
    return pd.DataFrame(rows), problems


def _ms(x: pd.Series, scale: float = 100, fmt: str = ".1f", sign: bool = False) -> str:
    x = x.dropna()
    if len(x) == 0:
        return "n/a"
    f = ("+" if sign else "") + fmt
    return f"{scale * x.mean():{f}} ± {scale * x.std(ddof=1):{fmt}}" if len(x) > 1 else f"{scale * x.mean():{f}}"


def table(frame: pd.DataFrame, suite: str, seeds: list[int]) -> pd.DataFrame:
    """Per variant: seeds finished, test top-1 (last student), gains, pseudo-label accuracy,
    ECE, as mean ± std over seeds (%)."""
    if len(frame) == 0:  # no finished run at all: the same columns, every figure n/a
        frame = pd.DataFrame(columns=["variant", "acc", "gain_teacher", "gain_baseline", "pl_acc", "ece"])
    out = []
    for v in SUITES[suite]:
        g = frame[frame["variant"] == v.name]
        out.append({"variant": v.name, "seeds": f"{len(g)}/{len(seeds)}", "test top-1 %": _ms(g["acc"]),
                    "gain over teacher (points)": _ms(g["gain_teacher"], sign=True),
                    "gain over baseline (points)": _ms(g["gain_baseline"], sign=True),
                    "pseudo-label acc %": _ms(g["pl_acc"]), "ECE %": _ms(g["ece"]), "what it changes": v.note})
    return pd.DataFrame(out)


def paired(frame: pd.DataFrame, a: str, b: str, col: str = "acc") -> tuple[np.ndarray, list[int]]:
    """a - b per seed where both finished."""
    pa = frame[frame["variant"] == a].set_index("seed")[col]
    pb = frame[frame["variant"] == b].set_index("seed")[col]
    common = sorted(set(pa.index) & set(pb.index))
    return (pa.loc[common] - pb.loc[common]).to_numpy(dtype=float), common


def verdict(diffs: np.ndarray) -> str:
    """Whether `diffs` (the paper's expected direction positive) support it in every seed."""
    if len(diffs) == 0:
        return "cannot be judged (no seed finished both)"
    held = int((diffs > 0).sum())
    if held == len(diffs):
        return f"supported ({held}/{len(diffs)} seeds)"
    if held == 0:
        return f"not supported ({held}/{len(diffs)} seeds)"
    return f"mixed ({held}/{len(diffs)} seeds)"


def _claim(frame: pd.DataFrame, claim: str, a: str, b: str, col: str = "acc") -> str:
    what = {"acc": "test top-1", "pl_acc": "pseudo-label accuracy"}[col]
    d, seeds = paired(frame, a, b, col)
    if len(d) == 0:
        return f"- {claim}: cannot be judged here ({a} and {b} have no finished seed in common)."
    spread = f" ± {100 * d.std(ddof=1):.2f}" if len(d) > 1 else ""
    return (f"- {claim}: **{verdict(d)}**. {a} − {b}: {100 * d.mean():+.2f}{spread} points of {what} "
            f"(per seed {', '.join(f'{100 * x:+.2f}' for x in d)}; seeds {seeds}).")


def findings(frame: pd.DataFrame, suite: str) -> list[str]:
    """One sentence per paper finding the suite tests, with the paired evidence."""
    if len(frame) == 0:
        return ["- No finished experiment: nothing can be judged."]
    if suite == "noise":
        out = [_claim(frame, f"Removing {what} lowers accuracy (the paper: performance consistently drops with noise removed)",
                      "full", v) for v, what in (("no-randaugment", "RandAugment"), ("no-dropout", "dropout"),
                                                 ("no-stochastic-depth", "stochastic depth"), ("no-noise", "all noise"))]
        out.append(_claim(frame, "An un-noised teacher labels better than a noised one (the paper labels un-noised)",
                          "full", "teacher-noised"))
        out.append(_claim(frame, "The same un-noised teacher's labels are more accurate",
                          "full", "teacher-noised", "pl_acc"))
        return out
    if suite == "iterations":
        g = frame[frame["variant"] == "chain"]
        if len(g) == 0:
            return ["- Iterating helps: cannot be judged (no finished chain)."]
        per = np.array(g["per_iteration"].tolist())  # seeds x (teacher, s1, s2, ...)
        steps = np.diff(per, axis=1)
        parts = [f"iteration {i + 1}: {100 * steps[:, i].mean():+.2f} points ({verdict(steps[:, i])})" for i in range(steps.shape[1])]
        return ["- Each iteration improves on the last (the paper: iterative training helps, 3 iterations on ImageNet): "
                + "; ".join(parts) + f". Accuracy after 0..{steps.shape[1]} iterations: "
                + ", ".join(f"{100 * x:.2f}" for x in per.mean(0)) + " % (mean over seeds)."]
    if suite == "pseudo":
        return [_claim(frame, "Soft pseudo labels beat hard ones (the paper: soft work better, most clearly out of domain)", "soft", "hard"),
                _claim(frame, "A confidence filter helps (threshold 0.3 vs none)", "soft", "threshold-0")]
    if suite == "data":
        return [_claim(frame, "Balancing helps (the paper: for small models)", "balanced", "unbalanced"),
                _claim(frame, "All of the unlabeled data beats half of it (the paper: more unlabeled data helps)", "balanced", "fraction-1/2"),
                _claim(frame, "A larger unlabeled:labeled batch ratio helps (3 vs 1)", "balanced", "ratio-1"),
                _claim(frame, "... and 5 vs 3", "ratio-5", "balanced")]
    if suite == "model":
        return [_claim(frame, "A larger student helps (the paper: student size matters)", "larger", "equal"),
                _claim(frame, "Training from scratch beats initialising from the teacher (the paper: sometimes)", "equal", "init-from-teacher")]
    if suite == "baseline":
        g = frame[frame["variant"] == "supervised"]["gain_baseline"].to_numpy(dtype=float)
        return [f"- Noisy Student beats the supervised model of the same architecture: **{verdict(g)}**, "
                f"{100 * g.mean():+.2f} points (per seed {', '.join(f'{100 * x:+.2f}' for x in g)})." if len(g)
                else "- Noisy Student beats the supervised baseline: cannot be judged (no finished run)."]
    return []


def _series(frame: pd.DataFrame, xs: dict[str, float]) -> pd.DataFrame:
    rows = [{"x": x, "acc": r["acc"]} for v, x in xs.items() for _, r in frame[frame["variant"] == v].iterrows()]
    t = pd.DataFrame(rows, columns=["x", "acc"])
    return t.groupby("x")["acc"].agg(["mean", "std"]).reset_index() if len(t) else pd.DataFrame(columns=["x", "mean", "std"])


def suite_plot(frame: pd.DataFrame, suite: str, path: Path) -> Path | None:
    """Accuracy vs iteration / vs unlabeled fraction / vs threshold, mean ± std over seeds."""
    if len(frame) == 0:
        return None
    if suite == "iterations":
        per = np.array(frame[frame["variant"] == "chain"]["per_iteration"].tolist())
        if len(per) == 0:
            return None
        t = pd.DataFrame({"x": range(per.shape[1]), "mean": per.mean(0), "std": per.std(0, ddof=1) if len(per) > 1 else 0.0})
        return plots.accuracy_curve(t, path, "iterations (0 = the teacher)", "accuracy vs iteration")
    if suite == "data":
        t = _series(frame, {"balanced": 1.0, **{f"fraction-1/{d}": 1 / d for d in (2, 4, 8, 16)}})
        return plots.accuracy_curve(t, path, "fraction of the unlabeled pool", "accuracy vs unlabeled data", logx=True) if len(t) else None
    if suite == "pseudo":
        t = _series(frame, {"threshold-0": 0.0, "soft": 0.3, "threshold-0.5": 0.5, "threshold-0.7": 0.7})
        return plots.accuracy_curve(t, path, "confidence threshold", "accuracy vs threshold") if len(t) else None
    return None


def build(records: list[dict], suites: list[str], seeds: list[int], out: Path) -> Path:
    """Write `out`/report.md (+ one PNG per plotted suite), replacing the folder whole."""
    from .io import atomic_dir

    for s in suites:
        if s not in SUITES:
            raise KeyError(f"unknown suite {s!r}: one of {', '.join(SUITES)}")
    md = ["# Ablations", "",
          f"Suites {', '.join(suites)}, seeds {seeds} (each seed: its own data split, training and balancing "
          "draws). Every figure is the **last student's** test top-1 (the end of the chain, chosen before "
          "looking), as mean ± std over seeds; gains are in points; pseudo-label accuracy is that of the "
          "labels the last student learned from (hidden labels). Numbers come from each experiment's "
          "metrics files as `dvc exp show` reports them.", ""]
    with atomic_dir(out) as tmp:
        for s in suites:
            frame, problems = collect(records, s, seeds)
            md += [f"## {s}", "", markdown_table(table(frame, s, seeds).to_dict("records")), "Findings:", "", *findings(frame, s), ""]
            png = suite_plot(frame, s, tmp / f"{s}.png")
            if png is not None:
                md += [f"![{s}]({png.name})", ""]
            if problems:
                md += ["Not counted:", "", *[f"- {p}" for p in problems], ""]
            if len(frame):  # the raw figures, to check against `dvc exp show`
                raw = frame.assign(**{c: (100 * frame[c]).round(2) for c in ("teacher", "baseline", "acc", "pl_acc", "ece")})
                raw = raw[["experiment", "variant", "seed", "teacher", "baseline", "acc", "pl_acc", "ece"]].rename(columns={
                    "teacher": "teacher top-1 %", "baseline": "baseline top-1 %", "acc": "last student top-1 %",
                    "pl_acc": "its pseudo-label acc %", "ece": "its ECE %"})
                md += ["<details><summary>Per experiment</summary>", "", markdown_table(raw.to_dict("records")), "</details>", ""]
        (tmp / "report.md").write_text("\n".join(md).rstrip() + "\n")
    return out / "report.md"
