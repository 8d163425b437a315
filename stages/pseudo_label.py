"""Stage pseudo_label@<iteration>: the un-noised teacher labels every unlabeled image."""
from pathlib import Path
from typing import Annotated

import typer

from noisystudent.cli import ParamsOpt, app, read_params

cli = app(__doc__)


@cli.command()
def main(
    iteration: Annotated[str, typer.Option(help="key under `iterations` in params.yaml")],
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    teacher: Annotated[Path, typer.Option(help="the teacher's checkpoint")],
    out: Annotated[Path, typer.Option(help="pseudo labels to write (Parquet)")],
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    from noisystudent.pipeline import pseudo_label_stage

    frame = pseudo_label_stage(p, iteration, data, teacher, out)
    typer.echo(f"labeled {len(frame)} images, mean confidence {frame['confidence'].mean():.3f}")


if __name__ == "__main__":
    cli()
