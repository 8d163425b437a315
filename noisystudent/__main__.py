"""`python -m noisystudent`: every pipeline stage as a command (what `dvc repro` runs, with the
arguments dvc.yaml gives), and the tools beside them. Run from the repository root."""
import importlib

import typer

from .cli import app

cli = app(__doc__)

# in the pipeline's order; `dvc dag` draws the graph, dvc.yaml holds each stage's arguments
STAGES = ["prepare", "train_teacher", "pseudo_label", "select", "train_student", "gallery", "evaluate", "corrupt",
          "robustness", "summary", "report"]
for _name in STAGES:
    try:
        _mod = importlib.import_module(f"stages.{_name}")
    except ImportError:  # not at the repository root: only the tools below
        break
    cli.command(_name.replace("_", "-"), help=_mod.__doc__, rich_help_panel="Pipeline stages (dvc repro runs them)")(_mod.main)


@cli.command("sync-mlflow")
def sync_mlflow():
    """Send the MLflow records that stages kept in mlflow-pending/ while the tracking store
    was down or locked (every stage also retries them when it starts)."""
    from .tracking import pending_dir, sync_pending

    n = sync_pending()
    typer.echo(f"{n} pending run(s) sent; {len(list(pending_dir().glob('*.json'))) if pending_dir().is_dir() else 0} left")


@cli.command("stages")
def stages():
    """List the pipeline's stages as dvc.yaml declares them, in order (`dvc dag` draws the graph)."""
    import yaml

    for name in yaml.safe_load(open("dvc.yaml"))["stages"]:
        typer.echo(name)


if __name__ == "__main__":
    cli()
