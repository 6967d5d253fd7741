"""The `dlrun` command: a thin shell over dlrun.api. The only place that prints or picks exit codes.

Heavy modules (NumPy, the engine) are imported inside the commands so `dlrun --help` stays fast.
"""
from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(rich_markup_mode="rich", no_args_is_help=True, add_completion=False,
                  help="Declarative deep-learning training: describe a model in YAML, train it, evaluate it.")

_state = {"debug": False}


def _stderr() -> Console:
    return Console(stderr=True, no_color="NO_COLOR" in os.environ, highlight=False)


def _guard(fn: Callable[[], Any]) -> Any:
    """Run a command body: DlrunError -> one message and its exit code; no traceback unless --debug."""
    from dlrun.errors import DlrunError

    try:
        return fn()
    except DlrunError as exc:
        if _state["debug"]:
            raise
        console = _stderr()
        console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        snippet = _source_snippet(exc.file, exc.line, exc.column)
        if snippet:
            console.print(escape(snippet), markup=True, soft_wrap=True, style="dim")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        _stderr().print("[yellow]interrupted[/]")
        raise typer.Exit(130) from None


def _source_snippet(file: str | None, line: int | None, column: int | None) -> str | None:
    """The offending config line with a caret under the column, as compilers show it."""
    if not file or not line:
        return None
    try:
        text = Path(file).read_text(encoding="utf-8").splitlines()[line - 1]
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    gutter = f"  {line} | "
    caret = " " * (len(gutter) + (column or 1) - 1) + "^"
    return f"{gutter}{text.expandtabs(1)}\n{caret}"


class ProgressMode(str, Enum):
    auto = "auto"
    rich = "rich"
    plain = "plain"
    json = "json"


def _listener(mode: ProgressMode, quiet: bool) -> Any:
    from dlrun.console import JsonProgress, PlainProgress, RichProgress
    from dlrun.training.loop import SilentListener

    if quiet:
        return SilentListener()
    if mode == ProgressMode.auto:
        mode = ProgressMode.rich if sys.stdout.isatty() and os.environ.get("TERM") != "dumb" else ProgressMode.plain
    if mode == ProgressMode.rich:
        return RichProgress(Console(no_color="NO_COLOR" in os.environ))
    return JsonProgress() if mode == ProgressMode.json else PlainProgress()


@app.callback()
def main_callback(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug
    if version:
        from dlrun import __version__

        print(f"dlrun {__version__}")
        raise typer.Exit(0)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="The YAML config to train.")],
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where run folders go.")] = Path("runs"),
    device: Annotated[Optional[str], typer.Option(help="Override the config's device: auto, cpu or gpu.")] = None,
    progress: Annotated[ProgressMode, typer.Option(help="auto (rich in a terminal, plain otherwise), rich, plain, json.")] = ProgressMode.auto,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final result.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: KEY.PATH=VALUE (YAML), repeatable.")] = None,
) -> None:
    """Train a model described by a YAML config and write a run folder.

    [bold]Example:[/] dlrun train configs/fashion_mnist_mlp.yaml
    """

    def body() -> None:
        from dlrun import api

        listener = _listener(progress, quiet)
        result = api.train(config, runs_dir=runs_dir, listener=listener, device=device, overrides=set_)
        if progress == ProgressMode.json and not quiet:
            print(json.dumps({"event": "end", "run_dir": str(result.run_dir), **_flat_metrics(result.metrics)}))
            return
        lines = [f"run folder: {result.run_dir}"]
        if result.best_epoch:
            lines.append(f"best epoch: {result.best_epoch}")
        for split in ("val", "test"):
            if split in result.metrics:
                lines.append(f"{split}: " + "  ".join(f"{k} {v:.4f}" for k, v in result.metrics[split].items()))
        print("\n".join(lines))

    _guard(body)


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


@app.command()
def summary(
    source: Annotated[Path, typer.Argument(help="A YAML config or a checkpoint (.npz).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
) -> None:
    """Print a Keras-style model summary (shapes, parameter counts) without touching data.

    [bold]Example:[/] dlrun summary configs/fashion_mnist_mlp.yaml --json
    """

    def body() -> None:
        from dlrun import api

        text, data = api.summary(source)
        print(json.dumps(data, indent=2) if as_json else text, end="\n" if as_json else "")

    _guard(body)


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file from a run's checkpoints/ folder.")],
    split: Annotated[str, typer.Option(help="test or val.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = "cpu",
    data_path: Annotated[Optional[str], typer.Option("--data-path", help="Folder holding the dataset files.")] = None,
) -> None:
    """Score a saved model on its dataset's test (or validation) split.

    [bold]Example:[/] dlrun evaluate runs/fashion_mnist_mlp/20260101-120000/checkpoints/best.npz
    """

    def body() -> None:
        from dlrun import api
        from dlrun.errors import DlrunError

        if split not in ("test", "val"):
            raise DlrunError(f"--split must be test or val, got {split!r}")
        scores = api.evaluate(checkpoint, split=split, device=device, data_path=data_path)
        if as_json:
            print(json.dumps(scores))
        else:
            print("  ".join(f"{k}: {v:.4f}" for k, v in scores.items()))

    _guard(body)


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="The YAML config to check.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config value: KEY.PATH=VALUE.")] = None,
) -> None:
    """Check a config (schema, names, arguments, shapes) without data or training: for CI.

    [bold]Example:[/] dlrun validate configs/fashion_mnist_cnn.yaml
    """

    def body() -> None:
        from dlrun import api

        setup = api.prepare(config, device="cpu", overrides=set_)
        trainable, frozen = setup.model.param_counts()
        print(f"ok: {config} ({len(setup.model.nodes)} layers, {trainable + frozen:,} parameters)")

    _guard(body)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
