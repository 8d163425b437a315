"""Stage select@<iteration>: confidence threshold, then the official class balancing."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    iteration: Annotated[str, typer.Option(help="key under `iterations` in params.yaml")],
    data: Annotated[Path, typer.Option(help="prepared data folder (for the hidden labels)")],
    labels: Annotated[Path, typer.Option(help="folder of pseudo-label shards from pseudo_label")],
    out: Annotated[Path, typer.Option(help="selected set to write (Parquet, one row per image with its `copies`)")],
    metrics: Annotated[Path, typer.Option(help="selection metrics JSON to write")],
    confidence: Annotated[Optional[Path], typer.Option(help="confidence histogram CSV to write (a PNG beside it)")] = None,
    classes: Annotated[Optional[Path], typer.Option(help="per-class counts before/after balancing CSV to write (a PNG beside it)")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    with user_errors():
        from noisystudent.pipeline import select_stage

        s = select_stage(p, iteration, data, labels, out, metrics, confidence, classes)
        typer.echo(f"selected {s['selected']} ({s['unique']} unique), pseudo-label acc {s.get('pseudo_label_acc_selected', float('nan')):.4f}")


if __name__ == "__main__":
    cli()
