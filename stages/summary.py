"""Stage summary: teacher vs students, metrics/summary.json and an accuracy-per-iteration plot."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    evals: Annotated[Path, typer.Option(help="folder of evaluate outputs (<model>.json)")],
    out: Annotated[Path, typer.Option(help="summary JSON to write")],
    table: Annotated[Path, typer.Option(help="per-iteration CSV to write (DVC plot)")],
    plot: Annotated[Path, typer.Option(help="accuracy-per-iteration PNG to write")],
    robustness: Annotated[Optional[Path], typer.Option(help="folder of robustness outputs (<model>.json), if measured")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    with user_errors():
        from noisystudent.pipeline import summary_stage

        s = summary_stage(p, evals, out, table, plot, robustness)
        typer.echo(f"teacher {s['teacher_test_acc']:.4f} -> students {s['student_test_acc']}")


if __name__ == "__main__":
    cli()
