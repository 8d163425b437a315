"""Stage `evaluate@<model>`: top-1/top-5, ECE, per-class accuracy and the confusion matrix on
the test split, the model un-noised with its own preprocessing; and its validation top-1 (the
split the best student is chosen on)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors
from noisystudent.params import Params

cli = app(__doc__)


def run(p: Params, model_name: str, data_dir: Path, ckpt_path: Path, metrics_out: Path, predictions_out: Path) -> dict:
    """Write the test figures (JSON) and one actual/predicted row per test image (CSV; DVC's
    confusion plot, a PNG beside it)."""
    import pandas as pd

    from noisystudent import plots
    from noisystudent.checkpoint import load_model
    from noisystudent.data import Prepared
    from sklearn.metrics import confusion_matrix

    from noisystudent.evaluate import classification_metrics, expected_calibration_error, fit_temperature, softmax
    from noisystudent.inference import id_loader, inference_runtime, predict_logits
    from noisystudent.io import atomic_write_csv, atomic_write_json
    from noisystudent.models import num_params
    from noisystudent.runtime import set_threads
    from noisystudent.tracking import stage_run
    from noisystudent.transforms import eval_transform

    set_threads(p.train.num_threads)
    data = Prepared.load(data_dir)
    model, ckpt = load_model(ckpt_path)
    rt = inference_runtime(p.train.device)
    rt.model(model)
    test = data.split("test")
    with stage_run(p, f"evaluate@{model_name}") as tracked:
        dl = id_loader(data, test["id"].to_numpy(), eval_transform(ckpt["data_config"]), p.eval.batch_size, rt, p.speed.data_workers)
        logits, _ = predict_logits(model, dl, desc=f"evaluate@{model_name}", rt=rt)
        labels = test["label"].to_numpy()
        m = classification_metrics(logits.numpy(), labels, data.num_classes, p.eval.ece_bins)
        # validation top-1 beside: what the best student is chosen by (never by test labels)
        val = data.split("val")
        val_logits, _ = predict_logits(model, id_loader(data, val["id"].to_numpy(), eval_transform(ckpt["data_config"]),
                                                        p.eval.batch_size, rt, p.speed.data_workers), desc=None, rt=rt)
        val_top1 = float((val_logits.argmax(1).numpy() == val["label"].to_numpy()).mean())
        # calibration after temperature scaling fitted on validation: raw ECE beside what one number fixes
        t = fit_temperature(val_logits.numpy(), val["label"].to_numpy())
        scaled = expected_calibration_error(softmax(logits.numpy().astype("float64") / t), labels, p.eval.ece_bins)
        m = {"model": model_name, "arch": ckpt["arch"], "num_params": num_params(model), "val_top1": val_top1, **m,
             "temperature": t, "ece_scaled": scaled}
        preds = pd.DataFrame({"actual": labels, "predicted": logits.argmax(1).numpy()})
        atomic_write_csv(predictions_out, preds)
        atomic_write_json(metrics_out, m)
        tracked.log_metrics({f"test_{k}": v for k, v in m.items() if isinstance(v, float)})
        tracked.log_artifact(metrics_out)
        cm = confusion_matrix(preds["actual"].to_numpy(), preds["predicted"].to_numpy(), labels=range(data.num_classes))
        tracked.log_artifact(plots.confusion(cm, predictions_out.with_suffix(".png"), model_name))
    return m


@cli.command()
def main(
    model: Annotated[str, typer.Option(help="model name: teacher, baseline or an iteration key")],
    data: Annotated[Path, typer.Option(help="prepared data folder")],
    checkpoint: Annotated[Path, typer.Option(help="the model's checkpoint")],
    metrics: Annotated[Path, typer.Option(help="test figures JSON to write")],
    predictions: Annotated[Path, typer.Option(help="per-image actual/predicted CSV (confusion plot)")],
    params: ParamsOpt = Path("params.yaml"),
):
    """Score one model on the test split."""
    p = read_params(params)
    with user_errors():
        m = run(p, model, data, checkpoint, metrics, predictions)
        typer.echo(f"{model}: top1 {m['top1']:.4f} top5 {m['top5']:.4f} ece {m['ece']:.4f}")


if __name__ == "__main__":
    cli()
