"""The paper's ablations as named suites of DVC experiments: what each variant overrides
(`dvc exp run -S key=value`), how a suite expands over seeds into experiment names, and how
finished experiments (from `dvc exp show --json`) are read back into one row each. Pure
functions; the commands that queue and report are in `__main__.py`."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict = field(default_factory=dict)  # dotted params key -> value
    note: str = ""  # what it tests, for the report


# every seed varies the split, the training draws and the balancing draws together
SEED_KEYS = ("data.seed", "train.seed", "select.seed")
# students as large as the teacher, and the baseline in their architecture (the paper's comparison)
EQUAL = {"iterations.s2.arch": "ns_resnet_s", "iterations.s3.arch": "ns_resnet_s", "baseline.arch": "ns_resnet_s"}

# the official code's pseudo-label settings (soft targets at T = 1, threshold 0.3): the pseudo
# suite varies each from here, so its findings keep their meaning when params.yaml's defaults move
OFFICIAL_PSEUDO = {"student.targets": "soft", "pseudo.temperature": 1.0, "select.threshold": 0.3}
# keys that change how fast, never what (or that DVC's run cache is blind to and the teacher's
# figures reveal): two runs of one recipe may differ in them
NOT_RECIPE = ("train.num_threads", "speed.", "mlflow.")

SUITES: dict[str, list[Variant]] = {
    "noise": [
        Variant("full", {}, "the default: RandAugment, dropout and stochastic depth on the student"),
        Variant("no-randaugment", {"noise.randaugment_n": 0}, "input noise removed"),
        Variant("no-dropout", {"noise.dropout": 0.0}, "dropout removed"),
        Variant("no-stochastic-depth", {"noise.drop_path": 0.0}, "stochastic depth removed"),
        Variant("no-noise", {"noise.randaugment_n": 0, "noise.dropout": 0.0, "noise.drop_path": 0.0}, "all student noise removed"),
        Variant("teacher-noised", {"pseudo.noised": True}, "the teacher labels with its own noise on (the paper: never)"),
    ],
    # one chain of three gives all three points: a model does not depend on the iterations after it
    "iterations": [Variant("chain", {}, "accuracy after 1, 2 and 3 iterations of the default chain")],
    # pinned to the official settings, whatever params.yaml holds: each variant changes one of them
    "pseudo": [
        Variant("soft", dict(OFFICIAL_PSEUDO), "soft pseudo labels at T = 1, threshold 0.3 (the official settings)"),
        Variant("hard", {**OFFICIAL_PSEUDO, "student.targets": "hard"}, "hard (one-hot, smoothed) pseudo labels"),
        Variant("temperature-0.5", {**OFFICIAL_PSEUDO, "pseudo.temperature": 0.5}, "sharper soft labels"),
        Variant("temperature-2", {**OFFICIAL_PSEUDO, "pseudo.temperature": 2.0}, "flatter soft labels"),
        Variant("threshold-0", {**OFFICIAL_PSEUDO, "select.threshold": 0.0}, "no confidence filter"),
        Variant("threshold-0.5", {**OFFICIAL_PSEUDO, "select.threshold": 0.5}, "a stricter filter"),
        Variant("threshold-0.7", {**OFFICIAL_PSEUDO, "select.threshold": 0.7}, "a much stricter filter"),
    ],
    "data": [
        Variant("balanced", {}, "the official balancing (default)"),
        Variant("unbalanced", {"select.balance": False}, "every image above the threshold, once"),
        *[Variant(f"fraction-1/{d}", {"select.unlabeled_fraction": 1 / d}, f"1/{d} of the unlabeled pool")
          for d in (2, 4, 8, 16)],
        Variant("ratio-1", {"student.batch_ratio": 1}, "unlabeled:labeled batch 1"),
        Variant("ratio-5", {"student.batch_ratio": 5}, "unlabeled:labeled batch 5 (default 3)"),
    ],
    "model": [
        Variant("larger", {}, "students larger than the teacher from the second iteration (default)"),
        Variant("equal", dict(EQUAL), "every student the teacher's size"),
        Variant("init-from-teacher", {**EQUAL, "student.init": "teacher"}, "equal-size students initialised from their teacher"),
    ],
    # the teacher's size varied with the students fixed (every student ns_resnet_m)
    "teacher": [
        Variant("students-m", {"iterations.s1.arch": "ns_resnet_m"}, "every student ns_resnet_m, the default teacher (ns_resnet_s)"),
        Variant("larger-teacher", {"teacher.arch": "ns_resnet_m", "iterations.s1.arch": "ns_resnet_m"},
                "the same students, a teacher of their size (ns_resnet_m)"),
    ],
    "schedule": [
        Variant("joint", {}, "labeled and pseudo-labeled batches in every step (default)"),
        Variant("finetune", {"student.schedule": "finetune"}, "half the steps on the pseudo labels alone, then half on the labels alone"),
    ],
    # the supervised baseline runs in every experiment (stage train_baseline); alone it is the default run
    "baseline": [Variant("supervised", {}, "the teacher's recipe on the labeled images alone, in the students' architecture")],
    # candidate recipes for the default, ranked on validation alone by `tune` (tuning.py); a name
    # shared with another suite is the same experiment (the same overrides)
    "tune": [
        Variant("current", {}, "the recipe in params.yaml (hard labels, threshold 0.7: the first round's choice)"),
        Variant("official", {**OFFICIAL_PSEUDO}, "soft labels at T = 1, threshold 0.3 (the official settings; the first round's start)"),
        Variant("soft-0.7", {"student.targets": "soft"}, "soft labels at T = 1, the same filter"),
        Variant("hard-0.5", {"select.threshold": 0.5}, "a looser filter"),
        Variant("hard-0.9", {"select.threshold": 0.9}, "a stricter filter"),
        Variant("hard-no-smoothing", {"train.label_smoothing": 0.0}, "no label smoothing (of the labels and the hard pseudo labels)"),
        Variant("hard-longer", {"student.steps": 400}, "a third more student steps (a longer dvc repro)"),
        # the first round (commit in docs/ablations.md) ran current = official, temperature 0.5, hard, thresholds
        # 0.5 and 0.7, 0.7 with hard labels (chosen), no smoothing, RandAugment magnitude 15 and lr 0.1
    ],
}


def format_value(v) -> str:
    """A params value as Hydra's override grammar reads it back to the same YAML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)  # 0.0, not 0: the key's type stays float
    return str(v)


def experiment_name(v: Variant, seed: int) -> str:
    """Named after what it changes, not after its suite: the default variant of every suite
    (noise full, iterations chain, soft labels, balanced, larger, supervised) is one
    experiment, `default-seed<N>`, run once. DVC names become git refs: letters, digits, '-',
    '_' and '.' only."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{v.name if v.overrides else 'default'}-seed{seed}")


@dataclass(frozen=True)
class Run:
    name: str
    suite: str
    variant: str
    seed: int
    overrides: dict

    def set_args(self) -> list[str]:
        """`-S key=value` for every override and seed key, sorted: the same run, the same line."""
        args = []
        for k, v in sorted(self.overrides.items()):
            args += ["-S", f"{k}={format_value(v)}"]
        return args


def expand(suite: str, seeds: list[int]) -> list[Run]:
    """Every (variant, seed) of `suite`, with its experiment name and overrides."""
    if suite not in SUITES:
        raise KeyError(f"unknown suite {suite!r}: one of {', '.join(SUITES)}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}")
    return [Run(experiment_name(v, s), suite, v.name, s, {**v.overrides, **{k: s for k in SEED_KEYS}})
            for v in SUITES[suite] for s in seeds]


def iterations_of(params: dict) -> list[str]:
    """The chain's student names, in order, from a record's flattened params (`iterations.s1.arch`, ...)."""
    seen = []
    for k in params:
        if k.startswith("iterations.") and k.count(".") == 2:
            name = k.split(".")[1]
            if name not in seen:
                seen.append(name)
    return seen


def _teacher_of(rec: dict) -> tuple:
    """What identifies the teacher an experiment trained or restored: its test figures."""
    m = rec.get("metrics") or {}
    return m.get("metrics/summary.json:teacher_test_acc"), m.get("metrics/summary.json:test_ece.teacher")


def same_recipe(variant_rec: dict, default_rec: dict, overrides: dict) -> bool:
    """Whether a variant's run is the default run plus the variant's overrides: every params key
    the variant does not override is equal in both (keys of NOT_RECIPE aside)."""
    a, b = variant_rec.get("params") or {}, default_rec.get("params") or {}
    return all(a.get(k) == b.get(k) for k in set(a) | set(b)
               if k not in overrides and not any(k == n or k.startswith(n) for n in NOT_RECIPE))


def realises(rec: dict, overrides: dict) -> bool:
    """Whether run `rec`'s params hold every value of `overrides` (it is a run of that variant)."""
    p = rec.get("params") or {}
    return all(p.get(k) == v for k, v in overrides.items())


def suite_records(records: list[dict], suite: str, seeds: list[int]):
    """(variant, seed, experiment name, its record or None) for every variant x seed of `suite`,
    in suite order: the lookup every report over a suite starts from. Each variant's newest run
    under its name. The shared default (`default-seed<N>`, run again on every pipeline change)
    is the run that fits the suite's other variants of that seed best: first their recipe less
    their overrides (`same_recipe`: a default run made after params.yaml's defaults moved is
    never compared with variants of the earlier defaults), then their teacher (the same figures:
    a later default may have restored its stages from a run made with another thread count,
    whose numbers differ, and a comparison must share everything upstream of what it varies),
    then their commit, then the newest. A variant pinned to settings a default run had (the
    pseudo suite's `soft`) with no run of its own is that default run, chosen the same way."""
    by_name = newest_by_name(records)
    for s in seeds:
        default = experiment_name(Variant("default", {}, ""), s)
        defaults = [r for r in records if r["name"] == default and r["status"] == "success"]
        others = [(by_name[n], v) for v in SUITES[suite] if v.overrides and (n := experiment_name(v, s)) in by_name]

        def fit(r: dict, overrides: dict) -> tuple:
            return (sum(same_recipe(o, r, {**overrides, **v.overrides}) for o, v in others),
                    sum(_teacher_of(o) == _teacher_of(r) for o, _ in others),
                    sum(o.get("baseline") == r.get("baseline") for o, _ in others), r.get("timestamp") or "")

        for v in SUITES[suite]:
            name = experiment_name(v, s)
            stand_ins = [r for r in defaults if realises(r, v.overrides)]
            if not v.overrides and others and stand_ins:
                by_name = {**by_name, name: max(stand_ins, key=lambda r: fit(r, {}))}
            elif v.overrides and name not in by_name and stand_ins:
                by_name = {**by_name, name: max(stand_ins, key=lambda r: fit(r, v.overrides))}
    for v in SUITES[suite]:
        for s in seeds:
            name = experiment_name(v, s)
            yield v, s, name, by_name.get(name)


def queue_plan(suites: list[str], seeds: list[int]) -> list[Run]:
    """The experiments to queue for these suites: one per name, in suite order."""
    seen: dict[str, Run] = {}
    for s in suites:
        for r in expand(s, seeds):
            seen.setdefault(r.name, r)
    return list(seen.values())


# ---- reading `dvc exp show --json` -----------------------------------------------------


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _record(rev: dict, state: str | None) -> dict:
    data = rev.get("data") or {}
    metrics = {}
    for path, m in (data.get("metrics") or {}).items():
        metrics.update({f"{path}:{k}": v for k, v in _flatten((m or {}).get("data")).items()})
    params = _flatten(((data.get("params") or {}).get("params.yaml") or {}).get("data"))
    error = rev.get("error") or data.get("error")
    status = "failed" if (state or "").lower() == "failed" or error else (state or "success").lower()
    return {"name": rev.get("name") or data.get("name"), "rev": rev.get("rev"), "status": status,
            "timestamp": data.get("timestamp") or "",
            "params": params, "metrics": metrics, "error": (error or {}).get("msg") if isinstance(error, dict) else error}


def experiments_from_show(show: list | str) -> list[dict]:
    """Every experiment in `dvc exp show --json` output: name, status (success, failed,
    queued, running), flat params and metrics (`file:key`). Baseline rows are left out."""
    if isinstance(show, str):
        show = json.loads(show)
    out = []
    for base in show:
        for exp in base.get("experiments") or []:
            state = (exp.get("executor") or {}).get("state")
            revs = exp.get("revs") or []
            for rev in revs[:1]:  # the experiment's own commit (the rest are its history)
                rec = _record(rev, state)
                rec["name"] = rec["name"] or exp.get("name")
                rec["baseline"] = base.get("rev")
                out.append(rec)
    return out


def newest_by_name(records: list[dict]) -> dict[str, dict]:
    """One record per experiment name: the newest run of it. A name re-run on a later commit
    (changed code) supersedes the earlier run; one still queued or running (no timestamp yet)
    supersedes every finished one, so a report never mixes in the result it is replacing."""
    def age(r: dict) -> tuple[bool, str]:  # pending sorts after every timestamp
        return not r.get("timestamp"), r.get("timestamp") or ""

    out: dict[str, dict] = {}
    for r in sorted(records, key=age, reverse=True):  # stable: of equal ages, the first listed
        out.setdefault(r["name"], r)
    return out
