"""Stage `pseudo_label@<iteration>`: the un-noised teacher labels every unlabeled image into
resumable Parquet shards. Re-running after an interruption keeps the finished parts."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors
from noisystudent.params import Params

cli = app(__doc__)


def _my_shards(shard: int | None, num_shards: int, rank: int, world: int) -> list[int]:
    """The one asked for; else, under torchrun, this rank's share; else all, one after another."""
    return [shard] if shard is not None else list(range(rank, num_shards, world))


def run(p: Params, iteration: str, data_dir: Path, teacher_ckpt: Path, out: Path, shard: int | None = None,
        num_shards: int | None = None) -> int:
    """The teacher, not noised (eval mode, its own eval transform), labels every unlabeled
    image, streaming into bounded, resumable Parquet parts under `out` (see shards.py).
    Returns the number of rows this process wrote."""
    import numpy as np

    from noisystudent.checkpoint import load_model
    from noisystudent.data import Prepared
    from noisystudent.inference import id_loader, inference_runtime, noised_soft_labels, stream_soft_labels
    from noisystudent.io import file_sha256
    from noisystudent.progress import progress
    from noisystudent.provenance import fingerprint
    from noisystudent.runtime import set_threads
    from noisystudent.shards import ids_digest, label_shard, open_labels_dir
    from noisystudent.tracking import stage_run
    from noisystudent.transforms import eval_transform, train_transform

    set_threads(p.train.num_threads)
    pp, workers, seed = p.pseudo, p.speed.data_workers, p.train.seed
    # under torchrun the ranks label apart (no process group): each its share of the shards
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    num_shards = num_shards or pp.num_shards
    data = Prepared.load(data_dir)
    model, ckpt = load_model(teacher_ckpt, noised=pp.noised)
    rt = inference_runtime(p.train.device, pp.precision, p.train.channels_last)
    rt.model(model)
    tf = eval_transform(ckpt["data_config"])  # the teacher's own preprocessing, never noised
    if pp.noised:  # the ablation: the noise the teacher was trained with (its dropout and drop-path: load_model)
        own = ckpt["recipe"]["noise"]
        tf = train_transform(ckpt["data_config"], own["randaugment_n"], own["randaugment_m"])
    ids = data.split("unlabeled")["id"].to_numpy()
    # kept parts are reused only if made by this code, params, teacher and images (else cleared)
    made_for = fingerprint(p, Path(__file__), teacher_sha256=file_sha256(teacher_ckpt), ids_sha256=ids_digest(ids),
                           num_ids=int(len(ids)), data_sha256=data.meta["content_sha256"], num_shards=num_shards)
    # every process labeling this folder (torchrun ranks, --shard jobs) opens it; the first one sets it up
    open_labels_dir(out, made_for)

    def predict(chunk: np.ndarray):
        if pp.noised:
            return noised_soft_labels(model, data, chunk, tf, pp.temperature, seed, pp.batch_size, rt, workers)
        return stream_soft_labels(model, id_loader(data, chunk, tf, pp.batch_size, rt, workers), pp.temperature, rt)

    written = 0
    # one MLflow run per labeling: under torchrun, rank 0's (the ranks' rows go to one folder)
    with stage_run(p, f"pseudo_label@{iteration}", enabled=rank == 0) as tracked:
        tracked.log_params({"teacher": ckpt["name"], "teacher_arch": ckpt["arch"]})
        tracked.log_sections("pseudo")
        with progress(f"pseudo_label@{iteration}", total=len(ids), unit="img") as bar:
            for s in _my_shards(shard, num_shards, rank, world):
                written += label_shard(ids, s, num_shards, out, pp.rows_per_file, predict, on_rows=bar.advance)
        tracked.log_metrics({"rows_written": written, "num_ids": len(ids)})
    return written


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
    """Label the unlabeled pool with the teacher; `pseudo.nproc` > 1 re-runs it under torchrun."""
    p = read_params(params)
    from noisystudent.runtime import relaunch

    if shard is None:  # one shard asked for: this process alone
        relaunch(p.pseudo.nproc)  # nproc > 1: this command again, under torchrun
    with user_errors():
        n = run(p, iteration, data, teacher, out, shard, num_shards)
        typer.echo(f"pseudo_label@{iteration}: wrote {n} rows to {out}")


if __name__ == "__main__":
    cli()
