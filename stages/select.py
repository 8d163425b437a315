"""Stage `select@<iteration>`: keep pseudo labels at or above `select.threshold`, balance
classes to `select.per_class` images (the official filter_unlabel.py algorithm)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors
from noisystudent.params import Params

cli = app(__doc__)


def run(p: Params, iteration: str, data_dir: Path, labels: Path, out: Path, metrics_out: Path,
        confidence_out: Path | None = None, classes_out: Path | None = None) -> dict:
    """Threshold + balancing; `confidence_out` / `classes_out`: the confidence histogram and
    the per-class counts before and after balancing (CSV for DVC plots, a PNG beside each)."""
    import pandas as pd

    from noisystudent import plots
    from noisystudent.data import Prepared
    from noisystudent.io import atomic_write_csv, atomic_write_json
    from noisystudent.shards import select_dataset
    from noisystudent.tracking import stage_run

    s = p.select
    data = Prepared.load(data_dir)
    with stage_run(p, f"select@{iteration}") as tracked:
        tracked.log_sections("select")
        truth = pd.read_parquet(data.root / "unlabeled_truth.parquet").set_index("id")["label"]  # where known
        stats, tables = select_dataset(labels, out, s.threshold, s.per_class, data.num_classes, s.seed, truth=truth,
                                       balance=s.balance, fraction=s.unlabeled_fraction)
        teacher = p.iterations[iteration].teacher
        stats = {"teacher": teacher, **stats}  # the report names each student's teacher from here
        atomic_write_json(metrics_out, stats)
        tracked.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))})
        tracked.log_artifact(metrics_out)
        title = f"{iteration}, labels by {teacher}"
        if confidence_out is not None:
            hist = tables["confidence"]
            atomic_write_csv(confidence_out, hist)
            edges = [*hist["bin_left"], hist["bin_right"].iloc[-1]]
            tracked.log_artifact(plots.confidence_histogram(hist["images"], edges, s.threshold, confidence_out.with_suffix(".png"), title))
        if classes_out is not None:
            atomic_write_csv(classes_out, tables["classes"])
            tracked.log_artifact(plots.class_counts(tables["classes"], classes_out.with_suffix(".png"), title))
    return stats


@cli.command()
def main(
    iteration: Annotated[str, typer.Option(help="key under `iterations` in params.yaml")],
    data: Annotated[Path, typer.Option(help="prepared data folder (for the hidden labels)")],
    labels: Annotated[Path, typer.Option(help="folder of pseudo-label shards from pseudo_label")],
    out: Annotated[Path, typer.Option(help="selected set to write (Parquet, one row per image with its `copies`)")],
    metrics: Annotated[Path, typer.Option(help="selection figures JSON to write")],
    confidence: Annotated[Optional[Path], typer.Option(help="confidence histogram CSV to write (a PNG beside it)")] = None,
    classes: Annotated[Optional[Path], typer.Option(help="per-class counts before/after balancing CSV to write (a PNG beside it)")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    """Filter and balance one iteration's pseudo labels."""
    p = read_params(params, models=False)  # builds no model: no torch, no timm
    with user_errors():
        s = run(p, iteration, data, labels, out, metrics, confidence, classes)
        typer.echo(f"selected {s['selected']} ({s['unique']} unique), pseudo-label acc {s.get('pseudo_label_acc_selected', float('nan')):.4f}")


if __name__ == "__main__":
    cli()
