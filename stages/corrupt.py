"""Stage corrupt: the robustness test images (the paper's ImageNet-C / ImageNet-P), made once
so that every model is scored on identical ones."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors
from noisystudent.params import Params

cli = app(__doc__)


def run(p: Params, data_dir: Path, out: Path) -> dict:
    """`num_images` test images (seeded, class-stratified order) at the teacher's input size,
    every corruption x severity, and every perturbation sequence, written as one folder."""
    import numpy as np

    from noisystudent import robustness as R
    from noisystudent.data import Prepared
    from noisystudent.io import atomic_dir, atomic_write_json
    from noisystudent.progress import progress
    from noisystudent.tracking import stage_run
    from noisystudent.transforms import data_config, resize_transform

    rp = p.eval.robustness
    data = Prepared.load(data_dir)
    test = data.split("test")
    take = test.iloc[R.stratified_order(test["label"].to_numpy(), rp.seed)[: rp.num_images]]
    resize = resize_transform(data_config(p.teacher.arch, data.in_chans, p.data.image_size, data.image_size))
    clean = np.stack([np.asarray(resize(data.images[int(i)])) for i in take["id"]])
    n = len(clean)
    with stage_run(p, "corrupt") as tracked, atomic_dir(out) as tmp:
        corrupted = np.lib.format.open_memmap(tmp / "corrupted.npy", "w+", np.uint8, (len(rp.corruptions), len(rp.severities), *clean.shape))
        perturbed = np.lib.format.open_memmap(tmp / "perturbed.npy", "w+", np.uint8, (len(rp.perturbations), n, rp.frames, *clean.shape[1:]))
        with progress("corrupt", total=(len(rp.corruptions) * len(rp.severities) + len(rp.perturbations)) * n, unit="img") as bar:
            for ci, c in enumerate(rp.corruptions):
                for si, s in enumerate(rp.severities):
                    for k in range(n):
                        corrupted[ci, si, k] = R.corrupt_image(clean[k], c, s, R.image_seed(rp.seed, ci, s, k))
                    bar.advance(n)
            for pi, name in enumerate(rp.perturbations):
                for k in range(n):
                    perturbed[pi, k] = R.perturb_sequence(clean[k], name, rp.frames, R.image_seed(rp.seed, 1000 + pi, k))
                bar.advance(n)
        corrupted.flush()
        perturbed.flush()
        del corrupted, perturbed
        np.save(tmp / "clean.npy", clean)
        np.save(tmp / "labels.npy", take["label"].to_numpy().astype(np.int64))
        meta = {"num_images": n, "image_size": list(clean.shape[1:3]), "in_chans": data.in_chans,
                "corruptions": list(rp.corruptions), "severities": list(rp.severities),
                "perturbations": list(rp.perturbations), "frames": rp.frames, "seed": rp.seed,
                "adapted": "images under 32 px are upsampled to 32 px for the imagecorruptions 1.1.2 corruptions "
                "(carried in noisystudent/corruptions.py) and downsampled back"
                if min(clean.shape[1:3]) < R.MIN_SIZE else ""}
        atomic_write_json(tmp / "meta.json", meta)
        tracked.log_sections("eval.robustness")
    return meta


@cli.command()
def main(
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    out: Annotated[Path, typer.Option(help="folder to write the corrupted and perturbed images into")],
    params: ParamsOpt = Path("params.yaml"),
):
    """Make the corrupted and perturbed test images every model is scored on."""
    p = read_params(params, models=False)  # builds no model: no architecture checks
    with user_errors():
        meta = run(p, data, out)
        typer.echo(f"corrupt: {meta['num_images']} images x {len(meta['corruptions'])} corruptions x "
                   f"{len(meta['severities'])} severities, {len(meta['perturbations'])} perturbation sequences -> {out}")


if __name__ == "__main__":
    cli()
