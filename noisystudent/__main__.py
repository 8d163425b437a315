"""`python -m noisystudent`: every pipeline stage as a command (what `dvc repro` runs, with the
arguments dvc.yaml gives), and the tools beside them. Run from the repository root."""
import importlib
import re
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli import app

cli = app(__doc__)

# in the pipeline's order; `dvc stage list` lists the stages with what each does (dvc.yaml's
# `desc:`), `dvc dag` draws the graph, dvc.yaml holds each stage's arguments
# (stages/train.py serves train_teacher, train_baseline and train_student@*; stages/robustness.py
# serves robustness_teacher and robustness@*)
STAGES = ["prepare", "train", "pseudo_label", "select", "gallery", "evaluate", "corrupt", "robustness", "summary", "report"]
for _name in STAGES:
    try:
        _mod = importlib.import_module(f"stages.{_name}")
    except ImportError:  # not at the repository root: only the tools below
        break
    cli.command(_name.replace("_", "-"), help=_mod.__doc__, rich_help_panel="Pipeline stages (dvc repro runs them)")(_mod.main)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"noisystudent {__version__}")
        raise typer.Exit()


@cli.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")] = False):
    pass


@cli.command("predict", rich_help_panel="Using a trained model")
def predict(
    paths: Annotated[list[Path], typer.Argument(help="image files and folders (searched recursively; hidden files left out)")],
    checkpoint: Annotated[Path, typer.Option(help="a model of the pipeline, e.g. models/s3.pt")],
    out: Annotated[Path, typer.Option(help="predictions CSV to write (bad files go to <out>.bad_files.csv)")] = Path("predictions.csv"),
    top_k: Annotated[int, typer.Option(min=1, help="most probable classes per image")] = 3,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers decoding files")] = 0,
):
    """Predict the classes of image files with a trained model: one CSV row per image (path,
    then label_1 / prob_1 ... by class name, most probable first). Files are decoded by
    `prepare`'s rules: a file it would refuse is listed with its reason, and the rest go on."""
    from .checkpoint import load_model
    from .cli import fail, user_errors
    from .io import atomic_write_csv
    from .predict import image_files, predict_files

    with user_errors():
        model, ckpt = load_model(checkpoint)
        files = image_files(paths)
        if not files:
            fail(f"no file under {', '.join(map(str, paths))}")
        preds, bad = predict_files(model, ckpt, files, top_k, batch_size, workers)
        atomic_write_csv(out, preds)
        bad_out = out.with_name(f"{out.stem}.bad_files.csv")
        if len(bad):
            atomic_write_csv(bad_out, bad)
            for r in bad.head(5).itertuples():
                typer.echo(f"skipped {r.path}: {r.reason}", err=True)
        else:
            bad_out.unlink(missing_ok=True)  # an earlier run's list would describe other files
    typer.echo(f"{len(preds)} images predicted -> {out}" + (f"; {len(bad)} bad files skipped -> {bad_out}" if len(bad) else ""))


@cli.command("export", rich_help_panel="Using a trained model")
def export(
    checkpoint: Annotated[Path, typer.Option(help="a model of the pipeline, e.g. models/s3.pt")],
    out: Annotated[Path, typer.Option(help="folder to write (replaced whole)")],
    format: Annotated[list[str], typer.Option(help="timm (safetensors + config.json) and/or onnx; repeat the option")] = ["timm", "onnx"],
):
    """Export a trained model as timm does (model.safetensors + config.json: `timm.create_model(
    "local-dir:OUT", pretrained=True)` loads it) and as ONNX (model.onnx, dynamic batch); each
    written file is loaded back and its largest logit difference from PyTorch printed."""
    from .checkpoint import load_model
    from .cli import fail, user_errors
    from .export import export as run_export

    unknown = sorted(set(format) - {"timm", "onnx"})
    if unknown:
        fail(f"--format {', '.join(unknown)}: timm or onnx")
    with user_errors():
        model, ckpt = load_model(checkpoint)
        diffs = run_export(model, ckpt, out, format)
    for f, d in diffs.items():
        typer.echo(f"{f}: {out} (max |logit difference| from PyTorch, loaded back: {d:.2e})")


@cli.command("sync-mlflow")
def sync_mlflow():
    """Send the MLflow records that stages kept in mlflow-pending/ while the tracking store
    was down or locked (every stage also retries them when it starts)."""
    from .tracking import pending_dir, sync_pending

    n = sync_pending()
    typer.echo(f"{n} pending run(s) sent; {len(list(pending_dir().glob('*.json'))) if pending_dir().is_dir() else 0} left")


def _dvc(*args: str, check: bool = True) -> str:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise typer.BadParameter(f"dvc {' '.join(args)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}")
    return r.stdout


def _experiments() -> list[dict]:
    from .ablation import experiments_from_show

    # every commit's: a suite may have been queued on an earlier commit than the one checked out
    return experiments_from_show(_dvc("exp", "show", "--json", "--all-commits", "--no-fetch"))


# what an ablation or tuning experiment runs: up to the summary its report reads. The galleries
# and the page of `report` are left unbuilt (in the experiment, `dvc status` names them): four
# stage processes fewer per experiment, and nothing any report reads
EXPERIMENT_TARGETS = ("summary",)


@cli.command("ablate")
def ablate(
    suites: Annotated[list[str], typer.Argument(help="suite names: noise, iterations, pseudo, data, model, teacher, schedule, baseline")],
    seed: Annotated[list[int], typer.Option(help="seeds (split, training and balancing draws); repeat the option")] = [0, 1, 2, 3, 4],
    jobs: Annotated[int, typer.Option(min=1, help="parallel queue workers (1 = serialised; see README on MLflow)")] = 1,
    mlflow: Annotated[bool, typer.Option(help="log the experiments' stages to MLflow (--no-mlflow: DVC only, faster)")] = True,
    start: Annotated[bool, typer.Option(help="start the queue and wait for it (--no-start: only queue)")] = True,
    dry_run: Annotated[bool, typer.Option(help="print the `dvc exp run` lines, queue nothing")] = False,
):
    """Queue a named ablation suite as DVC experiments (`dvc exp run --queue -S ... summary`, one
    per variant x seed, named `<variant>-seed<N>`; every suite's default variant is the one
    experiment `default-seed<N>`), run the queue and wait. Experiments already finished under
    that name on a commit with this pipeline (dvc.yaml, params.yaml, the stages' code) are
    skipped, so a stopped suite resumes; after a commit that changes the pipeline, every
    experiment runs again (unchanged stages come back from DVC's run cache)."""
    from .ablation import queue_plan

    try:
        runs = queue_plan(suites, seed)
    except (KeyError, ValueError) as e:
        raise typer.BadParameter(str(e).strip("'\"")) from None
    if dry_run:
        for r in runs:
            typer.echo(" ".join(["dvc", "exp", "run", *_queue_args(r, mlflow, jobs)]))
        return
    _run_queue(runs, f"{', '.join(suites)} x seeds {seed}", jobs, start, mlflow)


def _threads(jobs: int) -> int:
    """torch threads per queue worker: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _queue_args(run, mlflow: bool, jobs: int) -> list[str]:
    # the thread count changes the numbers (the order of float sums) and DVC's run cache keys on
    # params, not on the environment: with `train.num_threads: 0` (torch's default) an experiment
    # could restore a stage a `dvc repro` ran with another thread count. Set, it is part of the key
    # and shows in `dvc exp show`.
    return ["--queue", "-n", run.name, *run.set_args(), "-S", f"train.num_threads={_threads(jobs)}",
            *([] if mlflow else ["-S", "mlflow.enabled=false"]), *EXPERIMENT_TARGETS]


POLL_S = 20  # seconds between two looks at the queue while `ablate` waits


def _queue_status() -> tuple[dict[str, tuple[str, str]], int]:
    """`dvc queue status` as (task id -> (experiment name, status), active workers). Names repeat
    across commits (the same experiment re-run on new code): only task ids tell this call's
    runs apart."""
    text = _dvc("queue", "status")
    out = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[0] != "Task" and re.fullmatch(r"[0-9a-f]{7,}", cols[0]):
            out[cols[0]] = (cols[1], cols[-1])
    active = re.search(r"Worker status: (\d+) active", text)
    return out, int(active.group(1)) if active else 0


def _queue_tasks() -> dict[str, tuple[str, str]]:
    return _queue_status()[0]


def _same_pipeline(rev: str, _known: dict = {}) -> bool:
    """Whether commit `rev` runs the pipeline the checked-out commit runs: the same dvc.yaml,
    params.yaml and every file a stage depends on. A commit that changes only docs or reports
    leaves its experiments standing; one that changes a stage's code re-runs them all."""
    import subprocess

    import yaml

    if rev not in _known:
        files = {"dvc.yaml", "params.yaml"}
        for st in (yaml.safe_load(Path("dvc.yaml").read_text()).get("stages") or {}).values():
            deps = (st.get("do") or st).get("deps") or []
            files |= {d for d in deps if isinstance(d, str) and d.endswith(".py")}
        r = subprocess.run(["git", "diff", "--quiet", rev, "HEAD", "--", *sorted(files)], capture_output=True)
        _known[rev] = r.returncode == 0
    return _known[rev]


def _run_queue(runs, what: str, jobs: int, start: bool = True, mlflow: bool = True) -> None:
    """Queue the runs not yet finished or queued under their names on a commit with this
    commit's pipeline (`_same_pipeline`), start the queue and wait for every unfinished one (a
    command stopped and run again takes up what it had queued). Queueing rewrites params.yaml
    and stashes the workspace (DVC's `exp run --queue`): leave the files alone until it is done."""
    import subprocess
    import sys
    import time

    from .progress import progress

    status = {}
    for e in _experiments():  # finished (or pending) on a commit whose pipeline is this one's
        if e.get("baseline") and _same_pipeline(e["baseline"]) and status.get(e["name"]) != "success":
            status[e["name"]] = e["status"]
    waiting = [r for r in runs if status.get(r.name) != "success"]
    todo = [r for r in waiting if status.get(r.name) not in ("queued", "running")]
    typer.echo(f"{len(runs)} experiments in {what}: {len(runs) - len(waiting)} done, {len(waiting) - len(todo)} queued "
               f"or running, {len(todo)} to queue")
    if todo and mlflow:
        _prepare_tracking()
    names = {r.name for r in waiting}
    before = _queue_tasks()
    for r in todo:
        _dvc("exp", "run", *_queue_args(r, mlflow, jobs))
    if not start or not waiting:
        return
    # this call's tasks: the ones it queued, and those of these names an earlier call left pending
    tasks = {t: n for t, (n, st) in _queue_tasks().items()
             if n in names and (t not in before or st.lower() in ("queued", "running"))}
    t0 = time.time()
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        # workers inherit this: each takes its share of the cores instead of all of them
        os.environ["OMP_NUM_THREADS"] = str(_threads(jobs))
    # `dvc queue start` may stay in the foreground until the queue is empty: poll beside it; workers
    # left running by an earlier call take up what is queued, so none are started beside them
    def start_workers():
        return subprocess.Popen([sys.executable, "-m", "dvc", "queue", "start", "-j", str(jobs)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    starters = [] if _queue_status()[1] else [start_workers()]
    short = 0  # polls in a row with fewer workers than --jobs while tasks of this call wait
    with progress("ablate", total=len(tasks), unit="exp") as bar:
        finished: dict[str, str] = {}
        while len(finished) < len(tasks):
            time.sleep(POLL_S)
            for st in starters:
                if st.poll() not in (None, 0):
                    raise typer.BadParameter(f"dvc queue start failed ({st.returncode}): {st.stderr.read()[-2000:]}")
            # `dvc queue status` is cheap (no experiment collection) and sees every baseline commit
            now, workers = _queue_status()
            for t, (n, st) in now.items():
                if t in tasks and t not in finished and st.lower() in ("success", "failed"):
                    finished[t] = st.lower()
                    bar.advance()
            waiting_tasks = any(t in tasks and st.lower() == "queued" for t, (_, st) in now.items())
            short = short + 1 if waiting_tasks and workers < jobs else 0
            if short >= 2:  # twice in a row: not a worker still starting up
                # a worker can die between tasks (kombu's filesystem transport reading a message
                # file another worker is writing: JSONDecodeError in .dvc/tmp/exps/celery/*.out)
                typer.echo(f"{jobs - workers} of {jobs} queue workers stopped (.dvc/tmp/exps/celery/*.out says why); "
                           "starting them again")
                starters.append(start_workers())
                short = 0
    for st in starters:
        st.wait()
    failed = sorted(tasks[t] for t, s in finished.items() if s == "failed")
    typer.echo(f"{len(tasks)} experiments in {time.time() - t0:.0f} s; failed: {', '.join(failed) or 'none'}"
               + ("  (`dvc queue logs <name>` shows why)" if failed else ""))


def _prepare_tracking() -> None:
    """Create the MLflow store and experiment before parallel queue workers start: SQLite's
    schema set-up is not safe under concurrent first writers (later writes retry when locked)."""
    from .cli import read_params

    p = read_params(Path("params.yaml"))
    if not p.mlflow.enabled:
        return
    from mlflow.tracking import MlflowClient

    from .tracking import experiment_id, tracking_uri

    experiment_id(MlflowClient(tracking_uri()), p.mlflow.experiment)


@cli.command("tune")
def tune(
    screen_seed: Annotated[list[int], typer.Option(help="seeds every candidate runs on first; repeat the option")] = [0],
    seed: Annotated[list[int], typer.Option(help="seeds the best candidates then run on; repeat the option")] = [0, 1, 2],
    held_out_seed: Annotated[list[int], typer.Option(
        help="seeds no choice sees: the chosen and the current recipe run on them, and the before-and-after figures, "
             "the goal and the chosen-minus-current effect are read there; repeat the option")] = [3, 4, 5],
    keep: Annotated[int, typer.Option(min=1, help="candidates kept after screening (by validation)")] = 3,
    jobs: Annotated[int, typer.Option(min=1, help="parallel queue workers")] = 1,
    mlflow: Annotated[bool, typer.Option(help="log the experiments' stages to MLflow (--no-mlflow: DVC only, faster)")] = True,
    out: Annotated[Path, typer.Option(help="folder for report.md (replaced whole)")] = Path("reports/tuning"),
    report_only: Annotated[bool, typer.Option(help="queue nothing: rank what has finished")] = False,
    show_json: Annotated[Optional[Path], typer.Option(help="read this saved `dvc exp show --json` (implies --report-only)")] = None,
):
    """Tune the default recipe on the validation split: every candidate of the `tune` suite
    (noisystudent/ablation.py) on the screening seeds, then the `keep` best by the best student's
    mean validation top-1, and the current recipe, on all seeds, as DVC experiments (resumable: finished ones are kept);
    then the chosen and the current recipe on the held-out seeds; reports/tuning/report.md ranks
    the candidates by validation, names the chosen recipe and gives every figure, test ones
    included, as mean ± std over seeds, and the chosen recipe against the current one on the
    held-out seeds (paired bootstrap, 95 % interval). Test labels choose nothing."""
    import pandas as pd

    from .ablation import queue_plan
    from .io import atomic_dir
    from .tuning import before_after, chosen, collect, goal_met, rank, table

    seeds = list(dict.fromkeys([*screen_seed, *seed]))
    if overlap := sorted(set(held_out_seed) & set(seeds)):
        from .cli import fail

        fail(f"--held-out-seed: seeds {overlap} are also tuning seeds: held-out seeds must be new to the choice")
    if not (report_only or show_json):
        _run_queue(queue_plan(["tune"], screen_seed), f"tune x screening seeds {screen_seed}", jobs, mlflow=mlflow)
        frame, _ = collect(_experiments(), screen_seed)
        # the best by validation, and the current recipe: the "before" of before-and-after
        best = list(dict.fromkeys([*rank(frame)["candidate"][:keep], "current"]))
        runs = [r for r in queue_plan(["tune"], seed) if r.variant in best]
        _run_queue(runs, f"{', '.join(best)} (the {keep} best by validation, and the current recipe) x seeds {seed}", jobs,
                   mlflow=mlflow)
    from .ablation import experiments_from_show

    records = experiments_from_show(show_json.read_text()) if show_json else _experiments()
    frame, problems = collect(records, seeds)
    pick = chosen(frame, min_seeds=len(seed))
    if pick is not None and held_out_seed and not (report_only or show_json):
        runs = [r for r in queue_plan(["tune"], held_out_seed) if r.variant in (pick, "current")]
        _run_queue(runs, f"{pick} and current x held-out seeds {held_out_seed}", jobs, mlflow=mlflow)
        records = _experiments()
    held, held_problems = collect(records, held_out_seed, role="held-out", candidates=[pick, "current"]) if pick else (None, [])
    effect = None  # the chosen minus the current recipe on the held-out seeds, for readme-results
    md = ["# Tuning the default recipe on validation", "",
          f"Candidates of the `tune` suite, screened on seeds {list(screen_seed)}, the {keep} best by the best student's mean "
          f"validation top-1 then run on seeds {list(seed)} (the tuning seeds). Ranked by validation alone; test figures "
          "are shown after the choice and chose nothing. Figures are mean ± std over each candidate's seeds (%).", "",
          table(frame).to_markdown(index=False) if len(frame) else "No finished experiment.", ""]
    if pick is not None:
        frame = pd.concat([frame, held], ignore_index=True) if len(held) else frame
        g = goal_met(frame, pick)
        md += [f"**Chosen: `{pick}`** (highest mean validation top-1 over {len(seed)} tuning seeds).", "",
               f"## The chosen recipe on held-out seeds {list(held_out_seed)}", "",
               "The best of several candidates on a small validation split flatters the seeds it was chosen on; these "
               "seeds (their own splits, training and selection draws) chose nothing.", "",
               before_after(frame, len(seed)).to_markdown(index=False), ""]
        if pick != "current":
            e, how = _best_student_effect(records, held_out_seed, pick)
            effect = f"`{pick}` − `current`, best student on the {g['where']}: {e.points()} ({how}): {e.verdict}."
            md += [effect, ""]
        md += [f"On the {g['where']} the chosen recipe's best student is {100 * g['gap_to_oracle']:.2f} points below the "
               f"oracle (goal: within 2: {'met' if g['within_gap'] else 'not met'}) and "
               f"{100 * g['gain_over_baseline']:+.2f} points over the supervised baseline (goal: +3: "
               f"{'met' if g['gain_reached'] else 'not met'}), means over {g['seeds']} seeds.", ""]
        problems += held_problems
    else:
        md += [f"No candidate has finished on all {len(seed)} seeds yet: nothing is chosen.", ""]
    if problems:
        md += ["Not counted:", "", *[f"- {p}" for p in problems], ""]
    with atomic_dir(out) as tmp:
        (tmp / "report.md").write_text("\n".join(md).rstrip() + "\n")
        frame.to_csv(tmp / "runs.csv", index=False)  # every finished run's figures: what readme-results reads
        if effect:
            (tmp / "effect.md").write_text(effect + "\n")
    typer.echo(f"tuning report: {out / 'report.md'}" + (f"; chosen {pick}" if pick else ""))


@cli.command("readme-results")
def readme_results(
    runs: Annotated[Path, typer.Option(help="the tuning runs table `tune` writes")] = Path("reports/tuning/runs.csv"),
    seed: Annotated[list[int], typer.Option(help="the seeds a recipe must have run on to be chosen; repeat the option")] = [0, 1, 2],
    findings: Annotated[Path, typer.Option(help="the ablation findings `ablation-report` writes")] = Path("reports/ablations/findings.csv"),
    readme: Annotated[Path, typer.Option(help="the file whose results block is rewritten")] = Path("README.md"),
):
    """Rewrite the README's results block (between `<!-- results:begin -->` and `<!-- results:end -->`)
    from the committed tuning runs (every model's test top-1 as mean ± std over seeds, before and
    after tuning, never one seed's figures) and the committed ablation findings (each paper
    finding's effect, 95 % interval and verdict): never typed by hand."""
    import pandas as pd

    from .cli import fail
    from .io import atomic_write_text
    from .ablation_report import findings_table
    from .tuning import before_after, replace_block

    if not runs.exists():
        fail(f"{runs} is missing: run `python -m noisystudent tune` first")
    if not findings.exists():
        fail(f"{findings} is missing: run `python -m noisystudent ablation-report noise iterations` first")
    frame = pd.read_csv(runs)
    table = before_after(frame, len(seed))
    effect = runs.with_name("effect.md")  # tune's paired bootstrap, written beside the runs when a recipe was chosen
    body = ["Digits, 3 labeled images per class; test top-1 as mean ± std over seeds (each seed its own split, "
            "training and selection draws), from `reports/tuning/runs.csv` (the DVC experiments of "
            f"`python -m noisystudent tune`: the recipe chosen on the validation split of seeds {', '.join(map(str, seed))}, "
            "its figures read on held-out seeds no choice saw; test never chose). The supervised "
            "baseline is the students' architecture on the labeled images alone; the oracle the same on every "
            "label of the pool.", "", table.to_markdown(index=False), "",
            *([effect.read_text().strip(), ""] if effect.exists() else []),
            "The paper's findings tested on this data (`python -m noisystudent ablate` / `ablation-report`: DVC "
            "experiments, the last student's test top-1 unless said; the effect is a − b in points with its 95 % "
            "interval from a paired bootstrap over seeds and test images; **supported** only when the interval "
            "excludes 0 in the paper's direction):", "", findings_table(pd.read_csv(findings)).to_markdown(index=False), "",
            f"![every finding's effect with its 95 % interval]({findings.with_suffix('.png').as_posix()})", "",
            "Written by `python -m noisystudent readme-results`; the per-candidate table is in "
            "[reports/tuning/report.md](reports/tuning/report.md), every ablation with its per-seed figures in "
            "[reports/ablations/report.md](reports/ablations/report.md)."]
    try:
        atomic_write_text(readme, replace_block(readme.read_text(), "\n".join(body)))
    except ValueError as e:
        fail(f"{readme}: {e}")
    typer.echo(f"{readme}: results block rewritten from {runs} ({len(frame)} runs)")


@cli.command("ablation-report")
def ablation_report(
    suites: Annotated[list[str], typer.Argument(help="suite names (see `ablate`); `name:0,1,2` gives one suite its own seeds")],
    seed: Annotated[list[int], typer.Option(help="seeds the suites ran with; repeat the option")] = [0, 1, 2, 3, 4],
    out: Annotated[Path, typer.Option(help="folder for report.md and its plots (replaced whole)")] = Path("reports/ablations"),
    show_json: Annotated[Optional[Path], typer.Option(help="read this saved `dvc exp show --json` instead of running it")] = None,
):
    """Build the ablation report from finished DVC experiments (`dvc exp show --json`): per
    suite a table of mean +- std per variant, the gains, each paper finding with its effect,
    95 % interval (paired bootstrap over seeds and the per-image predictions committed with each
    experiment) and verdict, and plots. Missing or failed experiments are listed, never
    silently dropped."""
    from .ablation import experiments_from_show
    from .ablation_report import build

    names, seeds_for = [], {}
    for item in suites:
        name, _, given = item.partition(":")
        names.append(name)
        if given:
            try:
                seeds_for[name] = [int(x) for x in given.split(",")]
            except ValueError:
                raise typer.BadParameter(f"{item!r}: seeds after ':' are integers separated by commas, e.g. {name}:0,1,2") from None
    records = experiments_from_show(show_json.read_text()) if show_json else _experiments()
    try:
        page = build(records, names, seed, out, outcomes=_committed_outcomes, seeds_for=seeds_for)
    except KeyError as e:
        raise typer.BadParameter(str(e).strip("'\"")) from None
    typer.echo(f"ablation report: {page}")


def _best_student_effect(records: list[dict], seeds: list[int], pick: str):
    """`pick` − `current` in the best student's test top-1 (each run's own best, chosen on
    validation) over the seeds both finished with committed predictions: a paired bootstrap over
    seeds and test images."""
    from .ablation import suite_records
    from .stats import paired_bootstrap

    got = {}
    for v, s, _, rec in suite_records(records, "tune", seeds):
        if v.name in (pick, "current") and rec is not None and rec["status"] == "success":
            best = _committed_best_student(rec)
            got[v.name, s] = None if best is None else _committed_outcomes(rec, best)
    pairs = [(got[pick, s], got["current", s]) for s in seeds
             if got.get((pick, s)) is not None and got.get(("current", s)) is not None]
    e = paired_bootstrap(pairs)
    return e, f"paired bootstrap over {e.seeds} of {len(seeds)} seeds and {e.images:,} test images"


def _committed_best_student(rec: dict) -> str | None:
    """The student an experiment's summary chose on validation (its committed metrics/summary.csv)."""
    import io
    import subprocess

    import pandas as pd

    from .results import best_student

    r = subprocess.run(["git", "show", f"{rec['rev']}:metrics/summary.csv"], capture_output=True, text=True)
    return best_student(pd.read_csv(io.StringIO(r.stdout))) if r.returncode == 0 and rec.get("rev") else None


def _committed_outcomes(rec: dict, model: str):
    """Per test image, 1 where `model` of experiment `rec` was right: its predictions CSV as
    committed with the experiment (metrics/eval/<model>_predictions.csv, a git-tracked plot)."""
    import io
    import subprocess

    import pandas as pd

    r = subprocess.run(["git", "show", f"{rec['rev']}:metrics/eval/{model}_predictions.csv"], capture_output=True, text=True)
    if r.returncode != 0 or not rec.get("rev"):
        return None
    t = pd.read_csv(io.StringIO(r.stdout))
    return (t["actual"] == t["predicted"]).to_numpy(dtype=float)


if __name__ == "__main__":
    cli()
