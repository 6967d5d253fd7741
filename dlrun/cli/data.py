"""`dlrun data list|fetch|path`: where datasets are, fetching them ahead, and where to put them by hand."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from dlrun import jsonio
from dlrun.cli.output import DebugOption, guard, stderr, stdout

app = typer.Typer(
    name="data",
    rich_markup_mode="rich",
    no_args_is_help=True,
    help="Datasets: where they are, fetch them ahead of time, where to put them by hand.",
)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


@app.command("list")
def list_datasets(
    path: Annotated[str | None, typer.Option("--path", help="Also look here first (as data.path does).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    debug: DebugOption = False,
) -> None:
    """Show every dataset, where it was found (or not) and its size on disk.

    [bold]Example:[/] dlrun data list
    """

    def body() -> None:
        from rich.table import Table

        from dlrun import api

        entries = api.datasets(path)
        if as_json:
            print(
                jsonio.dumps(
                    [
                        {
                            "name": e.name,
                            "kind": e.kind,
                            "found": str(e.found) if e.found else None,
                            "size": e.size,
                            "description": e.description,
                        }
                        for e in entries
                    ]
                )
            )
            return
        table = Table()
        for col in ("dataset", "status", "where", "size"):
            table.add_column(col, justify="right" if col == "size" else "left")
        for e in entries:
            if e.found is not None:
                status, where = "[green]found[/]", escape(str(e.found))
            elif e.kind == "download":
                status, where = "[yellow]not found[/]", f"downloads on first use (or: dlrun data fetch {e.name})"
            elif e.kind == "generated":
                status, where = "[green]generated[/]", "from the seed"
            else:
                status, where = "[dim]your file[/]", escape(e.put)
            table.add_row(escape(e.name), status, where, _size(e.size))
        stdout().print(table)

    guard(body, debug)


@app.command()
def fetch(
    name: Annotated[str, typer.Argument(help="A dataset that is downloaded (dlrun data list shows them).")],
    debug: DebugOption = False,
) -> None:
    """Download a dataset into the user cache now (checksum-verified), so training needs no network.

    [bold]Example:[/] dlrun data fetch cifar10
    """

    def body() -> None:
        from dlrun import api
        from dlrun.cli.progress import DownloadBar

        entry = api.dataset(name)
        if entry.found is not None:
            print(f"{name}: already at {entry.found} ({_size(entry.size)})")
            return
        bar = DownloadBar(stderr(), name)
        try:
            where = api.fetch_dataset(name, bar)
        finally:
            bar.close()
        print(f"{name}: {where}")

    guard(body, debug)


@app.command()
def path(
    name: Annotated[str, typer.Argument(help="A dataset name (dlrun data list shows them).")],
    data_path: Annotated[str | None, typer.Option("--path", help="A data.path to look in first.")] = None,
    debug: DebugOption = False,
) -> None:
    """Print where a dataset is looked for, in order, and which files to put there by hand.

    [bold]Example:[/] dlrun data path cifar10
    """

    def body() -> None:
        from dlrun import api

        e = api.dataset(name, data_path)
        if e.found is not None:
            print(f"{name}: found at {e.found}")
        if e.searched:
            print("looked for, in this order:")
            for folder in e.searched:
                print(f"  {folder}")
        print(f"{e.put}" + (f"\nofficial download: {e.url}" if e.url else ""))

    guard(body, debug)
