"""Stage report: one Markdown page for this run or DVC experiment (figures, tables, params),
assembled from what the other stages wrote under metrics/; logged to MLflow."""
from pathlib import Path
from typing import Annotated

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    metrics: Annotated[Path, typer.Option(help="the pipeline's metrics folder")] = Path("metrics"),
    out: Annotated[Path, typer.Option(help="folder to write report.md and its figures into (replaced whole)")] = Path("docs/report"),
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    with user_errors():
        from noisystudent.pipeline import report_stage

        typer.echo(f"report: {report_stage(p, metrics, out)}")


if __name__ == "__main__":
    cli()
