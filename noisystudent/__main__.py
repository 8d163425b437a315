"""`python -m noisystudent --help`: commands beside the pipeline stages (which `dvc repro`
runs from `stages/`)."""
import typer

from .cli import app

cli = app(__doc__)


@cli.command("sync-mlflow")
def sync_mlflow():
    """Send the MLflow records that stages kept in mlflow-pending/ while the tracking store
    was down or locked (every stage also retries them when it starts)."""
    from .tracking import pending_dir, sync_pending

    n = sync_pending()
    typer.echo(f"{n} pending run(s) sent; {len(list(pending_dir().glob('*.json'))) if pending_dir().is_dir() else 0} left")


@cli.command("stages")
def stages():
    """List the pipeline's stages, in order (`dvc dag` draws the graph)."""
    import yaml

    for name in yaml.safe_load(open("dvc.yaml"))["stages"]:
        typer.echo(name)


if __name__ == "__main__":
    cli()
