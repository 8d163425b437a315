"""Stage report: one Markdown page for this run or DVC experiment (figures, tables, params),
assembled from what the other stages wrote under metrics/; logged to MLflow."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors
from noisystudent.params import Params

cli = app(__doc__)


def run(p: Params, metrics: Path, out: Path) -> Path:
    """The run's report page (noisystudent/report.py), logged to MLflow with its figures. Its
    title is the DVC experiment's name, so each experiment's page says which it is."""
    from noisystudent import report
    from noisystudent.tracking import stage_run

    title = os.environ.get("DVC_EXP_NAME") or "workspace run"
    with stage_run(p, "report") as tracked:
        page = report.build(p, metrics, out, title)
        for f in sorted(out.iterdir()):
            tracked.log_artifact(f)
    for f in report.missing_figures(p, metrics):
        print(f"WARNING: {f} not found: left out of {page}", flush=True)
    return page


@cli.command()
def main(
    metrics: Annotated[Path, typer.Option(help="the pipeline's metrics folder")] = Path("metrics"),
    out: Annotated[Path, typer.Option(help="folder to write report.md and its figures into (replaced whole)")] = Path("docs/report"),
    params: ParamsOpt = Path("params.yaml"),
):
    """Write the run's report page."""
    p = read_params(params, models=False)  # builds no model: no torch, no timm
    with user_errors():
        typer.echo(f"report: {run(p, metrics, out)}")


if __name__ == "__main__":
    cli()
