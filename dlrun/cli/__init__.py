"""The command line: the only place that prints or picks exit codes. Heavy modules (NumPy, the
engine) are imported inside the commands so `dlrun --help` stays fast."""

from __future__ import annotations

from dlrun.cli.commands import app


def main() -> None:
    app()


__all__ = ["app", "main"]
