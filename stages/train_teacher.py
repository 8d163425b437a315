"""Stage train_teacher: supervised training on the labeled images (section `teacher`)."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    out: Annotated[Path, typer.Option(help="checkpoint to write")],
    metrics: Annotated[Path, typer.Option(help="training metrics JSON to write")],
    history: Annotated[Optional[Path], typer.Option(help="training curves CSV to write (a PNG beside it)")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    from noisystudent.runtime import relaunch

    relaunch(p.train.nproc)  # nproc > 1: this command again, under torchrun
    with user_errors():
        from noisystudent.pipeline import train_stage

        train_stage(p, "teacher", data, out, metrics, history_out=history)


if __name__ == "__main__":
    cli()
