"""Stage prepare: split the embedded digits into labeled / unlabeled / val / test."""
from pathlib import Path
from typing import Annotated

import typer

from noisystudent.cli import ParamsOpt, app, read_params

cli = app(__doc__)


@cli.command()
def main(out: Annotated[Path, typer.Option(help="folder to write images and manifests to")], params: ParamsOpt = Path("params.yaml")):
    p = read_params(params)
    from noisystudent.pipeline import prepare_stage

    meta = prepare_stage(p, out)
    typer.echo(f"prepared {meta['dataset']}: {meta['counts']}")


if __name__ == "__main__":
    cli()
