"""Stage `gallery@<iteration>`: the paper's Figure 1 — unlabeled images where the student and
the teacher that labeled for it disagree, the student's corrections first."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors
from noisystudent.params import Params

cli = app(__doc__)


def run(p: Params, iteration: str, data_dir: Path, teacher_ckpt: Path, student_ckpt: Path, out: Path) -> dict:
    """A seeded sample of the unlabeled pool, predicted by the teacher and by its student
    (each un-noised, with its own preprocessing); where they disagree (corrections first when
    the hidden label is known) as a PNG grid, every shown prediction in a CSV beside it."""
    import numpy as np
    import pandas as pd

    from noisystudent import plots
    from noisystudent.checkpoint import load_model
    from noisystudent.data import Prepared
    from noisystudent.evaluate import gallery_kinds, gallery_rows, softmax
    from noisystudent.inference import id_loader, inference_runtime, predict_logits
    from noisystudent.io import atomic_write_csv
    from noisystudent.runtime import set_threads
    from noisystudent.tracking import stage_run
    from noisystudent.transforms import eval_transform

    set_threads(p.train.num_threads)
    g = p.eval.gallery
    data = Prepared.load(data_dir)
    pool = data.split("unlabeled")["id"].to_numpy()
    ids = np.sort(np.random.default_rng(g.seed).permutation(pool)[: g.pool])
    rt = inference_runtime(p.train.device)
    preds = {}
    with stage_run(p, f"gallery@{iteration}") as tracked:
        for role, ckpt_path in (("teacher", teacher_ckpt), ("student", student_ckpt)):
            model, ckpt = load_model(ckpt_path)
            rt.model(model)
            dl = id_loader(data, ids, eval_transform(ckpt["data_config"]), p.eval.batch_size, rt, p.speed.data_workers)
            logits, _ = predict_logits(model, dl, desc=f"gallery@{iteration} {role}", rt=rt)
            probs = softmax(logits.numpy())
            preds[role], preds[f"{role}_conf"] = probs.argmax(1), probs.max(1)
        truth = pd.read_parquet(data.root / "unlabeled_truth.parquet").set_index("id")["label"]
        frame = pd.DataFrame({"id": ids, **preds, "truth": truth.reindex(ids).fillna(-1).astype(int).to_numpy()})
        shown = gallery_rows(frame, g.images)
        kinds = pd.Series(gallery_kinds(frame)).value_counts()
        counts = {k: int(kinds.get(k, 0)) for k in ("corrected", "regressed", "disagree")}
        atomic_write_csv(out.with_suffix(".csv"), shown)
        images = np.stack([_hwc(data.images[int(i)]) for i in shown["id"]])
        title = (f"T: {p.iterations[iteration].teacher}'s label, S: {iteration}'s, on {len(ids)} unlabeled images: "
                 + ", ".join(f"{k} {v}" for k, v in counts.items())
                 + "\ngreen = right, red = wrong (hidden label); the student's corrections first, then its regressions")
        tracked.log_metrics({f"gallery_{k}": v for k, v in counts.items()})
        tracked.log_artifact(out.with_suffix(".csv"))
        tracked.log_artifact(plots.prediction_grid(images, shown, out, title))
    return counts


def _hwc(img):
    import numpy as np

    a = np.asarray(img)
    return a[..., None] if a.ndim == 2 else a


@cli.command()
def main(
    iteration: Annotated[str, typer.Option(help="key under `iterations` in params.yaml (the student)")],
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    teacher: Annotated[Path, typer.Option(help="the teacher's checkpoint (the one that labeled for this student)")],
    student: Annotated[Path, typer.Option(help="the student's checkpoint")],
    out: Annotated[Path, typer.Option(help="PNG grid to write (and a CSV of the shown predictions beside it)")],
    params: ParamsOpt = Path("params.yaml"),
):
    """Draw where one student corrects (and regresses from) its teacher."""
    p = read_params(params)
    with user_errors():
        c = run(p, iteration, data, teacher, student, out)
        typer.echo(f"gallery@{iteration}: " + ", ".join(f"{k} {v}" for k, v in c.items()) + f" -> {out}")


if __name__ == "__main__":
    cli()
