"""Noisy vs un-noised students over several seeds (a benchmark, run by hand; not in CI).

Runs the same stage functions `dvc repro` runs, in-process, in a temporary folder, once per
seed with the student noise as in params.yaml and once with all student noise off, and prints
JSON: per seed the teacher and student accuracies (validation and test), then mean +- std of
the best student's gain over the teacher. Seeds vary the data split and the training seed.

    python benchmarks/noise_ablation.py --seeds 0 1 2
    python benchmarks/noise_ablation.py -S teacher.steps=300 -S noise.randaugment_m=12   # tuning (read val_*)
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NS_QUIET", "1")

from noisystudent.params import Params  # noqa: E402
from noisystudent.checkpoint import load_model  # noqa: E402
from noisystudent.data import Prepared  # noqa: E402
from noisystudent.inference import accuracy  # noqa: E402
from stages.evaluate import run as evaluate_stage  # noqa: E402
from stages.prepare import run as prepare_stage  # noqa: E402
from stages.pseudo_label import run as pseudo_label_stage  # noqa: E402
from stages.select import run as select_stage  # noqa: E402
from stages.train import run as train_stage  # noqa: E402
from noisystudent.transforms import eval_transform  # noqa: E402

NO_NOISE = {"noise.randaugment_n": 0, "noise.dropout": 0.0, "noise.drop_path": 0.0}
NOISE_KEYS = ("randaugment_n", "randaugment_m", "dropout", "drop_path")


def override(raw: dict, key: str, value) -> None:
    node = raw
    *path, last = key.split(".")
    for k in path:
        node = node[k]
    node[last] = value


def run_once(raw: dict, work: Path) -> dict:
    p = Params.model_validate(raw)
    data = work / "data"
    prepare_stage(p, data)
    train_stage(p, "teacher", data, work / "teacher.pt", work / "teacher.json")
    out = {}
    for name in ["teacher", *p.iterations]:
        if name != "teacher":
            it = p.iterations[name]
            pseudo_label_stage(p, name, data, work / f"{it.teacher}.pt", work / f"{name}_labels")
            select_stage(p, name, data, work / f"{name}_labels", work / f"{name}_sel.parquet", work / f"{name}_sel.json")
            train_stage(p, name, data, work / f"{name}.pt", work / f"{name}.json", work / f"{name}_sel.parquet",
                        teacher_ckpt=work / f"{it.teacher}.pt")
        m = evaluate_stage(p, name, data, work / f"{name}.pt", work / f"{name}_eval.json", work / f"{name}_pred.csv")
        model, ckpt = load_model(work / f"{name}.pt")
        val = accuracy(model, Prepared.load(data), "val", eval_transform(ckpt["data_config"]))
        out[name] = {"val": val, "test": m["top1"]}
    return out


def main(
    seeds: Annotated[list[int], typer.Option(help="seeds (data split and training)")] = [0, 1, 2],
    set_: Annotated[list[str], typer.Option("-S", "--set", help="override params, key=value (YAML value)")] = [],
    params: Annotated[Path, typer.Option(help="base params.yaml")] = Path("params.yaml"),
    variants: Annotated[list[str], typer.Option(help="noised, no_noise, noised_teacher")] = ["noised", "no_noise"],
):
    base = yaml.safe_load(params.read_text())
    base["mlflow"]["enabled"] = False
    for s in set_:
        k, v = s.split("=", 1)
        override(base, k, yaml.safe_load(v))
    results: dict[str, list] = {v: [] for v in variants}
    t0 = time.perf_counter()
    for variant in variants:
        for seed in seeds:
            raw = json.loads(json.dumps(base))
            override(raw, "data.seed", seed)
            override(raw, "train.seed", seed)
            if variant == "no_noise":  # students without any noise
                for k, v in NO_NOISE.items():
                    override(raw, k, v)
            elif variant == "noised_teacher":  # the teacher trained with the students' noise too
                for k in NOISE_KEYS:
                    override(raw, f"teacher.{k}", raw["noise"][k])
            elif variant != "noised":
                raise typer.BadParameter(f"unknown variant {variant!r}: noised, no_noise or noised_teacher")
            with tempfile.TemporaryDirectory() as d:
                r = run_once(raw, Path(d))
            students = [v for k, v in r.items() if k != "teacher"]
            best = max(students, key=lambda s: s["val"])  # picked on validation, never on test
            row = {"seed": seed, **{f"{k}_{s}": round(v[s], 4) for k, v in r.items() for s in ("val", "test")},
                   "gain_test_best_val_student": round(best["test"] - r["teacher"]["test"], 4),
                   "gain_test_best_student": round(max(s["test"] for s in students) - r["teacher"]["test"], 4)}
            results[variant].append(row)
            print(json.dumps({variant: row}), flush=True)
    summary = {}
    for variant, rows in results.items():
        if not rows:
            continue
        for key in ("teacher_test", "gain_test_best_student", "gain_test_best_val_student"):
            vals = [r[key] for r in rows]
            summary[f"{variant}.{key}"] = {"mean": round(statistics.mean(vals), 4),
                                           "std": round(statistics.stdev(vals), 4) if len(vals) > 1 else 0.0}
        best = [max(r[k] for k in r if k.endswith("_test") and not k.startswith("teacher")) for r in rows]
        summary[f"{variant}.best_student_test"] = {"mean": round(statistics.mean(best), 4),
                                                   "std": round(statistics.stdev(best), 4) if len(best) > 1 else 0.0}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({"overrides": set_, "seeds": seeds, "summary": summary}, indent=2))


if __name__ == "__main__":
    typer.run(main)
