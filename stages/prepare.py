"""Stage prepare: load `data.name` (digits, cifar10, svhn, stl10 or an image folder), refuse
unusable image files (listed in <out>/bad_files.csv), and split into labeled / unlabeled /
val / test."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    out: Annotated[Path, typer.Option(help="folder to write images / file list and split manifests to")],
    metrics: Annotated[Optional[Path], typer.Option(help="JSON of split sizes and bad-file counts")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    with user_errors():
        from noisystudent.pipeline import prepare_stage

        meta = prepare_stage(p, out, metrics)
        typer.echo(f"prepared {meta['dataset']}: {meta['counts']}")
        if meta["bad_files"]:
            typer.echo(f"{meta['bad_files']} unusable file(s) left out, listed with reasons in {out / 'bad_files.csv'}: {meta['bad_by_reason']}")


if __name__ == "__main__":
    cli()
