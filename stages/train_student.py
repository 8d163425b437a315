"""Stage train_student@<iteration>: a noised student on labeled + selected pseudo-labeled
images (sections `student`, `noise`, `iterations.<iteration>`), trained from scratch."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, fail, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    iteration: Annotated[str, typer.Option(help="key under `iterations` in params.yaml")],
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    selected: Annotated[Path, typer.Option(help="selected pseudo labels (Parquet)")],
    out: Annotated[Path, typer.Option(help="checkpoint to write")],
    metrics: Annotated[Path, typer.Option(help="training metrics JSON to write")],
    history: Annotated[Optional[Path], typer.Option(help="training history CSV to write (figures per log step; the report draws it)")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    from noisystudent.runtime import relaunch

    relaunch(p.train.nproc)  # nproc > 1: this command again, under torchrun
    with user_errors():
        if iteration not in p.iterations:
            fail(f"--iteration {iteration!r} is not a key of `iterations` in {params} ({', '.join(p.iterations)})")
        from noisystudent.pipeline import train_stage

        train_stage(p, iteration, data, out, metrics, selected, history_out=history)


if __name__ == "__main__":
    cli()
