"""Stage prepare: load `data.name` (digits, cifar10, svhn, stl10 or an image folder), refuse
unusable image files (listed in `<out>/bad_files.csv`), and split into labeled / unlabeled /
val / test."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors
from noisystudent.params import Params

cli = app(__doc__)


def run(p: Params, out: Path, metrics_out: Path | None = None) -> dict:
    """Write the prepared folder; `metrics_out`: split sizes and bad-file counts (a DVC
    metric), with the breakdowns by reason and by converted mode in `<name>_files.json` beside it."""
    from noisystudent import splits
    from noisystudent.io import atomic_write_json
    from noisystudent.tracking import stage_run

    with stage_run(p, "prepare") as tracked:
        tracked.log_sections("data")
        meta = splits.prepare(out, p.data, p.speed.data_workers)
        figures = {**{f"n_{k}": v for k, v in meta["counts"].items()}, "bad_files": meta["bad_files"],
                   "converted": sum(meta["converted_by_mode"].values()), "num_classes": meta["num_classes"],
                   "in_chans": meta["in_chans"]}
        if metrics_out is not None:
            atomic_write_json(metrics_out, figures)
            atomic_write_json(metrics_out.with_name(f"{metrics_out.stem}_files.json"),
                              {"bad_by_reason": meta["bad_by_reason"], "converted_by_mode": meta["converted_by_mode"],
                               "bad_files_report": str(out / "bad_files.csv")})
        tracked.log_metrics(figures)
        tracked.log_artifact(out / "bad_files.csv")
    return meta


@cli.command()
def main(
    out: Annotated[Path, typer.Option(help="folder to write images / file list and split manifests to")],
    metrics: Annotated[Optional[Path], typer.Option(help="JSON of split sizes and bad-file counts")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    """Prepare the dataset named by `data` in params.yaml."""
    p = read_params(params, models=False)  # builds no model: no torch, no timm
    with user_errors():
        meta = run(p, out, metrics)
        typer.echo(f"prepared {meta['dataset']}: {meta['counts']}")
        if meta["bad_files"]:
            typer.echo(f"{meta['bad_files']} unusable file(s) left out, listed with reasons in {out / 'bad_files.csv'}: {meta['bad_by_reason']}")


if __name__ == "__main__":
    cli()
