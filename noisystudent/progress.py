"""One progress bar style for every long loop (rich); quiet when NS_QUIET=1 (tests)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)


@contextmanager
def progress(desc: str, total: int, enabled: bool = True) -> Iterator[_Bar]:
    if not enabled or os.environ.get("NS_QUIET") == "1":
        yield _Bar(None, None)
        return
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    # refresh slowly: under `dvc repro` output is a pipe, where each refresh is a new line
    with Progress(*cols, refresh_per_second=2, transient=False) as p:
        yield _Bar(p, p.add_task(desc, total=total))
