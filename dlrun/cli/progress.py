"""What the user sees while training: a rich live view in a terminal, plain lines elsewhere.

Both are ProgressListeners of the training loop. Running means are read from the device only at a
display refresh (a few times a second), never per batch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dlrun import jsonio
from dlrun.api import direction

REFRESH_S = 0.25


def fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


class PlainProgress:
    """One line per epoch, no control characters: for logs, pipes and CI."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out

    @property
    def out(self) -> TextIO:
        # Resolved at each write, not at import: tests and wrappers swap sys.stdout.
        return self._out or sys.stdout

    def message(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def on_train_begin(self, trainer: Any) -> None: ...

    def on_epoch_begin(self, epoch: int, epochs: int, batches: int) -> None:
        self.epochs = epochs

    def on_batch_end(self, batch: int, batches: int, samples: int, running: Callable[[], dict[str, float]]) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float], seconds: float) -> None:
        parts = [f"Epoch {epoch + 1}/{self.epochs}", f"{seconds:.1f}s"]
        parts += [f"{k}: {fmt(v)}" for k, v in logs.items()]
        print(" - ".join(parts), file=self.out, flush=True)

    def on_train_end(self, history: dict[str, list[float]]) -> None: ...


class JsonProgress(PlainProgress):
    """One JSON object per epoch, for other programs."""

    def message(self, text: str) -> None:
        print(jsonio.dumps({"event": "message", "text": text}), file=self.out, flush=True)

    def on_epoch_end(self, epoch, logs, seconds):
        print(
            jsonio.dumps({"event": "epoch", "epoch": epoch + 1, "seconds": round(seconds, 3), **logs}),
            file=self.out,
            flush=True,
        )


class RichProgress:
    """A live progress bar for the current epoch above a table that gains a row per epoch."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.rows: list[tuple[int, dict[str, float], float]] = []
        self.progress = Progress(
            TextColumn("[bold]Epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[speed]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=console,
            transient=False,
        )
        self.task = None
        self.live: Live | None = None
        self._last = 0.0

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)  # paths and names are not markup

    def _table(self) -> Table:
        table = Table(title=None, header_style="bold", expand=False)
        keys = list(self.rows[0][1]) if self.rows else []
        table.add_column("epoch", justify="right")
        for k in keys:
            table.add_column(k, justify="right")
        table.add_column("time", justify="right")
        best = {}
        for k in keys:
            vals = [r[1][k] for r in self.rows if math.isfinite(r[1][k])]
            if vals and k != "learning_rate":
                best[k] = max(vals) if direction(k) == "max" else min(vals)
        for epoch, logs, seconds in self.rows:
            cells = [str(epoch + 1)]
            for k in keys:
                text = fmt(logs[k]) if k != "learning_rate" else f"{logs[k]:.3g}"
                cells.append(f"[bold green]{text}[/]" if best.get(k) == logs[k] and len(self.rows) > 1 else text)
            table.add_row(*cells, f"{seconds:.1f}s")
        return table

    def _render(self) -> Group:
        return Group(self._table(), self.progress) if self.rows else Group(self.progress)

    def on_train_begin(self, trainer: Any) -> None:
        self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=False)
        self.live.start()

    def on_epoch_begin(self, epoch: int, epochs: int, batches: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("train", total=batches, epoch=f"{epoch + 1}/{epochs}", speed="", metrics="")
        self._start = time.perf_counter()
        self._last = 0.0

    def on_batch_end(self, batch: int, batches: int, samples: int, running: Callable[[], dict[str, float]]) -> None:
        now = time.perf_counter()
        if now - self._last < REFRESH_S and batch + 1 < batches:
            return
        self._last = now
        speed = samples / max(now - self._start, 1e-9)
        metrics = "  ".join(f"{k} {fmt(v)}" for k, v in running().items())
        self.progress.update(self.task, completed=batch + 1, speed=f"{speed:,.0f} samples/s", metrics=metrics)

    def on_epoch_end(self, epoch: int, logs: dict[str, float], seconds: float) -> None:
        self.rows.append((epoch, dict(logs), seconds))
        if self.live:
            self.live.update(self._render())

    def on_train_end(self, history: dict[str, list[float]]) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        if self.live:
            self.live.update(self._table() if self.rows else Group())
            self.live.stop()
            self.live = None


class DownloadBar:
    """A rich progress bar (size, speed, ETA) for dataset downloads: a `ProgressFn`."""

    def __init__(self, console: Console, description: str = "download") -> None:
        from rich.progress import DownloadColumn, TransferSpeedColumn

        self.progress = Progress(
            TextColumn(description),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("download", total=total)
        self.progress.update(self.task, completed=done, total=total)
        if total is not None and done >= total:
            self.close()

    def close(self) -> None:
        if self.task is not None:
            self.progress.stop()
            self.task = None
