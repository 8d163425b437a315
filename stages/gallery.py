"""Stage gallery@<iteration>: the paper's Figure 1, where a student corrects its teacher on
unlabeled images (a PNG grid of predictions and confidences, a CSV of what it shows)."""
from pathlib import Path
from typing import Annotated

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    iteration: Annotated[str, typer.Option(help="key under `iterations` in params.yaml (the student)")],
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    teacher: Annotated[Path, typer.Option(help="the teacher's checkpoint (the one that labeled for this student)")],
    student: Annotated[Path, typer.Option(help="the student's checkpoint")],
    out: Annotated[Path, typer.Option(help="PNG grid to write (and a CSV of the shown predictions beside it)")],
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    with user_errors():
        from noisystudent.pipeline import gallery_stage

        c = gallery_stage(p, iteration, data, teacher, student, out)
        typer.echo(f"gallery@{iteration}: " + ", ".join(f"{k} {v}" for k, v in c.items()) + f" -> {out}")


if __name__ == "__main__":
    cli()
