"""Mutation run over the method's mechanics: each mutation below switches off or alters one
mechanism of Noisy Student (the loss weighting, soft / hard targets and the temperature, the
threshold and the balancing, the three noises, the un-noised teacher, the EMA weights, the chain
of teachers) with a one-line change; a fast test must fail for every one of them.

The repository's files (tracked and untracked-not-ignored, as they are in the working tree) are
copied to a temporary folder; there, one mutation at a time: its old text must be found exactly
once, it is replaced, the pytest selection runs from the copy (cwd = the copy, so `import
noisystudent` is the copy's: a preliminary run with the package made unimportable must fail,
and a run of the unmutated copy must pass), the outcome and the first failing test are
recorded, the file is restored. The repository itself is never written to (except --out).

Exit code 0 when every mutation is killed, 1 when one survives or its text is not found
exactly once, 2 when the unmutated selection fails or the import check does not fail.

    .venv/bin/python benchmarks/mutations.py --out benchmarks/results/mutations.md
    .venv/bin/python benchmarks/mutations.py --only loss-ignores-ratio --only ema-never-updated
    .venv/bin/python benchmarks/mutations.py --tests "tests/test_mechanics.py"   # the new tests alone
    .venv/bin/python benchmarks/mutations.py --list
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    breaks: str  # the mechanism it switches off or alters


M = Mutation
MUTATIONS: list[Mutation] = [
    # ---- the loss and the loop (train.py, recipe.py)
    M("loss-ignores-ratio", "noisystudent/train.py", "loss = loss_l + cfg.batch_ratio * loss_u", "loss = loss_l + loss_u",
      "loss = CE_l + CE_u: batch_ratio no longer weights the pseudo-labeled loss"),
    M("pseudo-loss-dropped", "noisystudent/train.py", "loss = loss_l + cfg.batch_ratio * loss_u", "loss = loss_l",
      "the student never learns from its pseudo labels"),
    M("labeled-loss-dropped", "noisystudent/train.py", "loss = loss_l + cfg.batch_ratio * loss_u", "loss = cfg.batch_ratio * loss_u",
      "the student never learns from the labeled images"),
    M("pseudo-batch-not-ratio", "noisystudent/train.py", "_loader(pseudo, cfg.batch_size * cfg.batch_ratio, cfg, rt, 1, start)",
      "_loader(pseudo, cfg.batch_size, cfg, rt, 1, start)", "pseudo-labeled batch of B images instead of ratio x B"),
    # ---- the schedule ablation (train.py, recipe.py): pre-train on pseudo labels, then fine-tune
    M("pretrain-weighted-by-ratio", "noisystudent/train.py", "                    loss = loss_u\n",
      "                    loss = cfg.batch_ratio * loss_u\n", "pre-training weights the pseudo loss by the batch ratio"),
    M("pretrain-phases-swapped", "noisystudent/train.py", '"pseudo" if step < cfg.pretrain_steps else "labeled"',
      '"labeled" if step < cfg.pretrain_steps else "pseudo"', "fine-tuning comes before pre-training"),
    M("finetune-schedule-ignored", "noisystudent/recipe.py", 'pretrain_steps=r.steps // 2 if r.schedule == "finetune" else 0',
      "pretrain_steps=0", "student.schedule: finetune trains jointly"),
    M("fit-in-eval-mode", "noisystudent/train.py", "    model.train()\n    # an epoch", "    model.eval()\n    # an epoch",
      "training in eval mode: dropout and stochastic depth never active"),
    M("recipe-ratio-1", "noisystudent/recipe.py", "p.student.batch_ratio, p.student.targets", "1, p.student.targets",
      "student.batch_ratio never reaches the student's recipe"),
    M("fit-config-ratio-1", "noisystudent/recipe.py", "batch_ratio=r.batch_ratio,", "batch_ratio=1,",
      "the recipe's batch_ratio never reaches fit"),
    # ---- EMA weights predict (train.py, checkpoint.py, stages/train.py, recipe.py)
    M("ema-not-predicting", "noisystudent/train.py", "predictor = ema.module if ema is not None else model", "predictor = model",
      "fit returns the raw weights instead of the EMA copy"),
    M("ema-never-updated", "noisystudent/train.py", "                ema.update(model, step=step + 1)", "                pass",
      "the EMA copy stays at the initial weights"),
    M("validation-on-raw", "noisystudent/train.py", "on_log(step + 1, figs, predictor)", "on_log(step + 1, figs, model)",
      "validation during training scores the raw weights, not the EMA ones"),
    M("save-raw-weights", "noisystudent/checkpoint.py", '"state_dict": cpu_state(predictor)}', '"state_dict": cpu_state(raw)}',
      "checkpoints store the raw weights as the predicting ones"),
    M("load-raw-weights", "noisystudent/checkpoint.py", 'model.load_state_dict(ckpt["state_dict"])',
      'model.load_state_dict(ckpt.get("state_dict_raw", ckpt["state_dict"]))',
      "labeling and evaluation load the raw weights instead of the EMA ones"),
    M("stage-saves-raw", "stages/train.py", "save_model(out, predictor, model, {", "save_model(out, model, model, {",
      "the train stage saves the raw model as the predictor"),
    M("ema-off-in-recipe", "noisystudent/recipe.py", "ema_decay=t.ema_decay,", "ema_decay=0.0,",
      "train.ema_decay never reaches fit: no EMA"),
    # ---- the three noises, on in training (models.py, transforms.py, data.py, stages/train.py, recipe.py)
    M("dropout-never", "noisystudent/models.py", "drop_rate=dropout, drop_path_rate=drop_path", "drop_rate=0.0, drop_path_rate=drop_path",
      "create_model ignores dropout: never applied"),
    M("drop-path-never", "noisystudent/models.py", "drop_rate=dropout, drop_path_rate=drop_path", "drop_rate=dropout, drop_path_rate=0.0",
      "create_model ignores drop_path: no stochastic depth"),
    M("head-skips-dropout", "noisystudent/models.py", "return self.fc(self.drop(x.mean((2, 3))))", "return self.fc(x.mean((2, 3)))",
      "the dropout layer is built but never applied"),
    M("block-skips-drop-path", "noisystudent/models.py", "torch.relu(self.shortcut(x) + self.drop_path(out))",
      "torch.relu(self.shortcut(x) + out)", "stochastic depth built but never applied"),
    M("randaugment-off", "noisystudent/transforms.py", "    if n == 0 or m == 0:\n        return eval_transform(cfg)",
      "    if True:\n        return eval_transform(cfg)", "train_transform returns the eval transform: no RandAugment"),
    M("randaugment-n-ignored", "noisystudent/transforms.py", "random.choices(self.ops, k=self.num_layers)",
      "random.choices(self.ops, k=1)", "RandAugment applies one op whatever N"),
    M("array-batches-skip-pil-ops", "noisystudent/data.py", "if self.transform.pil is None and isinstance(self.images, ArrayImages):",
      "if isinstance(self.images, ArrayImages):", "array images bypass the PIL ops: RandAugment never reaches a batch"),
    M("stage-trains-on-eval-transform", "stages/train.py",
      'tf = train_transform(dcfg, r.noise["randaugment_n"], r.noise["randaugment_m"], batched=rt.batched_augment(p.speed.augment))',
      "tf = tf_eval",
      "the train stage feeds un-augmented images"),
    M("stage-model-without-noise", "stages/train.py",
      'create_model(r.arch, data.num_classes, data.in_chans, r.noise["dropout"], r.noise["drop_path"], r.pretrained)',
      "create_model(r.arch, data.num_classes, data.in_chans, 0.0, 0.0, r.pretrained)", "the train stage builds the model without dropout / drop path"),
    M("student-gets-teacher-noise", "noisystudent/recipe.py", "it.arch, _noise(p.noise)", "it.arch, _noise(p.teacher)",
      "students trained with section teacher's noise instead of section noise"),
    M("params-student-dropout-0", "params.yaml", "  dropout: 0.3             # official code", "  dropout: 0.0             # official code",
      "the repository's student noise has no dropout"),
    # ---- the teacher labels un-noised (stages/pseudo_label.py, inference.py, checkpoint.py, params)
    M("labeling-noised-always", "stages/pseudo_label.py", "pp, workers, seed = p.pseudo, p.speed.data_workers, p.train.seed",
      'pp, workers, seed = p.pseudo.model_copy(update={"noised": True}), p.speed.data_workers, p.train.seed',
      "every pseudo.noised branch taken: the teacher labels with its dropout, drop path and RandAugment"),
    M("labeling-randaugment", "stages/pseudo_label.py", "    if pp.noised:  # the ablation", "    if True:  # the ablation",
      "the teacher labels RandAugmented images"),
    M("labeling-train-mode", "noisystudent/inference.py", "    model.eval()\n    for x, ids in loader:",
      "    model.train()\n    for x, ids in loader:", "stream_soft_labels in train mode (dropout, drop path, batch statistics)"),
    M("predict-train-mode", "noisystudent/inference.py", "    model.eval()\n    outs, keys = [], []",
      "    model.train()\n    outs, keys = [], []", "evaluation / validation predictions in train mode"),
    M("load-model-noised", "noisystudent/checkpoint.py", 'noise = ckpt.get("recipe", {}).get("noise", {}) if noised else {}',
      'noise = ckpt.get("recipe", {}).get("noise", {})', "load_model always builds the training dropout / drop path in"),
    M("load-model-train-mode", "noisystudent/checkpoint.py", "return model.eval(), ckpt", "return model.train(), ckpt",
      "load_model returns a train-mode model"),
    M("noised-default-code", "noisystudent/params.py", "    noised: bool = False", "    noised: bool = True",
      "pseudo.noised defaults to on: the teacher labels noised"),
    M("noised-default-params", "params.yaml", "  noised: false            #", "  noised: true             #",
      "params.yaml has the teacher label noised"),
    # ---- targets and temperature (pseudo.py, stages)
    M("temperature-ignored", "noisystudent/pseudo.py", "return soft_labels(logits, temperature), soft_labels(logits, 1.0).max(1)",
      "return soft_labels(logits, 1.0), soft_labels(logits, 1.0).max(1)", "soft targets never tempered"),
    M("confidence-tempered", "noisystudent/pseudo.py", "return soft_labels(logits, temperature), soft_labels(logits, 1.0).max(1)",
      "return soft_labels(logits, temperature), soft_labels(logits, temperature).max(1)",
      "threshold and balancing see tempered confidences (official: T = 1)"),
    M("softmax-without-t", "noisystudent/pseudo.py", "z = np.asarray(logits, dtype=np.float64) / temperature",
      "z = np.asarray(logits, dtype=np.float64)", "soft_labels ignores T"),
    M("stage-temperature-1", "stages/pseudo_label.py", "pp.batch_size, rt, workers), pp.temperature, rt)",
      "pp.batch_size, rt, workers), 1.0, rt)", "pseudo.temperature never reaches labeling"),
    M("targets-swapped", "noisystudent/pseudo.py", '    if mode == "soft":', '    if mode != "soft":',
      "soft and hard targets swapped"),
    M("hard-targets-unsmoothed", "noisystudent/pseudo.py", 'one_hot(selected["label"].to_numpy(), num_classes, smoothing)',
      'one_hot(selected["label"].to_numpy(), num_classes, 0.0)', "hard pseudo labels lose the labeled images' smoothing"),
    M("recipe-targets-soft", "noisystudent/recipe.py", "p.student.batch_ratio, p.student.targets,", "p.student.batch_ratio, \"soft\",",
      "student.targets never reaches the recipe: always soft"),
    M("stage-targets-soft", "stages/train.py", "targets(sel, data.num_classes, r.targets, smoothing)",
      'targets(sel, data.num_classes, "soft", smoothing)', "the train stage always uses soft targets"),
    # ---- selection: threshold, balancing (shards.py, stages/select.py, stages/train.py)
    M("threshold-ignored", "noisystudent/shards.py", "eligible = np.flatnonzero((conf >= threshold) & used)",
      "eligible = np.flatnonzero(used)", "select.threshold ignored"),
    M("balancing-off", "noisystudent/shards.py", "    if balance:\n        copies[eligible]", "    if False:\n        copies[eligible]",
      "no class balancing: every eligible image once"),
    M("stage-threshold-0", "stages/select.py", "select_dataset(labels, out, s.threshold,", "select_dataset(labels, out, 0.0,",
      "select.threshold never reaches the selection"),
    M("stage-balance-off", "stages/select.py", "balance=s.balance", "balance=False", "the select stage never balances"),
    M("student-ignores-copies", "stages/train.py", '    sel = sel.loc[sel.index.repeat(sel["copies"])]\n', "",
      "the balancing's duplicates dropped: every selected image once in training"),
    M("params-balance-off", "params.yaml", "  balance: true            #", "  balance: false           #",
      "params.yaml turns balancing off"),
    # ---- the chain (recipe.py, dvc.yaml, params.py)
    M("recipe-wrong-teacher", "noisystudent/recipe.py", "p.student.targets, it.teacher,",
      "p.student.targets, p.iterations[next(iter(p.iterations))].teacher,", "every student's recipe names the first student's teacher"),
    M("dvc-labels-from-first-teacher", "dvc.yaml", "--teacher models/${item.teacher}.pt --out data/pseudo/${key}/labels",
      "--teacher models/teacher.pt --out data/pseudo/${key}/labels", "every iteration labeled by the first teacher"),
    M("dvc-student-reads-s1-selection", "dvc.yaml", "--selected data/pseudo/${key}/selected.parquet --teacher",
      "--selected data/pseudo/s1/selected.parquet --teacher", "every student trains on iteration s1's pseudo labels"),
    M("recipe-init-from-teacher", "noisystudent/recipe.py", 'p.student.init == "teacher",', "True,",
      "students start from their teacher's weights (the paper: from scratch)"),
    M("smaller-students-allowed", "noisystudent/params.py",
      "if not it.allow_smaller and count_params(it.arch) < count_params(t_arch):", "if False:",
      "a student smaller than its teacher is accepted (the paper: equal or larger)"),
]

# the existing fast tests of these modules first (so the table shows what they already caught),
# then the mechanics tests
DEFAULT_TESTS = ("tests/test_train.py tests/test_pseudo.py tests/test_transforms.py tests/test_models.py "
                 "tests/test_shards.py::test_select_out_of_core_equals_in_memory_balance "
                 "tests/test_shards.py::test_select_ablations_unbalanced_and_fraction "
                 "tests/test_pipeline.py::test_hard_targets_are_one_hot "
                 "tests/test_pipeline.py::test_noised_teacher_model_has_its_training_dropout_on "
                 "tests/test_mechanics.py -m 'not slow'")


def copy_repository(dst: Path) -> None:
    """The working tree's tracked and untracked-not-ignored files, as they are now."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    for rel in sorted(set(filter(None, out.split("\0")))):
        src = ROOT / rel
        if not src.is_file() or src.is_symlink():  # deleted in the working tree, or a link
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)


def run_tests(copy: Path, tests: list[str], timeout: int) -> tuple[str, str, float]:
    """('passed' | 'failed' | 'timeout' | 'error', first failing test or '', seconds)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    env.update(NS_QUIET="1", PYTHONDONTWRITEBYTECODE="1")  # never a stale .pyc of the other text
    cmd = [sys.executable, "-m", "pytest", *tests, "-x", "-q", "-p", "no:cacheprovider", "-n", "0", "-rfE"]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"(no result within {timeout} s)", time.perf_counter() - t0
    secs = time.perf_counter() - t0
    if r.returncode == 0:
        return "passed", "", secs
    first = re.findall(r"^(?:FAILED|ERROR) (\S+)", r.stdout, re.M)
    if r.returncode == 1 and first:
        return "failed", first[0], secs
    tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
    return "error", (first[0] if first else f"pytest exit {r.returncode}: {' | '.join(tail)[:200]}"), secs


def apply(copy: Path, m: Mutation) -> str:
    """Write the mutation into the copy; returns the original text (to restore)."""
    path = copy / m.file
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        raise LookupError(f"{m.file}: old text found {n} times (must be exactly once)")
    path.write_text(text.replace(m.old, m.new))
    return text


def markdown(rows: list[dict], tests: str, head: str, total: float, title: str) -> str:
    """One section: the run's selection and its table."""
    killed = sum(r["status"] == "killed" for r in rows)
    lines = [
        f"## {title}",
        "",
        f"At commit {head} (plus the working tree): {killed} of {len(rows)} mutations killed, "
        f"{sum(r['status'] == 'SURVIVED' for r in rows)} survived, {total / 60:.0f} min.",
        "",
        f"Tests: `{tests}`",
        "",
        "| # | mutation | file | what it breaks | result | killed by (first failing test) | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        m = r["m"]
        lines.append(f"| {i} | `{m.id}` | {m.file} | {m.breaks} | {r['status']} | `{r['by']}` | {r['secs']:.1f} |")
    return "\n".join(lines) + "\n"


INTRO = """# Mutation run over the method's mechanics

`benchmarks/mutations.py`: one-line mutations of the method's modules, one at a time, in a copy
of the working tree; each run is pytest `-x -q -p no:cacheprovider -n 0` from the copy. Before
the mutations, the unmutated copy must pass the selection and a copy whose `noisystudent` cannot
be imported must fail it (the copy's package is the one the tests import). *Killed by*: the first
failing test; *s*: seconds of that pytest run (imports included, ~4 s; the machine was shared).

Notes. `load-model-noised` and `load-model-train-mode` are latent today: nothing the pipeline
writes changes, since labeling and evaluation put the model in eval mode, which switches the
built-in noise off; load_model's own contract test kills them. `threshold-ignored` is masked in a
balanced selection with a fixed per_class (the balancing applies the threshold again as its
lowest step); the unbalanced ablation and the counts show it. Left out as equivalent:
copies_per_image's threshold floor `lo` (its rows arrive already thresholded), and
`load_model(..., noised=True)` alone in the clean labeling path (eval mode switches that noise
off; `labeling-noised-always` covers the path).
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Mutations: " + ", ".join(m.id for m in MUTATIONS))
    ap.add_argument("--only", action="append", default=[], metavar="ID", help="run this mutation only (repeatable)")
    ap.add_argument("--tests", default=DEFAULT_TESTS, help="the pytest selection, as on a command line (default: %(default)s)")
    ap.add_argument("--out", type=Path, help="write the results table (Markdown) here")
    ap.add_argument("--append", action="store_true", help="add this run's table to --out as a new section")
    ap.add_argument("--title", default="Mutations and the tests that kill them", help="the table's section title")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per pytest run (default: %(default)s)")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = ap.parse_args()

    ids = [m.id for m in MUTATIONS]
    assert len(set(ids)) == len(ids), "duplicate mutation id"
    if args.list:
        for m in MUTATIONS:
            print(f"{m.id:34s} {m.file:28s} {m.breaks}")
        return 0
    unknown = [i for i in args.only if i not in ids]
    if unknown:
        ap.error(f"unknown mutation(s) {unknown}; --list shows them")
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only]
    tests = shlex.split(args.tests)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    copy = Path(tempfile.mkdtemp(prefix="ns-mutations-"))
    t_all = time.perf_counter()
    try:
        copy_repository(copy)
        print(f"copy of the working tree: {copy}", flush=True)
        status, by, secs = run_tests(copy, tests, args.timeout)
        print(f"unmutated: {status} {by} ({secs:.1f} s)", flush=True)
        if status != "passed":
            print("the unmutated copy must pass the selection: fix that first", file=sys.stderr)
            return 2
        init = copy / "noisystudent/__init__.py"
        original = init.read_text()
        init.write_text(original + '\nraise ImportError("mutations.py: the copy\'s package is the one imported")\n')
        try:
            status, by, secs = run_tests(copy, tests, args.timeout)
        finally:
            init.write_text(original)
        print(f"copy's package unimportable: {status} {by} ({secs:.1f} s)", flush=True)
        if status == "passed":
            print("the tests did not import the copy's package: the mutations would prove nothing", file=sys.stderr)
            return 2

        rows = []
        for m in chosen:
            try:
                text = apply(copy, m)
            except LookupError as e:
                rows.append({"m": m, "status": "NOT APPLIED", "by": str(e), "secs": 0.0})
                print(f"{m.id:34s} NOT APPLIED: {e}", flush=True)
                continue
            try:
                status, by, secs = run_tests(copy, tests, args.timeout)
            finally:
                (copy / m.file).write_text(text)
            result = {"passed": "SURVIVED", "failed": "killed", "error": "killed", "timeout": "killed"}[status]
            if status in ("error", "timeout"):
                by = f"{status}: {by}"
            rows.append({"m": m, "status": result, "by": by, "secs": secs})
            print(f"{m.id:34s} {result:8s} {by} ({secs:.1f} s)", flush=True)
    finally:
        if args.keep:
            print(f"kept {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)
    total = time.perf_counter() - t_all
    width = max(len(m.id) for m in chosen)
    print(f"\n{'mutation':{width}s}  {'result':11s}  killed by")
    for r in rows:
        print(f"{r['m'].id:{width}s}  {r['status']:11s}  {r['by']}")
    bad = [r for r in rows if r["status"] != "killed"]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} killed; {len(bad)} not: {', '.join(r['m'].id for r in bad) or '-'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        section = markdown(rows, args.tests, head, total, args.title)
        if args.append and args.out.exists():
            args.out.write_text(args.out.read_text().rstrip("\n") + "\n\n" + section)
        else:
            args.out.write_text(INTRO + "\n" + section)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
