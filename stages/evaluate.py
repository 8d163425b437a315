"""Stage evaluate@<model>: top-1/top-5, ECE, per-class accuracy, confusion matrix on test."""
from pathlib import Path
from typing import Annotated

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    model: Annotated[str, typer.Option(help="model name: teacher or an iteration key")],
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    checkpoint: Annotated[Path, typer.Option(help="the model's checkpoint")],
    metrics: Annotated[Path, typer.Option(help="metrics JSON to write")],
    predictions: Annotated[Path, typer.Option(help="per-image actual/predicted CSV (confusion plot)")],
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    with user_errors():
        from noisystudent.pipeline import evaluate_stage

        m = evaluate_stage(p, model, data, checkpoint, metrics, predictions)
        typer.echo(f"{model}: top1 {m['top1']:.4f} top5 {m['top5']:.4f} ece {m['ece']:.4f}")


if __name__ == "__main__":
    cli()
