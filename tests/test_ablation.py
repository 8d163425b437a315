"""Ablation suites: the -S overrides each expands to, reading `dvc exp show --json`, and the
report builder on a small fixture of experiment results, with a missing and a failed run."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from noisystudent.ablation import SUITES, expand, experiments_from_show, format_value, queue_plan
from noisystudent.ablation_report import build, collect, findings, table

SEEDS = [0, 1, 2]


def test_noise_suite_expands_to_the_papers_noise_table():
    runs = {(r.variant, r.seed): r for r in expand("noise", SEEDS)}
    assert len(runs) == 6 * 3
    seed_args = lambda s: ["-S", f"data.seed={s}", "-S", f"select.seed={s}", "-S", f"train.seed={s}"]  # noqa: E731
    assert runs["full", 1].set_args() == seed_args(1) and runs["full", 1].name == "default-seed1"
    assert runs["no-dropout", 2].set_args() == ["-S", "data.seed=2", "-S", "noise.dropout=0.0", "-S", "select.seed=2", "-S", "train.seed=2"]
    assert runs["no-noise", 0].set_args() == ["-S", "data.seed=0", "-S", "noise.drop_path=0.0", "-S", "noise.dropout=0.0",
                                              "-S", "noise.randaugment_n=0", "-S", "select.seed=0", "-S", "train.seed=0"]
    assert "-S" in runs["teacher-noised", 0].set_args() and "pseudo.noised=true" in runs["teacher-noised", 0].set_args()
    assert runs["no-stochastic-depth", 1].overrides["noise.drop_path"] == 0.0


def test_other_suites_expand_to_their_overrides():
    data = {r.variant: r for r in expand("data", [0])}
    assert "select.unlabeled_fraction=0.0625" in data["fraction-1/16"].set_args()
    assert "select.balance=false" in data["unbalanced"].set_args() and "student.batch_ratio=5" in data["ratio-5"].set_args()
    assert data["fraction-1/16"].name == "fraction-1_16-seed0"  # a git ref: no '/'
    model = {r.variant: r for r in expand("model", [0])}
    assert {"iterations.s2.arch=ns_resnet_s", "iterations.s3.arch=ns_resnet_s", "student.init=teacher"} <= set(model["init-from-teacher"].set_args())
    pseudo = {r.variant: r for r in expand("pseudo", [0])}
    assert "student.targets=hard" in pseudo["hard"].set_args() and "select.threshold=0.0" in pseudo["threshold-0"].set_args()
    assert [v.name for v in SUITES["iterations"]] == ["chain"] and SUITES["iterations"][0].overrides == {}


def test_every_suites_default_variant_is_one_experiment():
    plan = queue_plan(["noise", "iterations", "baseline"], SEEDS)
    names = [r.name for r in plan]
    assert len(names) == len(set(names)) == 6 * 3  # iterations and baseline add no run
    assert sum(n.startswith("default-") for n in names) == 3


def test_bad_suite_and_seeds():
    with pytest.raises(KeyError, match="unknown suite 'nois'"):
        expand("nois", SEEDS)
    with pytest.raises(ValueError, match="seeds repeat"):
        expand("noise", [0, 0])


@pytest.mark.parametrize("value, text", [(True, "true"), (False, "false"), (0.0, "0.0"), (0, "0"), (None, "null"), ("hard", "hard"), (1 / 16, "0.0625")])
def test_values_read_back_as_yaml_does(value, text):
    import yaml

    assert format_value(value) == text and yaml.safe_load(text) == value


# ---- a small `dvc exp show --json` fixture -------------------------------------------------

def exp_state(name, params, metrics, error=None):
    return {"rev": f"{abs(hash(name)):040x}"[:40], "name": name, "error": error, "experiments": None,
            "data": None if error else {"rev": "x", "params": {"params.yaml": {"data": params}},
                                         "metrics": {k: {"data": v} for k, v in metrics.items()}, "deps": {}, "outs": {}, "meta": {}}}


def fake_run(seed, acc, teacher=0.80, baseline=0.84, pl=0.9, per=(0.85, 0.87)):
    its = {"s1": {"teacher": "teacher", "arch": "a"}, "s2": {"teacher": "s1", "arch": "a"}, "s3": {"teacher": "s2", "arch": "a"}}
    # the official pseudo-label settings, as params.yaml held them before tuning
    params = {"data": {"seed": seed}, "iterations": its, "student": {"targets": "soft"}, "pseudo": {"temperature": 1.0},
              "select": {"threshold": 0.3}}
    accs = [*per, acc]
    names = [f"s{i + 1}" for i in range(len(accs))]
    metrics = {"metrics/summary.json": {"teacher_test_acc": teacher, "baseline_test_acc": baseline,
                                        "test_acc": dict(zip(names, accs)), "test_ece": {n: 0.2 for n in names},
                                        "pseudo_label_acc": {"s3": pl}, "oracle_test_acc": 0.98, "best_student_test_acc": max(accs)}}
    return params, metrics


def show_fixture():
    exps = []
    def add(name, seed, acc, state="success", **kw):
        p, m = fake_run(seed, acc, **kw)
        err = {"msg": "failed to reproduce 'train_student@s1'", "type": "ReproductionError"} if state == "failed" else None
        exps.append({"revs": [exp_state(name, p, m, err)], "executor": {"state": state, "name": None, "local": None}, "name": name})
    for s, a in zip(SEEDS, (0.88, 0.89, 0.90)):
        add(f"default-seed{s}", s, a, pl=0.93)
    for s, a in zip(SEEDS, (0.85, 0.86, 0.87)):
        add(f"no-noise-seed{s}", s, a, pl=0.91)
    add("no-dropout-seed0", 0, 0.87)
    add("no-dropout-seed1", 1, 0.895)
    add("no-dropout-seed2", 2, 0.0, state="failed")
    # no-randaugment-* and teacher-noised-* missing; no-stochastic-depth-seed0 still queued
    exps.append({"revs": [{"rev": "q" * 40, "name": "no-stochastic-depth-seed0", "data": None, "error": None, "experiments": None}],
                 "executor": {"state": "queued"}, "name": "no-stochastic-depth-seed0"})
    return json.dumps([{"rev": "workspace", "name": None, "data": None, "error": None, "experiments": None},
                       {"rev": "b" * 40, "name": "main", "data": None, "error": None, "experiments": exps}])


def test_reading_dvc_exp_show():
    recs = {r["name"]: r for r in experiments_from_show(show_fixture())}
    assert len(recs) == 10
    assert recs["default-seed1"]["status"] == "success" and recs["default-seed1"]["params"]["data.seed"] == 1
    assert recs["default-seed1"]["metrics"]["metrics/summary.json:test_acc.s3"] == 0.89
    assert recs["no-dropout-seed2"]["status"] == "failed" and "train_student@s1" in recs["no-dropout-seed2"]["error"]
    assert recs["no-stochastic-depth-seed0"]["status"] == "queued"


def test_report_builder_counts_what_finished_and_lists_the_rest(tmp_path):
    recs = experiments_from_show(show_fixture())
    frame, problems = collect(recs, "noise", SEEDS)
    assert len(frame) == 3 + 3 + 2
    text = "\n".join(problems)
    assert "`no-dropout-seed2` (no-dropout, seed 2): failed: failed to reproduce 'train_student@s1'" in text
    assert "`no-randaugment-seed0` (no-randaugment, seed 0): no such experiment" in text
    assert "`no-stochastic-depth-seed0` (no-stochastic-depth, seed 0): queued" in text
    assert len(problems) == 3 + 3 + 1 + 3  # failed, randaugment x3, queued + 2 missing sd, teacher-noised x3

    t = table(frame, "noise", SEEDS).set_index("variant")
    assert t.loc["full", "seeds"] == "3/3" and t.loc["full", "test top-1 %"] == "89.0 ± 1.0"
    assert t.loc["full", "gain over teacher (points)"] == "+9.0 ± 1.0" and t.loc["full", "gain over baseline (points)"] == "+5.0 ± 1.0"
    assert t.loc["no-dropout", "seeds"] == "2/3" and t.loc["no-dropout", "test top-1 %"] == f"{100 * np.mean([0.87, 0.895]):.1f} ± {100 * np.std([0.87, 0.895], ddof=1):.1f}"
    assert t.loc["teacher-noised", "seeds"] == "0/3" and t.loc["teacher-noised", "test top-1 %"] == "n/a"

    f = "\n".join(x.line for x in findings(frame, "noise"))
    # no per-image predictions here: a t interval over the per-seed differences, said so
    assert "Removing all noise lowers accuracy" in f and "**supported**. full − no-noise: +3.00 points [95 % CI +3.00, +3.00]" in f
    assert "t interval over 3 seeds (per-image predictions unavailable)" in f
    # seed 0: 88 vs 87; seed 1: 89 vs 89.5: the interval holds 0 (it was "mixed (1/2 seeds)")
    assert "Removing dropout lowers accuracy (the paper: performance consistently drops with noise removed): **not distinguishable at this size**" in f
    assert "cannot be judged here (full and teacher-noised" in f

    page = build(recs, ["noise", "iterations"], SEEDS, tmp_path / "abl").read_text()
    assert "## noise" in page and "## iterations" in page and "Not counted:" in page and "![iterations](iterations.png)" in page
    assert "Iteration 1 improves on the model before it (the paper: iterative training helps, 3 iterations on ImageNet): **supported**, s1 − teacher: +" in page
    found = pd.read_csv(tmp_path / "abl/findings.csv")  # the same findings as data, for the README
    assert list(found["suite"].unique()) == ["noise", "iterations"] and len(found) == 6 + 3
    row = found[found["comparison"] == "full − no-noise"].iloc[0]
    assert (row["verdict"], row["seeds"]) == ("supported", 3) and np.allclose(row[["effect_points", "ci_low", "ci_high"]].astype(float), 3.0)
    assert found[found["comparison"] == "full − teacher-noised"]["verdict"].tolist() == ["cannot be judged"] * 2
    assert (tmp_path / "abl/iterations.png").stat().st_size > 0


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_variant_is_valid_params(tmp_path, suite):
    """Each variant's overrides on the repository's params.yaml pass the params reader, so no
    queued experiment can fail on a typo'd key or a value out of range."""
    import yaml

    from conftest import ROOT
    from noisystudent.params import load_params

    for run in expand(suite, [1]):
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        for key, value in run.overrides.items():
            node, *path = raw, *key.split(".")
            for k in path[:-1]:
                node = node[k]
            assert path[-1] in node or key in ("pseudo.noised", "select.balance", "select.unlabeled_fraction", "student.init"), key
            node[path[-1]] = yaml.safe_load(format_value(value))  # what `-S key=value` writes
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        p = load_params(tmp_path / "params.yaml")
        assert p.train.seed == p.data.seed == p.select.seed == 1, run.name


def test_findings_use_per_image_predictions_when_there_are_some():
    """With each experiment's per-image outcomes, a finding is judged by a paired bootstrap:
    one more image right per seed (+0.25 points on 400) is not evidence, a consistent +10
    points is."""
    recs = experiments_from_show(show_fixture())
    base = np.random.default_rng(0).random(400) < 0.85

    def outcomes(rec, model):
        out = base.copy()
        if rec["name"].startswith("default") and model == "s3":
            out[np.flatnonzero(~base)[:1]] = True  # one image better than no-noise
        if model == "baseline":
            out[np.flatnonzero(base)[:40]] = False  # 10 points worse than every student
        return out.astype(float)

    frame, _ = collect(recs, "noise", SEEDS, outcomes)
    f = "\n".join(x.line for x in findings(frame, "noise"))
    assert "Removing all noise lowers accuracy (the paper: performance consistently drops with noise removed): **not distinguishable at this size**" in f
    assert "paired bootstrap over 3 seeds and 1,200 test images" in f
    frame, _ = collect(recs, "baseline", SEEDS, outcomes)
    (line,) = [x.line for x in findings(frame, "baseline")]
    assert "**supported**, +10.25 points" in line


def test_tuning_chooses_on_validation_alone():
    """A candidate that is best on test but not on validation is not chosen; the report's
    figures are means over seeds; screening ranks before all seeds are in."""
    from noisystudent.ablation import SUITES, experiment_name
    from noisystudent.tuning import chosen, collect, goal_met, rank, table

    names = [v.name for v in SUITES["tune"]]
    assert names[0] == "current" and experiment_name(SUITES["tune"][0], 3) == "default-seed3"
    figs = {"current": (0.95, 0.93), "soft-0.7": (0.97, 0.90), "hard-longer": (0.93, 0.99)}  # (val, test)
    records = []
    for v in SUITES["tune"]:
        for s in (0, 1, 2):
            if v.name not in figs or (v.name == "hard-longer" and s > 0):
                continue
            val, test = figs[v.name]
            m = {"best_student_val_acc": val + 0.01 * s, "best_student_test_acc": test, "teacher_test_acc": 0.8,
                 "baseline_test_acc": 0.86, "oracle_test_acc": 0.99, "test_acc.s1": test - 0.01, "test_acc.teacher": 0.8}
            records.append({"name": experiment_name(v, s), "status": "success", "params": {"iterations.s1.teacher": "teacher"},
                            "metrics": {f"metrics/summary.json:{k}": x for k, x in m.items()}})
    records.append({"name": experiment_name(SUITES["tune"][3], 0), "status": "failed", "metrics": {}})
    frame, problems = collect(records, [0, 1, 2])
    assert "student s1" in frame and "student teacher" not in frame and frame["student s1"].tolist() == pytest.approx((frame["test"] - 0.01).tolist())
    assert list(rank(frame)["candidate"]) == ["soft-0.7", "current", "hard-longer"]
    assert chosen(frame, min_seeds=3) == "soft-0.7"  # the best test (hard-longer, one seed) chooses nothing
    assert chosen(frame, min_seeds=1) == "soft-0.7"
    assert any("hard-0.5-seed0`: failed" in p for p in problems)
    t = table(frame).set_index("candidate")
    assert t.loc["soft-0.7", "best student val %"] == "98.00 ± 1.00" and t.loc["hard-longer", "seeds"] == 1
    g = goal_met(frame, "soft-0.7")
    assert g["gap_to_oracle"] == pytest.approx(0.09) and not g["within_gap"] and g["gain_over_baseline"] == pytest.approx(0.04) and g["gain_reached"]
    assert g["where"] == "tuning seeds"


def test_held_out_seeds_judge_the_chosen_recipe_and_choose_nothing():
    """The choice is made on the tuning seeds' validation alone; the before-and-after table and the
    goal read the held-out seeds, and a held-out run's validation (however high) changes no choice."""
    import pandas as pd

    from noisystudent.tuning import before_after, chosen, goal_met, rank, table

    def row(c, s, role, val, test):
        return {"candidate": c, "seed": s, "experiment": f"{c}-{s}", "role": role, "val": val, "test": test,
                "teacher": 0.8, "baseline": 0.85, "oracle": 0.99, "student s1": test - 0.02}

    rows = [row(c, s, "tuning", v, t) for c, v, t in (("current", 0.95, 0.90), ("hard", 0.97, 0.98)) for s in (0, 1, 2)]
    rows += [row("current", s, "held-out", 1.0, 0.92) for s in (3, 4, 5)]  # current's held-out val would win
    rows += [row("hard", s, "held-out", 0.9, 0.95 + 0.01 * (s - 4)) for s in (3, 4, 5)]
    frame = pd.DataFrame(rows)
    assert chosen(frame, min_seeds=3) == "hard" and list(rank(frame)["count"]) == [3, 3]
    assert set(table(frame)["best student test %"]) == {"98.00 ± 0.00", "90.00 ± 0.00"}  # tuning seeds only
    g = goal_met(frame, "hard")
    assert g["where"] == "held-out seeds" and g["gap_to_oracle"] == pytest.approx(0.04) and not g["within_gap"]
    ba = before_after(frame, 3).set_index("recipe")
    assert list(ba["seeds"]) == ["3 held-out (3, 4, 5)"] * 2
    assert ba.loc["after tuning (`hard`, chosen on validation)", "best student %"] == "95.00 ± 1.00"
    assert ba.loc["before tuning (`current`: the recipe it started from)", "best student %"] == "92.00 ± 0.00"
    assert ba.loc["before tuning (`current`: the recipe it started from)", "student s1 %"] == "90.00 ± 0.00"  # every student
    # a table written before held-out seeds existed has no role column: all of it is tuning
    old = frame[frame["role"] == "tuning"].drop(columns="role")
    assert goal_met(old, "hard")["where"] == "tuning seeds" and before_after(old, 3)["seeds"].iloc[1] == "3 tuning (0, 1, 2)"


def test_tune_refuses_held_out_seeds_that_are_tuning_seeds():
    from typer.testing import CliRunner

    from noisystudent.__main__ import cli

    r = CliRunner().invoke(cli, ["tune", "--report-only", "--seed", "0", "--seed", "3", "--held-out-seed", "3"])
    assert r.exit_code == 1 and "--held-out-seed: seeds [3] are also tuning seeds" in r.output


def test_readme_results_block_is_written_from_the_tuning_runs(tmp_path):
    """The README's results are means ± std over seeds from the tuning runs table, before and
    after tuning, written between the markers and nowhere else."""
    import pandas as pd
    from typer.testing import CliRunner

    from noisystudent.__main__ import cli

    rows = [{"candidate": c, "seed": s, "experiment": f"{c}-{s}", "val": v + 0.01 * s, "test": t + 0.01 * s,
             "teacher": 0.8, "baseline": 0.85, "oracle": 0.99}
            for c, v, t in (("current", 0.95, 0.90), ("hard", 0.97, 0.93)) for s in (0, 1, 2)]
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nintro\n<!-- results:begin -->\nold typed figures\n<!-- results:end -->\n\nrest\n")
    args = ["readme-results", "--runs", str(tmp_path / "runs.csv"), "--findings", str(tmp_path / "findings.csv"), "--readme", str(readme)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "findings.csv is missing" in r.output and "old typed figures" in readme.read_text()
    build(experiments_from_show(show_fixture()), ["noise", "iterations"], SEEDS, tmp_path / "abl")
    (tmp_path / "abl/findings.csv").rename(tmp_path / "findings.csv")
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    text = readme.read_text()
    assert text.startswith("# x\n\nintro\n<!-- results:begin -->\n") and text.endswith("<!-- results:end -->\n\nrest\n")
    assert "old typed figures" not in text and "after tuning (`hard`, chosen on validation)" in text
    assert "91.00 ± 1.00" in text and "94.00 ± 1.00" in text and "99.00 ± 0.00" in text  # current and hard, mean ± std
    assert "best student on the held-out seeds" not in text  # no effect written by tune: none shown
    (tmp_path / "effect.md").write_text("`hard` − `current`, best student on the held-out seeds: +3.00 points [95 % CI +1.00, +5.00]\n")
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert "`hard` − `current`, best student on the held-out seeds: +3.00 points [95 % CI +1.00, +5.00]" in readme.read_text()
    # the findings, as ablation-report judged them: effect, interval, verdict
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith(("| noise", "| iterations"))]
    assert len(cells) == 6 + 3
    assert ["noise", "full − no-noise", "test top-1", "+3.00 [+3.00, +3.00]", "3", "supported"] in [c[:1] + c[2:] for c in cells]
    assert ["full − no-dropout", "+0.25 [-9.28, +9.78]", "2", "not distinguishable at this size"] in [c[2:3] + c[4:] for c in cells]
    assert ["full − teacher-noised", "n/a", "0", "cannot be judged"] in [c[2:3] + c[4:] for c in cells]
    assert f"]({(tmp_path / 'findings.png').as_posix()})" in text  # the picture beside the table
    readme.write_text("no markers\n")
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "markers" in r.output and readme.read_text() == "no markers\n"


def test_a_name_run_again_on_later_code_supersedes_the_earlier_run():
    """`ablate` re-runs every experiment on a new commit under the same name: reports read the
    newest run of a name, and one still queued hides the finished run it replaces."""
    from noisystudent.ablation import newest_by_name, suite_records

    def base(rev, exps):
        return {"rev": rev, "name": None, "data": None, "error": None, "experiments": exps}

    def exp(name, acc, ts, state="success"):
        p, m = fake_run(0, acc)
        e = exp_state(name, p, m)
        e["data"]["timestamp"] = ts
        return {"revs": [e], "executor": {"state": state}, "name": name}

    old, new = "a" * 40, "b" * 40
    show = [base(new, [exp("default-seed0", 0.91, "2026-12-02T03:00:00")]),
            base(old, [exp("default-seed0", 0.88, "2026-12-01T03:00:00"), exp("hard-seed0", 0.90, "2026-12-01T04:00:00")])]
    recs = experiments_from_show(json.dumps(show))
    assert {(r["name"], r["baseline"]) for r in recs} == {("default-seed0", new), ("default-seed0", old), ("hard-seed0", old)}
    newest = newest_by_name(recs)
    assert newest["default-seed0"]["baseline"] == new and newest["default-seed0"]["metrics"]["metrics/summary.json:test_acc.s3"] == 0.91
    assert newest["hard-seed0"]["baseline"] == old  # not re-run: the earlier run is the one there is
    (row,) = [rec for v, s, n, rec in suite_records(recs, "noise", [0]) if v.name == "full"]
    assert row["baseline"] == new
    show[0]["experiments"].append({"revs": [{"rev": "q" * 40, "name": "hard-seed0", "data": None, "error": None}],
                                   "executor": {"state": "queued"}, "name": "hard-seed0"})
    assert newest_by_name(experiments_from_show(json.dumps(show)))["hard-seed0"]["status"] == "queued"


def test_teacher_and_schedule_suites_and_their_findings():
    teacher = {r.variant: r for r in expand("teacher", [0])}
    assert teacher["students-m"].overrides == {"iterations.s1.arch": "ns_resnet_m", **{k: 0 for k in ("data.seed", "train.seed", "select.seed")}}
    assert teacher["larger-teacher"].overrides["teacher.arch"] == "ns_resnet_m"
    assert {k: v for k, v in teacher["larger-teacher"].overrides.items() if k != "teacher.arch"} == teacher["students-m"].overrides
    schedule = {r.variant: r for r in expand("schedule", [0])}
    assert schedule["joint"].name == "default-seed0" and "student.schedule=finetune" in schedule["finetune"].set_args()

    def show(variants):
        exps = []
        for name, accs in variants.items():
            for s, a in enumerate(accs):
                p, m = fake_run(s, a)
                exps.append({"revs": [exp_state(f"{name}-seed{s}", p, m)], "executor": {"state": "success"}, "name": f"{name}-seed{s}"})
        return experiments_from_show(json.dumps([{"rev": "b" * 40, "name": "main", "data": None, "error": None, "experiments": exps}]))

    frame, problems = collect(show({"larger-teacher": (0.90, 0.91, 0.92), "students-m": (0.85, 0.86, 0.87)}), "teacher", SEEDS)
    assert not problems
    (line,) = [x.line for x in findings(frame, "teacher")]
    assert "A larger teacher helps" in line and "**supported**. larger-teacher − students-m: +5.00 points" in line
    frame, _ = collect(show({"default": (0.88, 0.89, 0.90), "finetune": (0.90, 0.91, 0.92)}), "schedule", SEEDS)
    (line,) = [x.line for x in findings(frame, "schedule")]
    assert "Joint training beats" in line and "**contradicted**. joint − finetune: -2.00 points" in line


def test_ablate_runs_each_experiment_up_to_the_summary(tmp_path, monkeypatch):
    """The queued line: the variant's overrides, the seed keys, the worker's torch threads (they
    change the numbers, and DVC's run cache keys on params: set, an experiment never restores a
    stage run with another count), MLflow off when asked, and the target `summary` (what every
    report reads; galleries and the run page are left unbuilt)."""
    from typer.testing import CliRunner

    from noisystudent.__main__ import cli

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    out = CliRunner().invoke(cli, ["ablate", "schedule", "--seed", "3", "--dry-run", "--no-mlflow", "--jobs", "2"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines == ["dvc exp run --queue -n default-seed3 -S data.seed=3 -S select.seed=3 -S train.seed=3 -S train.num_threads=4 "
                     "-S mlflow.enabled=false summary",
                     "dvc exp run --queue -n finetune-seed3 -S data.seed=3 -S select.seed=3 -S student.schedule=finetune -S train.seed=3 "
                     "-S train.num_threads=4 -S mlflow.enabled=false summary"]
    assert "-S train.num_threads=8 " in CliRunner().invoke(cli, ["ablate", "schedule", "--seed", "3", "--dry-run"]).output
    out = CliRunner().invoke(cli, ["ablate", "schedule", "--seed", "3", "--dry-run"])
    assert "mlflow.enabled" not in out.output and out.output.count(" summary\n") == 2


def test_experiments_stand_until_the_pipeline_changes(tmp_path, monkeypatch):
    """`ablate` counts an experiment of another commit as done when that commit's pipeline
    (dvc.yaml, params.yaml, the stages' code) is this one's: a docs commit re-runs nothing, a
    change to a file a stage depends on re-runs everything."""
    import subprocess

    from noisystudent.__main__ import _same_pipeline

    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()  # noqa: E731
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages/train.py").write_text("x = 1\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: python -m stages.train\n    deps: [stages/train.py, data]\n"
                                       "  evaluate:\n    foreach: [a, b]\n    do:\n      cmd: echo\n      deps: [stages/train.py]\n")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "README.md").write_text("v1\n")
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    first = git("rev-parse", "HEAD")
    monkeypatch.chdir(tmp_path)

    def commit(path, text):
        (tmp_path / path).write_text(text)
        git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", path)

    commit("README.md", "v2\n")
    assert _same_pipeline(first, {})
    for path, text in (("params.yaml", "a: 2\n"), ("stages/train.py", "x = 2\n")):
        git("reset", "-q", "--hard", first)
        commit(path, text)
        assert not _same_pipeline(first, {}), path


def test_report_gives_a_suite_its_own_seeds_and_draws_the_findings(tmp_path):
    """A long suite run on fewer seeds first is reported on those (the page says which), and
    every judged finding is drawn with its interval (findings.png)."""
    from PIL import Image

    from noisystudent import plots

    recs = experiments_from_show(show_fixture())
    page = build(recs, ["noise", "iterations"], SEEDS, tmp_path / "abl", seeds_for={"iterations": [1, 2]}).read_text()
    assert "Suites noise: seeds [0, 1, 2]; iterations: seeds [1, 2]" in page
    assert re.search(r"\| chain +\| 2/2 +\|", page) and "![every finding's effect with its 95 % interval](findings.png)" in page
    found = pd.read_csv(tmp_path / "abl/findings.csv")
    judged = found[found["verdict"] != "cannot be judged"]
    assert len(judged) == 5 and set(found[found["suite"] == "iterations"]["seeds"]) == {2}
    assert Image.open(tmp_path / "abl/findings.png").size == plots.effects_pixel_size(len(judged))


def test_report_opens_with_the_default_recipe_over_its_seeds(tmp_path):
    """Every model of the default experiments as mean ± std, and the best student's distance
    to the oracle and gain over the baseline with an interval over seeds."""
    page = build(experiments_from_show(show_fixture()), ["noise"], SEEDS, tmp_path / "abl").read_text()
    section = page[page.index("## The default recipe"):page.index("## noise")]
    cells = {c[0]: c[1] for c in ([x.strip() for x in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| "))}
    assert cells["teacher"] == "80.00 ± 0.00" and cells["s3"] == "89.00 ± 1.00" and cells["oracle"] == "98.00 ± 0.00"
    assert cells["best student (chosen on validation)"] == "89.00 ± 1.00" and cells["baseline"] == "84.00 ± 0.00"
    # oracle - best: 10, 9, 8; best - baseline: 4, 5, 6 (t interval, 2 degrees of freedom: 2.484 points either side)
    assert "the oracle − the best student +9.00 points [95 % CI +6.52, +11.48]" in section
    assert "the best student − the supervised baseline +5.00 points [95 % CI +2.52, +7.48]" in section


def test_ablate_starts_queue_workers_again_when_one_dies(monkeypatch):
    """A queue worker can die between tasks (kombu's filesystem transport): while tasks of this
    call wait with fewer workers than --jobs for two looks in a row, `ablate` starts workers
    again, and it still waits for every one of its tasks."""
    import noisystudent.__main__ as M
    from noisystudent.ablation import expand

    runs = expand("schedule", [7])  # default-seed7, finetune-seed7
    queued: list[str] = []
    # the queue as `dvc queue status` shows it at each look: (task states, active workers)
    looks = iter([({"aaaa111": "Queued", "bbbb222": "Queued"}, 2), ({"aaaa111": "Running", "bbbb222": "Queued"}, 2),
                  ({"aaaa111": "Success", "bbbb222": "Queued"}, 1), ({"aaaa111": "Success", "bbbb222": "Queued"}, 1),  # a worker died
                  ({"aaaa111": "Success", "bbbb222": "Running"}, 2), ({"aaaa111": "Success", "bbbb222": "Success"}, 1)])
    state = {"now": ({}, 0)}

    def fake_dvc(*args, check=True):
        if args[:2] == ("exp", "show"):
            return "[]"
        if args[:2] == ("exp", "run"):
            queued.append(args[args.index("-n") + 1])
            if len(queued) == len(runs):  # both queued: the first look follows
                state["now"] = next(looks)
            return ""
        assert args == ("queue", "status"), args
        tasks, workers = state["now"]
        names = dict(zip(("aaaa111", "bbbb222"), (r.name for r in runs)))
        lines = ["Task     Name    Created    Status"] + [f"{t}  {names[t]}  05:26 AM  {st}" for t, st in tasks.items()]
        return "\n".join(lines + ["", f"Worker status: {workers} active, 0 idle"])

    started = []

    class FakePopen:
        def __init__(self, cmd, **kw):
            started.append(cmd)
            self.returncode = 0

        def poll(self):
            return None

        def wait(self):
            return 0

    def advance(_):  # each sleep, the next look at the queue
        state["now"] = next(looks, state["now"])

    monkeypatch.setattr(M, "_dvc", fake_dvc)
    monkeypatch.setattr(M, "POLL_S", 0)
    monkeypatch.setattr("subprocess.Popen", FakePopen)
    monkeypatch.setattr("time.sleep", advance)
    M._run_queue(runs, "schedule", jobs=2, mlflow=False)
    assert queued == [r.name for r in runs]
    # workers were active when it began (none started then); one restart after the two short looks
    assert len(started) == 1 and started[0][-3:] == ["start", "-j", "2"], started


def test_a_suite_compares_its_variants_with_the_default_run_they_share_a_teacher_with():
    """The shared default is run again on every pipeline change and may then restore stages made
    with another thread count (another teacher): a suite pairs its variants with the default run
    whose teacher they learned from, then the one of their commit; with no variant run (or only
    the default) it reads the newest."""
    from noisystudent.ablation import suite_records

    def base(rev, exps):
        return {"rev": rev, "name": None, "data": None, "error": None, "experiments": exps}

    def exp(name, acc, ts, teacher):
        p, m = fake_run(0, acc, teacher=teacher)
        e = exp_state(name, p, m)
        e["data"]["timestamp"] = ts
        return {"revs": [e], "executor": {"state": "success"}, "name": name}

    old, mid, new = "a" * 40, "c" * 40, "b" * 40
    show = [base(new, [exp("default-seed0", 0.91, "2026-12-02T03:00:00", 0.8225), exp("equal-seed0", 0.90, "2026-12-02T04:00:00", 0.8225)]),
            base(mid, [exp("finetune-seed0", 0.90, "2026-12-01T05:00:00", 0.82)]),  # no default on its commit
            base(old, [exp("default-seed0", 0.88, "2026-12-01T03:00:00", 0.82), exp("hard-seed0", 0.90, "2026-12-01T04:00:00", 0.82)])]
    recs = experiments_from_show(json.dumps(show))

    def default_of(suite, name="default-seed0"):
        (rec,) = [r for v, s, n, r in suite_records(recs, suite, [0]) if n == name]
        return rec["baseline"]
    assert default_of("pseudo", "soft-seed0") == old  # hard-seed0 learned from the old default's teacher
    assert default_of("schedule") == old  # finetune-seed0 too, though run on a third commit
    assert default_of("model") == new  # equal-seed0 from the new one's
    assert default_of("iterations") == new and default_of("noise") == new  # no variant run: the newest


def test_a_default_run_of_moved_defaults_is_compared_with_nothing_of_the_earlier_defaults():
    """params.yaml's defaults moved (threshold 0.7, hard labels): a newer default run with the
    same teacher is not paired with variants run on the earlier defaults, nor does it stand in
    for the pseudo suite's `soft` (pinned to the official settings); an earlier default run does."""
    from noisystudent.ablation import realises, same_recipe, suite_records

    def exp(name, acc, ts, **params):
        p, m = fake_run(0, acc, teacher=0.82)
        for k, v in params.items():
            section, key = k.split("__")
            p.setdefault(section, {})[key] = v
        e = exp_state(name, p, m)
        e["data"]["timestamp"] = ts
        return {"revs": [e], "executor": {"state": "success"}, "name": name}

    old, new = "a" * 40, "b" * 40
    show = [{"rev": new, "name": None, "data": None, "error": None, "experiments": [
                exp("default-seed0", 0.97, "2026-12-02T09:00:00", select__threshold=0.7, student__targets="hard"),
                # queued before the defaults moved, run after: on the newer commit, the earlier recipe
                exp("no-noise-seed0", 0.85, "2026-12-02T08:00:00", noise__randaugment_n=0)]},
            {"rev": old, "name": None, "data": None, "error": None, "experiments": [
                exp("default-seed0", 0.93, "2026-12-01T03:00:00"),
                exp("hard-seed0", 0.95, "2026-12-01T05:00:00", student__targets="hard")]}]
    recs = experiments_from_show(json.dumps(show))
    tuned, no_noise, earlier = recs[0], recs[1], recs[2]
    assert not same_recipe(no_noise, tuned, {"noise.randaugment_n": 0}) and same_recipe(no_noise, earlier, {"noise.randaugment_n": 0})
    assert not realises(tuned, {"student.targets": "soft", "select.threshold": 0.3}) and realises(earlier, {"select.threshold": 0.3})
    got = {(suite, n): r["baseline"] for suite in ("noise", "pseudo") for v, s, n, r in suite_records(recs, suite, [0]) if r}
    assert got["noise", "default-seed0"] == old  # the newer default, same teacher, is another recipe
    assert got["pseudo", "soft-seed0"] == old and got["pseudo", "hard-seed0"] == old
    assert [n for v, s, n, r in suite_records(recs, "iterations", [0])] == ["default-seed0"]
    assert dict(((n, r["baseline"]) for v, s, n, r in suite_records(recs, "iterations", [0])))["default-seed0"] == new  # alone: the newest
