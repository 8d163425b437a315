"""Reading what the stages measured, once, for the summary and the report: the evaluate,
robustness and select figures of each model, and the choice of the best student. Nothing is
measured here."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .params import SUPERVISED


def read_json(path: Path, stage: str) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {stage} has not run")
    return json.loads(path.read_text())


def maybe_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def students(models: list[str]) -> list[str]:
    """The chain's students, in order, from `eval.models` (teacher, iterations..., baseline, oracle)."""
    return [m for m in models if m not in SUPERVISED]


def model_table(models: list[str], eval_dir: Path, rob_dir: Path | None = None, select_dir: Path | None = None) -> pd.DataFrame:
    """One row per model: architecture, size, validation top-1, test top-1 / top-5 / ECE, and where measured its
    mCE / mFR / FGSM accuracy and the accuracy of the pseudo labels it learned from."""
    rows = []
    for i, name in enumerate(models):
        ev = read_json(eval_dir / f"{name}.json", f"evaluate@{name}")
        rob = (maybe_json(rob_dir / f"{name}.json") if rob_dir is not None else None) or {}
        sel = (maybe_json(select_dir / f"{name}.json") if select_dir is not None else None) or {}
        rows.append({"iteration": None if name in ("baseline", "oracle") else i, "model": name, "arch": ev["arch"], "num_params": ev["num_params"],
                     "val_acc": ev["val_top1"], "test_acc": ev["top1"], "test_top5": ev["top5"], "test_ece": ev["ece"],
                     "test_ece_scaled": ev["ece_scaled"], "temperature": ev["temperature"],
                     "mce": rob.get("mce"), "mfr": rob.get("mfr"), "fgsm_acc": rob.get("fgsm_acc"),
                     **{f"{k}_ci": (rob.get("intervals") or {}).get(k) for k in ("mce", "mfr", "fgsm_acc")},
                     "pseudo_label_acc": sel.get("pseudo_label_acc_selected"), "test_images": ev["n"],
                     "unlabeled_pool": sel.get("pseudo_labeled"), "pseudo_selected": sel.get("unique")})
    return pd.DataFrame(rows).astype({"iteration": "Int64"})  # the baseline and the oracle are no iteration: left empty


def best_student(table: pd.DataFrame) -> str:
    """The student with the highest validation top-1, the latest iteration on a tie. Chosen on
    validation, never on test: a figure picked as the best of several on the test labels
    would be biased upward (the test split only measures the one chosen)."""
    s = table[~table["model"].isin(SUPERVISED)]
    return str(s.loc[s["val_acc"] == s["val_acc"].max(), "model"].iloc[-1])
