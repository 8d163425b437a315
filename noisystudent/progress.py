"""One progress display for every long loop (rich): a live bar with rate, ETA and the loop's own
figures (loss, epoch) on a terminal; on anything else (CI logs, files) no bar, one summary line
when the loop ends, so logs stay readable. NS_QUIET=1 silences both (tests)."""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text


class _Rate(ProgressColumn):
    """Items per second, in the loop's own unit (images, not steps: steps/s hides batch size)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        per = task.fields.get("per", 1)
        return Text("" if speed is None else f"{speed * per:,.0f} {task.fields.get('unit', 'it')}/s", style="cyan")


def _fields(figs: dict) -> str:
    return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in figs.items())


class _Bar:
    def __init__(self, progress: Progress | None, task, line: dict | None):
        self._p, self._t, self._line = progress, task, line

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)
        elif self._line is not None:
            self._line["done"] += n

    def show(self, **figs) -> None:
        """Figures shown beside the bar (and in the closing line off a terminal)."""
        if self._p is not None:
            self._p.update(self._t, figs=_fields(figs))
        elif self._line is not None:
            self._line["figs"] = figs


@contextmanager
def progress(desc: str, total: int, enabled: bool = True, unit: str = "it", per: int = 1) -> Iterator[_Bar]:
    """`total` advances; each stands for `per` items of `unit` (a training step = a batch of images)."""
    if not enabled or os.environ.get("NS_QUIET") == "1":
        yield _Bar(None, None, None)
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        line = {"done": 0, "figs": {}}
        t0 = time.perf_counter()
        yield _Bar(None, None, line)
        s = time.perf_counter() - t0
        rate = f", {line['done'] * per / s:,.0f} {unit}/s" if s > 0 and line["done"] else ""
        print(f"{desc}: {line['done']}/{total} in {s:.1f} s{rate} {_fields(line['figs'])}".rstrip(), file=sys.stderr, flush=True)
        return
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[figs]}"))
    with Progress(*cols, console=console, refresh_per_second=4, transient=False) as p:
        yield _Bar(p, p.add_task(desc, total=total, unit=unit, per=per, figs=""), None)
