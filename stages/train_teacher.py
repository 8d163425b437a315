"""Stages train_teacher and train_baseline: supervised training on the labeled images alone,
with the teacher's recipe (section `teacher`); the baseline in section `baseline`'s architecture."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, fail, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    out: Annotated[Path, typer.Option(help="checkpoint to write")],
    metrics: Annotated[Path, typer.Option(help="training metrics JSON to write")],
    history: Annotated[Optional[Path], typer.Option(help="training history CSV to write (figures per log step; the report draws it)")] = None,
    model: Annotated[str, typer.Option(help="teacher, or baseline (the supervised baseline)")] = "teacher",
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    if model not in ("teacher", "baseline"):
        fail(f"--model {model!r}: teacher or baseline")
    from noisystudent.runtime import relaunch

    relaunch(p.train.nproc)  # nproc > 1: this command again, under torchrun
    with user_errors():
        from noisystudent.pipeline import train_stage

        train_stage(p, model, data, out, metrics, history_out=history)


if __name__ == "__main__":
    cli()
