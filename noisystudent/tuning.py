"""Tuning the default recipe on the validation split: candidate recipes (the `tune` suite of
ablation.py, run as DVC experiments like any suite), ranked by the best student's validation
top-1 (mean over the tuning seeds) and nothing else. Test figures are reported for every
candidate, after the choice, so a reader can see how much the chosen one owes to luck on
validation; they never choose. The chosen recipe and the current one then run on held-out
seeds (splits and draws no choice saw): the before-and-after figures and the goal are read
there, since the best of several candidates on a small validation split is optimistic on the
seeds it was picked on. Pure functions over `dvc exp show` records; the command is `tune` in
__main__.py."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .ablation import SUITES, iterations_of, suite_records

# what each finished experiment contributes (summary.json keys), test figures after the choice
FIGURES = {"val": "best_student_val_acc", "test": "best_student_test_acc", "teacher": "teacher_test_acc",
           "baseline": "baseline_test_acc", "oracle": "oracle_test_acc"}
STUDENT_ACC = "metrics/summary.json:test_acc."  # + each iteration's name: every student's test top-1 (columns `student <name>`)


ROLES = ("tuning", "held-out")  # seeds the choice is made on; seeds only the chosen and the current recipe run on


def collect(records: list[dict], seeds: list[int], suite: str = "tune", role: str = "tuning",
            candidates: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per (candidate, seed) that finished, with FIGURES and the seeds' `role`; and what
    is missing or failed (of `candidates` only, when given)."""
    rows, problems = [], []
    for v, s, name, rec in suite_records(records, suite, seeds):
        if candidates is not None and v.name not in candidates:
            continue
        if rec is None or rec["status"] != "success":
            problems.append(f"`{name}`: {'not run' if rec is None else rec['status']}")
            continue
        m = rec["metrics"]
        try:
            students = {f"student {it}": float(m[f"{STUDENT_ACC}{it}"]) for it in iterations_of(rec.get("params") or {})
                        if f"{STUDENT_ACC}{it}" in m}
            rows.append({"candidate": v.name, "seed": s, "experiment": name, "role": role,
                         **{k: float(m[f"metrics/summary.json:{key}"]) for k, key in FIGURES.items()}, **students})
        except KeyError as e:
            problems.append(f"`{name}`: finished without metric {e}")
    cols = ["candidate", "seed", "experiment", "role", *FIGURES]
    student_cols = list(dict.fromkeys(c for r in rows for c in r if c not in cols))  # in chain order
    return pd.DataFrame(rows, columns=cols + student_cols), problems


def split_roles(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tuning rows, held-out rows); a table without roles (written before held-out seeds) is all tuning."""
    if "role" not in frame:
        return frame, frame.iloc[0:0]
    return frame[frame["role"] != "held-out"], frame[frame["role"] == "held-out"]


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Per candidate: seeds and mean validation top-1 of the best student, highest first (more
    seeds first on a tie, then the candidates' order: the default wins a tie). Test plays no part,
    nor do held-out seeds."""
    frame = split_roles(frame)[0]
    order = {v.name: i for i, v in enumerate(SUITES["tune"])}
    g = frame.groupby("candidate")["val"].agg(["count", "mean"]).reset_index()
    g["order"] = g["candidate"].map(order)
    return g.sort_values(["mean", "count", "order"], ascending=[False, False, True], ignore_index=True)


def chosen(frame: pd.DataFrame, min_seeds: int) -> str | None:
    """The candidate with the highest mean validation top-1 among those run on `min_seeds` seeds."""
    r = rank(frame)
    r = r[r["count"] >= min_seeds]
    return None if r.empty else str(r["candidate"].iloc[0])


def _ms(x: pd.Series) -> str:
    x = x.dropna()
    if len(x) == 0:
        return "n/a"
    return f"{100 * x.mean():.2f} ± {100 * x.std(ddof=1):.2f}" if len(x) > 1 else f"{100 * x.mean():.2f}"


def table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per candidate, ranked by validation: mean ± std over its seeds of every figure (%), the
    best student's distance to the oracle and its gain over the baseline (points). Tuning seeds only."""
    notes = {v.name: v.note for v in SUITES["tune"]}
    frame = split_roles(frame)[0]
    out = []
    for c in rank(frame)["candidate"]:
        g = frame[frame["candidate"] == c]
        out.append({"candidate": c, "seeds": len(g), "best student val %": _ms(g["val"]), "best student test %": _ms(g["test"]),
                    "teacher %": _ms(g["teacher"]), "baseline %": _ms(g["baseline"]), "oracle %": _ms(g["oracle"]),
                    "gap to oracle (points)": _ms(g["oracle"] - g["test"]), "gain over baseline (points)": _ms(g["test"] - g["baseline"]),
                    "what it changes": notes.get(c, "")})
    return pd.DataFrame(out)


def _judged(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows a chosen recipe is judged on: the held-out seeds when any finished, else the tuning
    seeds (optimistic for the chosen one: said so); and their role."""
    tuning, held = split_roles(frame)
    return (held, "held-out") if len(held) else (tuning, "tuning")


def goal_met(frame: pd.DataFrame, candidate: str, gap: float = 0.02, gain: float = 0.03) -> dict:
    """The issue's goal for the chosen recipe, over its held-out seeds (the tuning seeds when none
    has run): the best student within `gap` of the oracle and at least `gain` over the baseline
    (means over seeds; fractions)."""
    rows, where = _judged(frame)
    g = rows[rows["candidate"] == candidate]
    d_oracle, d_base = float(np.mean(g["oracle"] - g["test"])), float(np.mean(g["test"] - g["baseline"]))
    return {"seeds": len(g), "where": f"{where} seeds", "gap_to_oracle": d_oracle, "gain_over_baseline": d_base,
            "within_gap": d_oracle <= gap, "gain_reached": d_base >= gain}


def before_after(frame: pd.DataFrame, min_seeds: int) -> pd.DataFrame:
    """The recipe before tuning (`current`) and the one chosen on the tuning seeds, each as mean ±
    std of every model's test top-1 and the best student's distance to the oracle (%, points) over
    the held-out seeds (the tuning seeds when none has run, said in the `seeds` column)."""
    pick = chosen(frame, min_seeds)
    rows_of, where = _judged(frame)
    pairs = [("before tuning (`current`: the recipe it started from)", "current")]
    if pick == "current":
        pairs = [("`current`, the recipe it started from (no candidate beat it on validation)", "current")]
    elif pick is not None:
        pairs.append((f"after tuning (`{pick}`, chosen on validation)", pick))
    rows = []
    for label, c in pairs:
        g = rows_of[rows_of["candidate"] == c]
        seeds = ", ".join(str(int(x)) for x in sorted(g["seed"]))
        rows.append({"recipe": label, "seeds": f"{len(g)} {where} ({seeds})", "teacher %": _ms(g["teacher"]), "supervised baseline %": _ms(g["baseline"]),
                     **{f"{col} %": _ms(g[col]) for col in rows_of if col.startswith("student ")},  # every iteration, in order
                     "best student %": _ms(g["test"]), "oracle %": _ms(g["oracle"]),
                     "best student - baseline (points)": _ms(g["test"] - g["baseline"]),
                     "oracle - best student (points)": _ms(g["oracle"] - g["test"])})
    return pd.DataFrame(rows)


def replace_block(text: str, body: str, begin: str = "<!-- results:begin -->", end: str = "<!-- results:end -->") -> str:
    """`text` with what lies between the `begin` and `end` marker lines replaced by `body`."""
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"markers {begin} ... {end} not found in order")
    return text[: i + len(begin)] + "\n" + body.strip() + "\n" + text[j:]
