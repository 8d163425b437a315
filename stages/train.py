"""Stages train_teacher, train_baseline, train_oracle and `train_student@<iteration>`: one model
trained by its recipe (noisystudent/recipe.py). The teacher and the baseline learn from the
labeled images alone, the oracle from every label of the training pool (the unlabeled images'
hidden labels too); a student from labeled + selected pseudo-labeled images, with the student
noise."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors
from noisystudent.params import Params

cli = app(__doc__)


def _datasets(p: Params, data, r, selected: Path | None, tf):
    """The labeled set (smoothed one-hot targets) and, for a student, the pseudo-labeled one.
    The oracle's labeled set is the labeled images and every unlabeled one whose label is known."""
    import pandas as pd

    from noisystudent.data import ImageDataset, one_hot
    from noisystudent.io import InputError
    from noisystudent.pseudo import targets

    smoothing = p.train.label_smoothing
    lab = data.split("labeled")
    if r.role == "oracle":
        lab = pd.concat([lab, data.split("unlabeled_truth")], ignore_index=True).sort_values("id", ignore_index=True)
    labeled = ImageDataset(data.images, lab["id"].to_numpy(), one_hot(lab["label"].to_numpy(), data.num_classes, smoothing), tf)
    if r.supervised:
        return labeled, None
    if selected is None:
        raise InputError(f"student {r.name} needs --selected (the pseudo-labeled set)")
    sel = pd.read_parquet(selected)
    if len(sel) == 0:
        raise InputError(f"{selected}: no pseudo-labeled image survived selection; lower select.threshold")
    # canonical order (class, id), then duplicates: training never depends on shard layout
    sel = sel.sort_values(["label", "id"], kind="stable", ignore_index=True)
    sel = sel.loc[sel.index.repeat(sel["copies"])]
    return labeled, ImageDataset(data.images, sel["id"].to_numpy(), targets(sel, data.num_classes, r.targets, smoothing), tf)


def run(p: Params, name: str, data_dir: Path, out: Path, metrics_out: Path, selected: Path | None = None,
        history_out: Path | None = None, teacher_ckpt: Path | None = None) -> dict:
    """Train model `name` ('teacher', 'baseline', 'oracle' or an iteration) and write its checkpoint, its
    training metrics and (`history_out`) its curves, one CSV row per log step."""
    import pandas as pd
    import torch

    from noisystudent.checkpoint import Resume, load_checkpoint, resume_path, save_model
    from noisystudent.data import Prepared
    from noisystudent.inference import accuracy
    from noisystudent.io import InputError, atomic_write_csv, atomic_write_json, file_sha256
    from noisystudent.models import create_model, is_weights_file, num_params
    from noisystudent.params import unwrap
    from noisystudent.provenance import fingerprint
    from noisystudent.recipe import fit_config, recipe
    from noisystudent.runtime import runtime, set_threads
    from noisystudent.tracking import stage_run
    from noisystudent.train import fit
    from noisystudent.transforms import data_config, eval_transform, train_transform

    set_threads(p.train.num_threads)
    data = Prepared.load(data_dir)
    r = recipe(p, name)
    dcfg = data_config(r.arch, data.in_chans, p.data.image_size, data.image_size)
    tf_eval = eval_transform(dcfg)
    t = p.train
    rt = runtime(t.device, t.precision, t.channels_last, p.speed.train_workers, t.compile)  # joins torchrun's group, if any
    tf = train_transform(dcfg, r.noise["randaugment_n"], r.noise["randaugment_m"], batched=rt.batched_augment(p.speed.augment))
    labeled, pseudo = _datasets(p, data, r, selected, tf)

    weights = None
    if r.pretrained and is_weights_file(r.pretrained):
        weights = Path(r.pretrained)
        if not weights.is_file():
            raise InputError(f"{r.pretrained} (pretrained weights of {name}) not found: put the file there, or change the param")
    torch.manual_seed(r.seed)
    model = create_model(r.arch, data.num_classes, data.in_chans, r.noise["dropout"], r.noise["drop_path"], r.pretrained)
    if r.init_from_teacher:
        if teacher_ckpt is None:
            raise InputError(f"student.init: teacher needs --teacher (the checkpoint of {r.teacher})")
        model.load_state_dict(load_checkpoint(teacher_ckpt)["state_dict"])
    cfg = fit_config(p, r, p.speed.checkpoint_every)
    # what the model is made of: the resume state of any other run is ignored
    made_of = {"recipe": r.as_dict(), "fit": {k: v for k, v in cfg.__dict__.items() if k != "checkpoint_every"},
               "label_smoothing": t.label_smoothing, "data_config": dcfg, "runtime": rt.describe()}
    # a resume state is used only if made by this code, params and data (else: step 0)
    inputs = [data.root / "meta.json", data.root / "labeled.parquet", data.root / "unlabeled_truth.parquet" if r.role == "oracle" else None,
              selected, teacher_ckpt if r.init_from_teacher else None, weights]
    resume = Resume(resume_path(out), {**made_of, **fingerprint(p, Path(__file__), inputs={
        f.name: file_sha256(f) for f in inputs if f is not None})})
    stage = f"train_{name}" if r.supervised else f"train_student@{name}"
    with stage_run(p, stage, enabled=rt.main) as tracked:  # rank 0 alone writes checkpoints, metrics, MLflow records
        tracked.log_params({"arch": r.arch, "role": r.role, "num_params": num_params(model), "noise": r.noise, "fit": cfg.__dict__,
                        "runtime": rt.describe(), "n_pseudo": 0 if pseudo is None else len(pseudo)})

        def on_log(step: int, figs: dict, predictor: torch.nn.Module) -> dict:
            val = {"val_acc": accuracy(predictor, data, "val", tf_eval)}
            tracked.log_metrics({**figs, **val}, step)
            return val

        t0 = time.perf_counter()
        predictor, history = fit(model, labeled, cfg, pseudo, on_log=on_log, desc=stage, resume=resume, rt=rt)
        seconds = time.perf_counter() - t0
        if not rt.main:
            return {}
        result = {"val_acc": accuracy(predictor, data, "val", tf_eval), "num_params": num_params(model), "steps": r.steps,
                  "labeled_images": len(labeled)}
        # self-describing: architecture, classes by name, preprocessing, recipe (predict needs nothing else)
        save_model(out, predictor, model, {"arch": r.arch, "num_classes": data.num_classes, "in_chans": data.in_chans,
                                           "class_names": list(data.meta["class_names"]), "name": name, **made_of})
        atomic_write_json(metrics_out, result)  # timings go to MLflow only: identical runs, identical files
        mp = unwrap(p).mlflow  # describes the run, changes no result: no stage depends on it
        tracked.log_model(out, register_as=f"{mp.experiment}-{name}" if mp.register_models else None)
        if selected is not None:
            tracked.log_input(selected, name=f"pseudo-labeled set of {name} (teacher {r.teacher})")
        if history_out is not None:  # drawn by the report stage: restyling a curve retrains nothing
            atomic_write_csv(history_out, pd.DataFrame(history))
            tracked.log_artifact(history_out)
        resume.path.unlink(missing_ok=True)  # outputs complete: nothing left to resume
        images = r.steps * cfg.batch_size * (1 + (0 if pseudo is None else cfg.batch_ratio))
        tracked.log_metrics({**result, "train_seconds": round(seconds, 2), "images_per_second": round(images / seconds, 1)})
        tracked.log_artifact(metrics_out)
    return result


@cli.command()
def main(
    model: Annotated[str, typer.Option(help="teacher, baseline (the supervised baseline), oracle (every label of the pool) or an iteration key (a student)")],
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    out: Annotated[Path, typer.Option(help="checkpoint to write")],
    metrics: Annotated[Path, typer.Option(help="training metrics JSON to write")],
    selected: Annotated[Optional[Path], typer.Option(help="a student's selected pseudo labels (Parquet)")] = None,
    teacher: Annotated[Optional[Path], typer.Option(help="a student's teacher checkpoint (its weights start it with student.init: teacher)")] = None,
    history: Annotated[Optional[Path], typer.Option(help="training history CSV to write (figures per log step; the report draws it)")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    """Train one model by its recipe; under `train.nproc` > 1 the command re-runs itself under torchrun."""
    p = read_params(params)
    from noisystudent.runtime import relaunch

    relaunch(p.train.nproc)  # nproc > 1: this command again, under torchrun
    with user_errors():
        run(p, model, data, out, metrics, selected, history, teacher)


if __name__ == "__main__":
    cli()
