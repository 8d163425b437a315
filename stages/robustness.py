"""Stages robustness_teacher, robustness_baseline and `robustness@<model>`: corruption errors (CE,
mCE, relative mCE), flip rates (FR, mFR) and FGSM accuracy per epsilon of one model, relative
to the reference (the supervised teacher: run without --baseline, it is its own reference)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from noisystudent.cli import ParamsOpt, app, read_params, user_errors
from noisystudent.params import Params

cli = app(__doc__)


def run(p: Params, model_name: str, rob_dir: Path, ckpt_path: Path, out: Path, baseline: Path | None = None) -> dict:
    """Score one model on the corrupt stage's images; write the figures (JSON, each with a 95 %
    interval), the per-image outcomes behind them (`<model>_images.npz`, which the students' stages
    and the summary pair their intervals with), the accuracy per corruption and severity and
    per FGSM epsilon (plot CSVs) and a PNG beside them."""
    import json

    import pandas as pd

    from noisystudent import plots
    from noisystudent import robustness as R
    from noisystudent import robustness_figures as F
    from noisystudent.checkpoint import load_model
    from noisystudent.io import atomic_write_csv, atomic_write_json
    from noisystudent.runtime import set_threads
    from noisystudent.tracking import stage_run

    set_threads(p.train.num_threads)
    rp = p.eval.robustness
    model, ckpt = load_model(ckpt_path)
    # run names are DVC's stage names: the baseline has its own stage
    stage = "robustness_teacher" if baseline is None else "robustness_baseline" if model_name == "baseline" else f"robustness@{model_name}"
    with stage_run(p, stage) as tracked:
        raw = R.score(model, ckpt["data_config"], rob_dir, rp.epsilons, p.eval.batch_size)
        outcomes = raw.pop("outcomes")
        if baseline is None:  # this model is the reference
            base, base_outcomes = raw, outcomes
        else:
            base, base_outcomes = json.loads(Path(baseline).read_text()), F.load_outcomes(F.outcomes_file(Path(baseline)))
        rel = F.relative_to(raw, base)
        left_out = [i for i, c in enumerate(raw["corruption_error"]) if c in rel["relative_mce_left_out"]]
        fgsm_at = [f"{e:g}" for e in rp.epsilons].index(f"{rp.fgsm_epsilon:g}")
        m = {"model": model_name, "baseline": "teacher (the supervised model; CE and FR are relative to it)",
             "num_images": raw["num_images"], "clean_error": raw["clean_error"], **rel,
             "fgsm_epsilon": rp.fgsm_epsilon, "fgsm_acc": raw["fgsm_accuracy"][f"{rp.fgsm_epsilon:g}"],
             # how far the figures could move with other test images: one image of 200 is 0.5 points
             "intervals": F.intervals(outcomes, base_outcomes, left_out, fgsm_at),
             "intervals_method": f"95 % percentile bootstrap over the {raw['num_images']} images (2,000 resamples), "
                                 "the model's and the teacher's outcomes paired on each resample",
             **{k: raw[k] for k in ("corruption_error", "flip_probability", "fgsm_accuracy", "notes")}}
        F.save_outcomes(F.outcomes_file(out), outcomes)
        atomic_write_json(out, m)
        rows = pd.DataFrame([{"corruption": c, "severity": int(s), "accuracy": 1 - e}
                             for c, by_sev in raw["corruption_error"].items() for s, e in by_sev.items()])
        atomic_write_csv(out.with_name(f"{model_name}_corruptions.csv"), rows)
        fgsm = pd.DataFrame({"epsilon": [float(e) for e in raw["fgsm_accuracy"]], "accuracy": list(raw["fgsm_accuracy"].values())})
        atomic_write_csv(out.with_name(f"{model_name}_fgsm.csv"), fgsm)
        png = plots.robustness(rows, fgsm, out.with_suffix(".png"), model_name)
        tracked.log_metrics({k: v for k, v in m.items() if isinstance(v, float)})
        for f in (out, png):
            tracked.log_artifact(f)
    return m


@cli.command()
def main(
    model: Annotated[str, typer.Option(help="model name: teacher, baseline or an iteration key")],
    data: Annotated[Path, typer.Option(help="the corrupt stage's folder")],
    checkpoint: Annotated[Path, typer.Option(help="the model's checkpoint")],
    out: Annotated[Path, typer.Option(help="robustness figures JSON to write (plot CSVs and PNG beside it)")],
    baseline: Annotated[Optional[Path], typer.Option(help="the baseline's robustness JSON (omit for the baseline itself)")] = None,
    params: ParamsOpt = Path("params.yaml"),
):
    """Score one model's robustness to corruptions, perturbations and FGSM."""
    p = read_params(params)
    with user_errors():
        m = run(p, model, data, checkpoint, out, baseline)
        fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
        typer.echo(f"{model}: clean error {100 * m['clean_error']:.1f}%, mCE {fmt(m['mce'])}, mFR {fmt(m['mfr'])}, "
                   f"FGSM@{m['fgsm_epsilon']:g} acc {100 * m['fgsm_acc']:.1f}%")


if __name__ == "__main__":
    cli()
