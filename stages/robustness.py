"""Stage robustness@<model>: corruption errors (CE, mCE, relative mCE), flip rates (FR, mFR)
and FGSM accuracy per epsilon of one model, relative to the baseline (the supervised
teacher: run without --baseline, it is its own baseline)."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    model: Annotated[str, typer.Option(help="model name: teacher or an iteration key")],
    data: Annotated[Path, typer.Option(help="the corrupt stage's folder")],
    checkpoint: Annotated[Path, typer.Option(help="the model's checkpoint")],
    out: Annotated[Path, typer.Option(help="robustness metrics JSON to write (plot CSVs and PNG beside it)")],
    baseline: Annotated[Optional[Path], typer.Option(help="the baseline's robustness JSON (omit for the baseline itself)")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    with user_errors():
        from noisystudent.pipeline import robustness_stage

        m = robustness_stage(p, model, data, checkpoint, out, baseline)
        fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
        typer.echo(f"{model}: clean error {100 * m['clean_error']:.1f}%, mCE {fmt(m['mce'])}, mFR {fmt(m['mfr'])}, "
                   f"FGSM@{m['fgsm_epsilon']:g} acc {100 * m['fgsm_acc']:.1f}%")


if __name__ == "__main__":
    cli()
