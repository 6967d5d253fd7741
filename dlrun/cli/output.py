"""What every command shares: consoles, the error guard (message and exit code), progress listeners."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

#: Seconds a rank other than 0 waits, on an error every rank should have met, for rank 0 to report
#: it and end the job, before it reports it itself.
RANK_ZERO_GRACE = 5.0

#: Set by the `--debug` option of the main command.
state = {"debug": False}

#: `--debug` is accepted after the command too (`dlrun train c.yaml --debug`), where people type it.
DebugOption = Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads to compute on (default: OMP_NUM_THREADS or OPENBLAS_NUM_THREADS if set, else every "
        "core). Results are the same whatever the count.",
    ),
]


def stderr() -> Console:
    return Console(stderr=True, no_color="NO_COLOR" in os.environ, highlight=False)


def stdout() -> Console:
    """Tables for stdout: full width when piped (rich would assume 80 columns)."""
    tty = sys.stdout.isatty()
    return Console(no_color="NO_COLOR" in os.environ, width=None if tty else 200, highlight=False)


def guard(fn: Callable[[], Any], debug: bool = False) -> Any:
    """Run a command body: DlrunError -> one message and its exit code; no traceback unless --debug."""
    from dlrun.errors import ConfigError, DlrunError, TrainingInterrupted, UsageError
    from dlrun.parallel import active

    try:
        return fn()
    except DlrunError as exc:
        comm = active()
        rank = comm.rank if comm is not None else 0
        # Every rank of a data-parallel run finds the same config or usage error, and stops together
        # on a signal: rank 0 says it once (and its MPI_Abort ends the others while they wait here).
        # Another error may be this rank's alone: it says it.
        shared = isinstance(exc, (ConfigError, UsageError, TrainingInterrupted))
        if rank > 0 and shared and not isinstance(exc, TrainingInterrupted):
            time.sleep(RANK_ZERO_GRACE)  # still alive: rank 0 did not stop, so say it here
        if rank == 0 or not shared or not isinstance(exc, TrainingInterrupted):
            console = stderr()
            if state["debug"] or debug:  # the traceback as well, with the same message and exit code
                console.print_exception()
            where = f"rank {rank} of {comm.size}: " if comm is not None and comm.size > 1 else ""
            snippet = source_snippet(exc.file, exc.line, exc.column)
            # One write: under mpiexec the MPI_Abort below can end the job before a second write of
            # this rank's reaches the terminal (the snippet went missing so in CI).
            message = f"[bold red]error:[/] {where}{escape(str(exc))}"
            console.print(message + (f"\n[dim]{escape(snippet)}[/dim]" if snippet else ""), markup=True, soft_wrap=True)
        if not isinstance(exc, TrainingInterrupted):  # the ranks agreed on that stop; not on others
            end_all_ranks(exc.exit_code)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        stderr().print("[yellow]interrupted[/]")
        end_all_ranks(130)
        raise typer.Exit(130) from None


def end_all_ranks(code: int) -> None:
    """In a data-parallel run, one rank's error ends every rank now (MPI_Abort), not at their next
    all-reduce, which would wait forever; outside one, nothing."""
    from dlrun.parallel import active

    comm = active()
    if comm is not None and comm.size > 1:
        comm.abort(code)


SNIPPET_WIDTH = 100


def source_snippet(file: str | None, line: int | None, column: int | None) -> str | None:
    """The offending config line with a caret under the column, as compilers show it."""
    if not file or not line:
        return None
    try:
        if Path(file).stat().st_size > 1 << 20:  # a file too large to be a config: no snippet
            return None
        text = Path(file).read_text(encoding="utf-8").splitlines()[line - 1].expandtabs(1)
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    col = (column or 1) - 1
    # A long line is shown as a window around the column, so the message stays a few lines long.
    start = max(0, min(col - SNIPPET_WIDTH // 2, len(text) - SNIPPET_WIDTH))
    shown = text[start : start + SNIPPET_WIDTH]
    if start > 0:
        shown, col = "..." + shown, col - start + 3
    if start + SNIPPET_WIDTH < len(text):
        shown += "..."
    gutter = f"  {line} | "
    caret = " " * (len(gutter) + col) + "^"
    return f"{gutter}{shown}\n{caret}"


class ProgressMode(str, Enum):
    auto = "auto"
    rich = "rich"
    plain = "plain"
    json = "json"


def make_listener(mode: ProgressMode, quiet: bool) -> Any:
    from dlrun.api import SilentListener
    from dlrun.cli.progress import JsonProgress, PlainProgress, RichProgress

    if quiet:
        return SilentListener()
    if mode == ProgressMode.auto:
        mode = ProgressMode.rich if sys.stdout.isatty() and os.environ.get("TERM") != "dumb" else ProgressMode.plain
    if mode == ProgressMode.rich:
        return RichProgress(Console(no_color="NO_COLOR" in os.environ))
    return JsonProgress() if mode == ProgressMode.json else PlainProgress()
