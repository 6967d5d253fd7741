"""What `dlrun sweep` shows: a live rich table of trials in a terminal, one plain line per trial elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from dlrun.api import SweepListener
from dlrun.cli.progress import fmt

STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan", "WAITING": "dim"}


def _value(v: Any) -> str:
    if isinstance(v, float):
        return fmt(v)
    return str(v)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_value(v)}" for k, v in params.items())


class PlainSweepView(SweepListener):
    """One line per finished trial, no control characters: for logs, pipes and CI."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    def on_sweep_begin(self, sweep_dir: Path, spec: Any, goal: str, done: list[Any]) -> None:
        self.metric = spec.metric
        start = f" ({len(done)} already in the study)" if done else ""
        print(
            f"sweep {spec.name}: {spec.trials} trials, {spec.parallel} at once, {goal} {spec.metric}{start}",
            file=self.out,
            flush=True,
        )
        print(f"sweep folder: {sweep_dir}", file=self.out, flush=True)

    def on_trial_end(self, record: Any, best: Any) -> None:
        value = f"{self.metric} {_value(record.value)}" if record.value is not None else "no value"
        mark = "  (best so far)" if best is not None and best.number == record.number else ""
        why = f": {record.message}" if record.state == "FAIL" and record.message else ""
        seconds = f" {record.seconds:.1f}s" if record.seconds is not None else ""
        line = f"trial {record.number} {record.state} {value} [{_params(record.params)}]{seconds}{mark}{why}"
        print(line, file=self.out, flush=True)

    def message(self, text: str) -> None:
        print(text, file=self.out, flush=True)


class RichSweepView(SweepListener):
    """A live table of every trial (the best one highlighted), running trials with their epoch."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.rows: dict[int, dict[str, Any]] = {}
        self.best: int | None = None
        self.live: Live | None = None

    def on_sweep_begin(self, sweep_dir: Path, spec: Any, goal: str, done: list[Any]) -> None:
        self.spec, self.goal, self.sweep_dir = spec, goal, sweep_dir
        for r in done:
            self.rows[r.number] = {"state": r.state, "params": r.params, "value": r.value, "epoch": ""}
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def on_trial_begin(self, number: int, params: dict[str, Any]) -> None:
        self.rows[number] = {"state": "RUNNING", "params": params, "value": None, "epoch": ""}
        self._update()

    def on_trial_epoch(self, number: int, epoch: int, epochs: int, logs: dict[str, float]) -> None:
        row = self.rows[number]
        row["epoch"] = f"{epoch}/{epochs}"
        row["current"] = logs.get(self.spec.metric)
        self._update()

    def on_trial_end(self, record: Any, best: Any) -> None:
        row = self.rows.setdefault(record.number, {"params": record.params, "epoch": ""})
        row.update(state=record.state, value=record.value, message=record.message, seconds=record.seconds)
        self.best = best.number if best is not None else None
        self._update()

    def message(self, text: str) -> None:
        self.console.print(escape(text))

    def close(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
            self.live = None

    def _update(self) -> None:
        if self.live is not None:
            self.live.update(self._render())

    def _render(self) -> Any:
        spec = self.spec
        title = f"sweep {spec.name}: {spec.method}, {self.goal} {spec.metric} ({escape(str(self.sweep_dir))})"
        table = Table(title=escape(title), title_justify="left")
        table.add_column("trial", justify="right")
        table.add_column("state")
        for p in spec.parameters:
            table.add_column(escape(p.path.rsplit(".", 1)[-1] if len(p.path) > 24 else p.path), justify="right")
        table.add_column(escape(spec.metric), justify="right")
        table.add_column("epoch", justify="right")
        table.add_column("s", justify="right")
        for number in sorted(self.rows):
            row = self.rows[number]
            state = row["state"]
            value = row.get("value")
            if value is None and state == "RUNNING" and row.get("current") is not None:
                shown = f"[dim]{fmt(row['current'])}[/]"
            else:
                shown = _value(value) if value is not None else "-"
            if state == "FAIL" and row.get("message"):
                shown = escape(str(row["message"])[:40])
            cells = [escape(_value(row["params"].get(p.path, "-"))) for p in spec.parameters]
            seconds = row.get("seconds")
            style = "bold green" if number == self.best else None
            table.add_row(
                str(number),
                f"[{STATE_STYLE.get(state, 'white')}]{state}[/]",
                *cells,
                shown,
                row.get("epoch", ""),
                f"{seconds:.1f}" if seconds is not None else "",
                style=style,
            )
        done = sum(1 for r in self.rows.values() if r["state"] in ("COMPLETE", "PRUNED", "FAIL"))
        return Group(table, f"{done} of {spec.trials} trials finished")
