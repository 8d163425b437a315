"""The ablation report: from finished DVC experiments (records of `ablation.experiments_from_show`)
to one Markdown page with a table per suite (mean +- std over seeds per variant), the gains
over the teacher and the supervised baseline, one sentence per paper finding with its effect
size, a 95 % interval and the verdict the interval allows (stats.py: a paired bootstrap over
seeds and test images on each experiment's per-image predictions), and plots. Every number
comes from the experiments' own files (`dvc exp show`, and the per-image predictions committed
with each experiment); nothing is re-measured."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import plots
from .ablation import SUITES, iterations_of, suite_records
from .report import markdown_table
from .stats import Effect, paired_bootstrap, seed_interval

# (experiment record, model name) -> per-test-image outcome (1 = correct), or None when unknown
Outcomes = Callable[[dict, str], "np.ndarray | None"]


def run_figures(rec: dict) -> dict:
    """One finished experiment's figures: the last student's test top-1 and ECE, the teacher's
    and the baseline's accuracy, the accuracy of the pseudo labels the last student learned
    from, and the accuracy after each iteration."""
    m, its = rec["metrics"], iterations_of(rec["params"])
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


def collect(records: list[dict], suite: str, seeds: list[int], outcomes: Outcomes | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per (variant, seed) that finished, and the problems: experiments missing,
    failed, still queued or running, or finished without the metrics the report needs. With
    `outcomes`, each row also holds every model's per-test-image outcomes (column `outcomes`)."""
    rows, problems = [], []
    for v, s, name, rec in suite_records(records, suite, seeds):
        if rec is None:
            problems.append(f"`{name}` ({v.name}, seed {s}): no such experiment (not queued, or removed)")
            continue
        if rec["status"] != "success":
            why = f": {rec['error']}" if rec.get("error") else ""
            problems.append(f"`{name}` ({v.name}, seed {s}): {rec['status']}{why}")
            continue
        try:
            row = {"variant": v.name, "seed": s, "experiment": name, **run_figures(rec)}
            models = ["teacher", *iterations_of(rec["params"]), "baseline"]
            row["last"] = models[-2]
            row["outcomes"] = {m: o for m in models if outcomes is not None and (o := outcomes(rec, m)) is not None}
            rows.append(row)
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


def effect(frame: pd.DataFrame, a: str, b: str, model_a: str | None = None, model_b: str | None = None) -> tuple[Effect, str]:
    """The test top-1 difference of variant `a`'s model minus variant `b`'s (the last student
    by default; a == b compares two models of one experiment) over the seeds both finished:
    a paired bootstrap on per-image outcomes when every seed has them, else a t interval over
    per-seed differences (said so). Returns the effect and how it was measured."""
    ra = frame[frame["variant"] == a].set_index("seed")
    rb = frame[frame["variant"] == b].set_index("seed")
    seeds = sorted(set(ra.index) & set(rb.index))
    pairs, diffs = [], []
    for s in seeds:
        ma, mb = model_a or ra.loc[s, "last"], model_b or rb.loc[s, "last"]
        oa, ob = ra.loc[s, "outcomes"].get(ma), rb.loc[s, "outcomes"].get(mb)
        pairs.append(None if oa is None or ob is None or len(oa) != len(ob) else (oa, ob))
        diffs.append(_acc(ra.loc[s], ma) - _acc(rb.loc[s], mb))
    if seeds and all(p is not None for p in pairs):
        e = paired_bootstrap(pairs)
        return e, f"paired bootstrap over {e.seeds} seeds and {e.images:,} test images"
    return seed_interval(np.array(diffs)), f"t interval over {len(seeds)} seeds (per-image predictions unavailable)"


def _acc(row: pd.Series, model: str) -> float:
    """A model's test top-1 from an experiment's summary row: its last student or its baseline."""
    return {row["last"]: row["acc"], "baseline": row["baseline"]}.get(model, np.nan)


@dataclass(frozen=True)
class Finding:
    """One paper finding as this data judges it: the sentence of the report, and its parts for
    tables (the README's results block reads them from findings.csv)."""
    suite: str
    claim: str  # the finding, with the paper's statement
    comparison: str  # "a − b": what the effect is the difference of
    what: str  # test top-1 | pseudo-label accuracy
    effect: Effect | None  # None: cannot be judged (no seed in common)
    how: str
    line: str  # the report's sentence

    def row(self) -> dict:
        e = self.effect
        return {"suite": self.suite, "finding": self.claim, "comparison": self.comparison, "figure": self.what,
                "effect_points": 100 * e.mean if e else np.nan, "ci_low": 100 * e.lo if e else np.nan,
                "ci_high": 100 * e.hi if e else np.nan, "seeds": e.seeds if e else 0,
                "verdict": e.verdict if e else "cannot be judged", "how": self.how}


def findings_table(found: pd.DataFrame) -> pd.DataFrame:
    """findings.csv as the README shows it: one row per finding, the effect with its interval."""
    def fx(r) -> str:
        if r["verdict"] == "cannot be judged":
            return "n/a"
        ci = "" if pd.isna(r["ci_low"]) else f" [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        return f"{r['effect_points']:+.2f}{ci}"
    return pd.DataFrame({"suite": found["suite"], "finding": found["finding"], "a − b": found["comparison"],
                         "figure": found["figure"], "effect, points [95 % CI]": found.apply(fx, axis=1),
                         "seeds": found["seeds"], "verdict": found["verdict"]})


def _claim(frame: pd.DataFrame, suite: str, claim: str, a: str, b: str, col: str = "acc") -> Finding:
    what = {"acc": "test top-1", "pl_acc": "pseudo-label accuracy"}[col]
    d, seeds = paired(frame, a, b, col)
    if len(d) == 0:
        return Finding(suite, claim, f"{a} − {b}", what, None, "",
                       f"- {claim}: cannot be judged here ({a} and {b} have no finished seed in common).")
    e, how = effect(frame, a, b) if col == "acc" else (seed_interval(d), f"t interval over {len(d)} seeds")
    return Finding(suite, claim, f"{a} − {b}", what, e, how,
                   f"- {claim}: **{e.verdict}**. {a} − {b}: {e.points()} of {what} ({how}; per seed "
                   f"{', '.join(f'{100 * x:+.2f}' for x in d)}, seeds {seeds}).")


def findings(frame: pd.DataFrame, suite: str) -> list[Finding]:
    """Every paper finding the suite tests, with the paired evidence."""
    if len(frame) == 0:
        return [Finding(suite, "any", "", "", None, "", "- No finished experiment: nothing can be judged.")]
    claim = lambda *args, **kw: _claim(frame, suite, *args, **kw)  # noqa: E731
    if suite == "noise":
        out = [claim(f"Removing {what} lowers accuracy (the paper: performance consistently drops with noise removed)",
                     "full", v) for v, what in (("no-randaugment", "RandAugment"), ("no-dropout", "dropout"),
                                                ("no-stochastic-depth", "stochastic depth"), ("no-noise", "all noise"))]
        out.append(claim("An un-noised teacher labels better than a noised one (the paper labels un-noised)", "full", "teacher-noised"))
        out.append(claim("The same un-noised teacher's labels are more accurate", "full", "teacher-noised", "pl_acc"))
        return out
    if suite == "iterations":
        g = frame[frame["variant"] == "chain"]
        if len(g) == 0:
            return [Finding(suite, "Iterating helps", "", "", None, "", "- Iterating helps: cannot be judged (no finished chain).")]
        per = np.array(g["per_iteration"].tolist())  # seeds x (teacher, s1, s2, ...)
        models = ["teacher", *[f"s{i}" for i in range(1, per.shape[1])]]
        out = []
        for i in range(1, per.shape[1]):
            e, how = _step(g, models[i - 1], models[i], per[:, i] - per[:, i - 1])
            c = f"Iteration {i} improves on the model before it (the paper: iterative training helps, 3 iterations on ImageNet)"
            out.append(Finding(suite, c, f"{models[i]} − {models[i - 1]}", "test top-1", e, how,
                               f"- {c}: **{e.verdict}**, {models[i]} − {models[i - 1]}: {e.points()} ({how}). Accuracy "
                               f"after {i - 1} and {i} iterations: {100 * per[:, i - 1].mean():.2f} → {100 * per[:, i].mean():.2f} % "
                               "(mean over seeds)."))
        return out
    if suite == "pseudo":
        # the paper studies soft vs hard only; threshold 0.3 and T = 1 are its settings, not findings
        return [claim("Soft pseudo labels beat hard ones (the paper: soft work better, most clearly out of domain)", "soft", "hard"),
                claim("A confidence filter helps, threshold 0.3 vs none (the paper filters at 0.3)", "soft", "threshold-0"),
                claim("Threshold 0.3 beats a stricter 0.5 (the paper uses 0.3, no other value reported)", "soft", "threshold-0.5"),
                claim("Threshold 0.3 beats a stricter 0.7 (as above)", "soft", "threshold-0.7"),
                claim("Targets at T = 1 beat sharper ones, T = 0.5 (every official script uses T = 1)", "soft", "temperature-0.5"),
                claim("Targets at T = 1 beat flatter ones, T = 2 (as above)", "soft", "temperature-2")]
    if suite == "data":
        return [claim("Balancing helps (the paper: for small models)", "balanced", "unbalanced"),
                *[claim(f"All of the unlabeled data beats 1/{d} of it (the paper: more unlabeled data helps)", "balanced",
                        f"fraction-1/{d}") for d in (2, 4, 8, 16)],
                claim("A larger unlabeled:labeled batch ratio helps (3 vs 1)", "balanced", "ratio-1"),
                claim("... and 5 vs 3", "ratio-5", "balanced")]
    if suite == "model":
        return [claim("A larger student helps (the paper: student size matters)", "larger", "equal"),
                claim("Training from scratch beats initialising from the teacher (the paper: sometimes)", "equal", "init-from-teacher")]
    if suite == "teacher":
        return [claim("A larger teacher helps, the students fixed (the paper: a larger teacher leads to better results)",
                      "larger-teacher", "students-m")]
    if suite == "schedule":
        return [claim("Joint training beats pre-training on pseudo labels then fine-tuning on labels (the paper)", "joint", "finetune")]
    if suite == "baseline":
        g = frame[frame["variant"] == "supervised"]
        c = "Noisy Student (the last student) beats the supervised model of the same architecture"
        if len(g) == 0:
            return [Finding(suite, c, "", "", None, "", f"- {c}: cannot be judged (no finished run).")]
        e, how = effect(frame, "supervised", "supervised", model_b="baseline")
        d = g["gain_baseline"].to_numpy(dtype=float)
        return [Finding(suite, c, "last student − baseline", "test top-1", e, how,
                        f"- {c}: **{e.verdict}**, {e.points()} ({how}; per seed {', '.join(f'{100 * x:+.2f}' for x in d)}).")]
    return []


def _step(g: pd.DataFrame, prev: str, nxt: str, diffs: np.ndarray) -> tuple[Effect, str]:
    """Model `nxt` minus model `prev` of the same experiments (the chain)."""
    pairs = [(r.outcomes.get(nxt), r.outcomes.get(prev)) for r in g.itertuples()]
    if all(a is not None and b is not None and len(a) == len(b) for a, b in pairs):
        e = paired_bootstrap(pairs)
        return e, f"paired bootstrap, {e.seeds} seeds x {e.images // max(e.seeds, 1):,} images"
    return seed_interval(diffs), f"t interval over {len(diffs)} seeds"


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


def default_recipe(records: list[dict], seeds: list[int]) -> tuple[pd.DataFrame, list[str]]:
    """The default recipe over its seeds (the `default-seed<N>` experiments): every model's test
    top-1 as mean ± std, the best student chosen on validation, and its distance to the oracle
    and gain over the supervised baseline with a t interval over seeds. Returns the table and
    the sentences."""
    rows = []
    for _, s, _, rec in suite_records(records, "baseline", seeds):
        if rec is None or rec["status"] != "success":
            continue
        m = rec["metrics"]
        try:
            g = lambda k: float(m[f"metrics/summary.json:{k}"])  # noqa: E731
            its = iterations_of(rec["params"])
            rows.append({"seed": s, "teacher": g("teacher_test_acc"), **{i: g(f"test_acc.{i}") for i in its},
                         "baseline": g("baseline_test_acc"), "oracle": g("oracle_test_acc"),
                         "best student (chosen on validation)": g("best_student_test_acc")})
        except KeyError:
            continue
    if not rows:
        return pd.DataFrame(), ["No finished default experiment."]
    f = pd.DataFrame(rows).set_index("seed")
    table = pd.DataFrame({"model": f.columns, "test top-1 %": [_ms(f[c], fmt=".2f") for c in f.columns]})
    best = f["best student (chosen on validation)"]
    gap, gain = seed_interval((f["oracle"] - best).to_numpy()), seed_interval((best - f["baseline"]).to_numpy())
    say = lambda e: f"{100 * e.mean:+.2f} points" + ("" if np.isnan(e.lo) else f" [95 % CI {100 * e.lo:+.2f}, {100 * e.hi:+.2f}]")  # noqa: E731
    return table, [f"Over seeds {list(f.index)}: the oracle − the best student {say(gap)}, the best student − the supervised "
                   f"baseline {say(gain)} (t intervals over seeds; the tuning goal is within 2 points of the oracle and +3 over the "
                   "baseline)."]


def build(records: list[dict], suites: list[str], seeds: list[int], out: Path, outcomes: Outcomes | None = None,
          seeds_for: dict[str, list[int]] | None = None) -> Path:
    """Write `out`/report.md (+ one PNG per plotted suite, findings.png and findings.csv),
    replacing the folder whole. `seeds_for` gives a suite other seeds than `seeds` (a long
    suite run on fewer seeds first: the page says which)."""
    from .io import atomic_dir

    for s in suites:
        if s not in SUITES:
            raise KeyError(f"unknown suite {s!r}: one of {', '.join(SUITES)}")
    seeds_of = {s: list((seeds_for or {}).get(s, seeds)) for s in suites}
    groups: dict[str, list[str]] = {}
    for s in suites:
        groups.setdefault(str(seeds_of[s]), []).append(s)
    which = "; ".join(", ".join(g) + f": seeds {k}" for k, g in groups.items())
    md = ["# Ablations", "",
          f"Suites {which} (each seed: its own data split, training and balancing "
          "draws). Every figure is the **last student's** test top-1 (the end of the chain, chosen before "
          "looking), as mean ± std over seeds; gains are in points; pseudo-label accuracy is that of the "
          "labels the last student learned from (hidden labels). Numbers come from each experiment's "
          "metrics files as `dvc exp show` reports them. A finding is **supported** only when the 95 % interval "
          "of its effect excludes 0 in the paper's direction (**contradicted**: in the other; otherwise **not "
          "distinguishable at this size**); the interval comes from a paired bootstrap that resamples seeds and, "
          "within each, the test images both variants predicted (stats.py).", ""]
    rows = []
    dtable, dsay = default_recipe(records, seeds)
    md += ["## The default recipe", "", "Every model of the `default-seed<N>` experiments (the default params, one seed each), "
           "test top-1 as mean ± std over seeds.", ""]
    md += ([markdown_table(dtable.to_dict("records"))] if len(dtable) else []) + [*dsay, ""]
    with atomic_dir(out) as tmp:
        for s in suites:
            frame, problems = collect(records, s, seeds_of[s], outcomes)
            found = findings(frame, s)
            rows += [f.row() for f in found if f.comparison]
            md += [f"## {s}", "", markdown_table(table(frame, s, seeds_of[s]).to_dict("records")), "Findings:", "", *(f.line for f in found), ""]
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
        # every finding's effect, interval and verdict as data: what the README's results block shows
        found = pd.DataFrame(rows, columns=list(Finding("", "", "", "", None, "", "").row()))
        found.to_csv(tmp / "findings.csv", index=False)
        if len(found):
            plots.effects(found.assign(label=found["suite"] + ": " + found["comparison"] + " (" + found["figure"] + ")"),
                          tmp / "findings.png", "The paper's findings on this data")
            # after the page's opening paragraph: every finding at a glance
            md[4:4] = ["![every finding's effect with its 95 % interval](findings.png)", ""]
        (tmp / "report.md").write_text("\n".join(md).rstrip() + "\n")
    return out / "report.md"
