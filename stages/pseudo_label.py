"""Stage pseudo_label@<iteration>: the un-noised teacher labels every unlabeled image into
resumable Parquet shards. Re-running after an interruption keeps the finished parts."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    iteration: Annotated[str, typer.Option(help="key under `iterations` in params.yaml")],
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    teacher: Annotated[Path, typer.Option(help="the teacher's checkpoint")],
    out: Annotated[Path, typer.Option(help="folder of pseudo-label Parquet shards to write")],
    shard: Annotated[Optional[int], typer.Option(help="label only this shard (default: all, or this torchrun rank's)")] = None,
    num_shards: Annotated[Optional[int], typer.Option(help="number of shards (default: pseudo.num_shards)")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    from noisystudent.runtime import relaunch

    if shard is None:  # one shard asked for: this process alone
        relaunch(p.pseudo.nproc)  # nproc > 1: this command again, under torchrun
    with user_errors():
        from noisystudent.pipeline import pseudo_label_stage

        n = pseudo_label_stage(p, iteration, data, teacher, out, shard, num_shards)
        typer.echo(f"pseudo_label@{iteration}: wrote {n} rows to {out}")


if __name__ == "__main__":
    cli()
