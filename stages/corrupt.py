"""Stage corrupt: the robustness test images, made once (seeded) so every model is scored on
identical ones: ImageNet-C corruptions x severities and ImageNet-P-style perturbation
sequences of `eval.robustness.num_images` test images."""
from pathlib import Path
from typing import Annotated

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors

cli = app(__doc__)


@cli.command()
def main(
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    out: Annotated[Path, typer.Option(help="folder to write the corrupted and perturbed images to")],
    params: ParamsOpt = Path("params.yaml"),
):
    p = read_params(params)
    with user_errors():
        from noisystudent.pipeline import corrupt_stage

        meta = corrupt_stage(p, data, out)
        typer.echo(f"corrupt: {meta['num_images']} images x {len(meta['corruptions'])} corruptions x "
                   f"{len(meta['severities'])} severities, {len(meta['perturbations'])} perturbation sequences")


if __name__ == "__main__":
    cli()
