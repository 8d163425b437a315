"""Shared plumbing for the thin stage commands in `stages/`."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator

import typer

from .params import Params, ParamsError, load_params

ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read (validated before anything is written)")]


def app(help: str) -> typer.Typer:
    # markdown: the hard-wrapped docstrings reflow into paragraphs, `code` shows as code
    return typer.Typer(help=help, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown")


def read_params(path: Path, models: bool = True) -> Params:
    """Validate params first: a bad value exits with one line naming the key, nothing written.
    `models=False` for stages that build no model (see `load_params`)."""
    try:
        return load_params(path, models=models)
    except ParamsError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad inputs (data, checkpoints, missing files) and a full disk end the stage with one
    line, exit 1."""
    from .io import InputError, is_disk_full

    try:
        yield
    except (InputError, FileNotFoundError) as e:
        fail(str(e))
    except OSError as e:
        if not is_disk_full(e):
            raise
        if e.filename:  # our atomic writers name the target, and leave its previous version
            fail(f"disk full writing {e.filename}: {e.strerror} (its previous version is unchanged; free space and re-run)")
        fail(f"disk full: {e} (free space and re-run)")


def fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(1)
