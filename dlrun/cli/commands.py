"""The `dlrun` commands: a thin shell over dlrun.api.

Heavy modules (NumPy, the engine) are imported inside the commands so `dlrun --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from dlrun import jsonio
from dlrun.cli import output
from dlrun.cli.data import app as data_app

app = typer.Typer(
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    help="Declarative deep-learning training: describe a model in YAML, train it, evaluate it.",
)


def _print_version(value: bool) -> None:
    """Eager: runs while the options are parsed, so `dlrun --version` needs no command after it."""
    if value:
        from dlrun import __version__

        print(f"dlrun {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    debug: output.DebugOption = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    output.state["debug"] = debug


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="The YAML config to train.")] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume", help="Continue the run in this folder from its last checkpoint, with the config saved there."
        ),
    ] = None,
    runs_dir: Annotated[str, typer.Option("--runs-dir", help="Where run folders go.")] = "runs",
    device: Annotated[str | None, typer.Option(help="Override the config's device: auto, cpu or gpu.")] = None,
    progress: Annotated[
        output.ProgressMode, typer.Option(help="auto (rich in a terminal, plain otherwise), rich, plain, json.")
    ] = output.ProgressMode.auto,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final result.")] = False,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config value: KEY.PATH=VALUE (YAML), repeatable.")
    ] = None,
    threads: output.ThreadsOption = None,
    processes: Annotated[
        int | None,
        typer.Option("--processes", min=1, help="Train data-parallel on this many processes (runs mpiexec for you)."),
    ] = None,
    debug: output.DebugOption = False,
) -> None:
    """Train a model described by a YAML config and write a run folder.

    Ctrl-C (or SIGTERM) stops after the current batch and saves a checkpoint to resume from.
    Data-parallel: mpiexec -n 4 dlrun train config.yaml, or dlrun train config.yaml --processes 4.

    [bold]Example:[/] dlrun train configs/fashion_mnist_mlp.yaml
    [bold]Resume:[/] dlrun train --resume runs/fashion_mnist_mlp/20260101-120000
    """

    def body() -> None:
        from dlrun import api
        from dlrun.cli.progress import DownloadBar, RichProgress
        from dlrun.errors import UsageError

        if not runs_dir.strip():  # Path("") would silently mean the current folder
            raise UsageError("--runs-dir is empty", hint="pass a folder, e.g. --runs-dir runs")
        if (config is None) == (resume is None):
            raise UsageError(
                "pass a config to train, or --resume RUN_DIR to continue a run (not both)",
                hint="dlrun train configs/fashion_mnist_mlp.yaml, or dlrun train --resume runs/<name>/<time>",
            )
        if processes is not None:
            from dlrun.parallel.launch import relaunch

            relaunch(processes)  # replaces this process with mpiexec, unless already under one
        from dlrun.parallel import world

        if not world().is_writer:  # rank 0 alone prints; the others train silently
            if resume is not None:
                api.resume(resume, device=device, overrides=set_, threads=threads)
            else:
                api.train(config, runs_dir=runs_dir, device=device, overrides=set_, threads=threads)
            return
        listener = output.make_listener(progress, quiet)
        bar = None if quiet or progress == output.ProgressMode.json else DownloadBar(output.stderr(), "dataset")
        try:
            if resume is not None:
                result = api.resume(
                    resume, listener=listener, device=device, download_progress=bar, overrides=set_, threads=threads
                )
            else:
                result = api.train(
                    config,
                    runs_dir=runs_dir,
                    listener=listener,
                    device=device,
                    overrides=set_,
                    download_progress=bar,
                    threads=threads,
                )
        finally:
            if bar is not None:
                bar.close()
        if not quiet:
            for note in result.notes:
                print(f"note: {note}", file=sys.stderr)
        if progress == output.ProgressMode.json:  # with -q too: scripts read this line
            print(jsonio.dumps({"event": "end", "run_dir": str(result.run_dir), **_flat_metrics(result.metrics)}))
            return
        lines = [f"run folder: {result.run_dir}", *_score_lines(result.metrics)]
        if isinstance(listener, RichProgress):
            from rich.panel import Panel

            listener.console.print(
                Panel("\n".join(escape(line) for line in lines), title="done", expand=False, border_style="green")
            )
        else:
            print("\n".join(lines))

    output.guard(body, debug)


def _score_lines(metrics: dict[str, Any]) -> list[str]:
    """The scores of the weights the run folder calls best (what `dlrun evaluate RUN_DIR` reports),
    then the final weights' when training went on past the best epoch."""

    def scores(source: dict[str, Any], indent: str = "") -> list[str]:
        return [
            f"{indent}{split}: " + "  ".join(f"{k} {v:.4f}" for k, v in source[split].items())
            for split in ("val", "test")
            if split in source
        ]

    best = metrics.get("best")
    if not best:
        return scores(metrics)
    lines = [f"best weights: epoch {best['epoch']} ({best['checkpoint']})", *scores(best, "  ")]
    if best["epoch"] != metrics.get("epochs"):
        lines += [f"final weights: epoch {metrics['epochs']}", *scores(metrics, "  ")]
    return lines


def _flat_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_flat_metrics(value, f"{prefix}{key}_"))
        else:
            out[f"{prefix}{key}"] = value
    return out


@app.command()
def summary(
    source: Annotated[Path, typer.Argument(help="A YAML config or a checkpoint (.npz).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of the table.")] = False,
    dot: Annotated[
        Path | None,
        typer.Option(
            "--dot",
            help="Also write a Graphviz graph with shapes to this .dot file (and .png/.svg next to it when Graphviz is installed).",
        ),
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: KEY.PATH=VALUE.")] = None,
    debug: output.DebugOption = False,
) -> None:
    """Print a Keras-style model summary (shapes, parameter counts) without touching data.

    [bold]Example:[/] dlrun summary configs/fashion_mnist_mlp.yaml --json
    """

    def body() -> None:
        from dlrun import api

        text, data = api.summary(source, set_)
        if dot is not None:  # written before printing: a bad path fails with nothing on stdout
            _write_dot(api.graph(source, set_), dot)
        print(jsonio.dumps(data, indent=2) if as_json else text, end="\n" if as_json else "")
        if dot is not None:  # with --json, stdout holds the JSON alone
            _render_dot(dot, sys.stderr if as_json else sys.stdout)

    output.guard(body, debug)


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file, or a run folder (its best checkpoint).")],
    split: Annotated[str, typer.Option(help="test or val.")] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    device: Annotated[str, typer.Option(help="cpu, gpu or auto.")] = "cpu",
    data_path: Annotated[str | None, typer.Option("--data-path", help="Folder holding the dataset files.")] = None,
    threads: output.ThreadsOption = None,
    debug: output.DebugOption = False,
) -> None:
    """Score a saved model on its dataset's test (or validation) split.

    [bold]Example:[/] dlrun evaluate runs/fashion_mnist_mlp/20260101-120000/checkpoints/best.npz
    """

    def body() -> None:
        from dlrun import api
        from dlrun.errors import UsageError

        if split not in ("test", "val"):
            raise UsageError(f"--split must be test or val, got {split!r:.40}")
        report = api.evaluate_report(checkpoint, split=split, device=device, data_path=data_path, threads=threads)
        if as_json:
            print(jsonio.dumps({**report["scores"], **{k: v for k, v in report.items() if k != "scores"}}))
            return
        print(
            f"{split} ({report['samples']:,} samples): "
            + "  ".join(f"{k} {v:.4f}" for k, v in report["scores"].items())
        )
        if "confusion" in report:
            _print_confusion(report)

    output.guard(body, debug)


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="The YAML config to check.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: KEY.PATH=VALUE.")] = None,
    debug: output.DebugOption = False,
) -> None:
    """Check a config (schema, names, arguments, shapes) without data or training: for CI.

    [bold]Example:[/] dlrun validate configs/fashion_mnist_cnn.yaml
    """

    def body() -> None:
        from dlrun import api

        setup = api.validate(config, overrides=set_)
        trainable, frozen = setup.model.param_counts()
        layers = len(setup.model.nodes)
        print(f"ok: {config} ({layers} layer{'s' if layers != 1 else ''}, {trainable + frozen:,} parameters)")

    output.guard(body, debug)


def _write_dot(text: str, path: Path) -> None:
    """The .dot file, its folders created as `plot -o` does; an unwritable path is a DlrunError."""
    from dlrun.errors import DlrunError

    if path.is_dir():
        raise DlrunError("is a folder; --dot takes a file name", path=str(path), hint=f"--dot {path / 'model.dot'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise DlrunError(f"cannot write the graph ({exc.strerror or exc})", path=str(path)) from None


def _render_dot(path: Path, stream: Any) -> None:
    """Name the .dot file, and render .png/.svg next to it when Graphviz is installed."""
    import shutil
    import subprocess

    print(f"graph: {path}", file=stream)
    if shutil.which("dot"):
        for fmt in ("png", "svg"):
            out = path.with_suffix(f".{fmt}")
            subprocess.run(["dot", f"-T{fmt}", str(path), "-o", str(out)], check=False)
            print(f"graph: {out}", file=stream)
    else:
        print("(install Graphviz to render it: apt-get install graphviz)", file=stream)


def _print_confusion(report: dict[str, Any]) -> None:
    from rich.table import Table

    names = report["class_names"]
    table = Table(title="confusion matrix (rows: true class, columns: predicted)", title_justify="left")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for i in range(len(names)):
        table.add_column(str(i), justify="right")
    for i, (name, row) in enumerate(zip(names, report["confusion"])):
        cells = [f"[bold]{v}[/]" if j == i else (str(v) if v else "[dim]0[/]") for j, v in enumerate(row)]
        table.add_row(escape(f"{i} {name}"), f"{report['per_class_accuracy'][name]:.3f}", *cells)
    output.stdout().print(table)


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint file, or a run folder (its best checkpoint).")],
    input_: Annotated[
        Path, typer.Option("--input", "-i", help="An .npz of inputs (array 'x') or an image (PNG/JPEG).")
    ],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many classes to show per sample.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    output_: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also save the model's outputs for every input to this .npy file."),
    ] = None,
    threads: output.ThreadsOption = None,
    debug: output.DebugOption = False,
) -> None:
    """Print the top-k classes with probabilities for each input.

    [bold]Example:[/] dlrun predict runs/fashion_mnist_mlp/20260101-120000/checkpoints/best.npz --input shoe.png
    """

    def body() -> None:
        from dlrun import api

        rows = api.predict(checkpoint, input_, top_k=top_k, output=output_, threads=threads)
        if output_ is not None:  # stderr: stdout stays the rows (or the JSON) alone
            print(f"outputs: {output_} ({len(rows):,} samples)", file=sys.stderr)
        if as_json:
            print(jsonio.dumps([[{"class": c, "probability": p} for c, p in row] for row in rows]))
            return
        for i, row in enumerate(rows):
            print(f"{i}: " + "  ".join(f"{c} {p:.3f}" for c, p in row))

    output.guard(body, debug)


@app.command()
def export(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint file, a run folder (its best checkpoint), or an imported model.")
    ],
    format_: Annotated[str, typer.Option("--format", "-f", help="onnx, keras or safetensors.")],
    output_: Annotated[Path, typer.Option("--output", "-o", help="The file to write (replaced if it exists).")],
    uint8_input: Annotated[
        bool,
        typer.Option(
            "--uint8-input", help="ONNX: take uint8 pixels, normalised inside as predict does (else float32)."
        ),
    ] = False,
    debug: output.DebugOption = False,
) -> None:
    """Write a saved model as ONNX (for serving), a .keras file, or its weights as safetensors.

    [bold]Example:[/] dlrun export runs/fashion_mnist_cnn/20260101-120000 --format onnx -o model.onnx
    """

    def body() -> None:
        from dlrun import api

        result = api.export(checkpoint, output_, format=format_, uint8_input=uint8_input)
        print(f"{format_}: {result.path}")
        if result.note:
            print(f"note: {result.note}", file=sys.stderr)

    output.guard(body, debug)


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run folders.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG to write (default: <run>/history.png).")] = None,
    debug: output.DebugOption = False,
) -> None:
    """Plot training and validation loss/metric curves per epoch to a PNG (needs matplotlib).

    [bold]Example:[/] dlrun plot runs/fashion_mnist_mlp/20260101-120000
    """

    def body() -> None:
        from dlrun import api

        print(f"plot: {api.plot(list(run_dirs), out)}")

    output.guard(body, debug)


@app.command("runs")
def list_runs(
    root: Annotated[Path, typer.Argument(help="The runs folder.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    debug: output.DebugOption = False,
) -> None:
    """List runs: name, date, epochs, best validation metric, test metric, status.

    [bold]Example:[/] dlrun runs runs/
    """

    def body() -> None:
        from rich.table import Table

        from dlrun import api

        infos = api.runs(root)
        if as_json:
            print(jsonio.dumps([{**vars(r), "path": str(r.path)} for r in infos]))
            return
        table = Table()
        for col in ("run", "date", "epochs", "best val", "test", "status"):
            table.add_column(col, justify="right" if col in ("epochs",) else "left")
        colours = {"finished": "green", "interrupted": "yellow", "failed": "red"}
        for r in infos:
            best = f"{r.best_val[0]} {r.best_val[1]:.4f}" if r.best_val else "-"
            test = f"{r.test[0]} {r.test[1]:.4f}" if r.test else "-"
            table.add_row(
                escape(f"{r.name}/{r.path.name}"),
                r.date,
                str(r.epochs),
                best,
                test,
                f"[{colours.get(r.status, 'white')}]{r.status}[/]",
            )
        output.stdout().print(table if infos else escape(f"no runs under {root}"))
        for line in api.tracking_hints(root, infos):
            output.stdout().print(escape(line))

    output.guard(body, debug)


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="A run folder.")],
    run_b: Annotated[Path, typer.Argument(help="Another run folder.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also plot both runs' curves to this PNG.")] = None,
    debug: output.DebugOption = False,
) -> None:
    """Show two runs' config differences and their metric curves side by side.

    [bold]Example:[/] dlrun compare runs/mlp/20260101-120000 runs/mlp/20260102-090000
    """

    def body() -> None:
        from rich.table import Table

        from dlrun import api

        (cfg_a, hist_a), (cfg_b, hist_b) = api.load_run(run_a), api.load_run(run_b)
        console = output.stdout()
        diff = Table(title="config differences", title_justify="left")
        for col in ("key", str(run_a), str(run_b)):
            diff.add_column(escape(col))
        for key, a, b in api.config_diff(cfg_a, cfg_b):
            diff.add_row(escape(key), escape(api.yaml_text(a)), escape(api.yaml_text(b)))
        console.print(diff if diff.row_count else "configs are identical")
        # Every quantity either run recorded ("-" where one lacks it).
        keys = [k for k in dict.fromkeys([*hist_a, *hist_b]) if k != "learning_rate"]
        curves = Table(title="per-epoch metrics (A | B)", title_justify="left")
        curves.add_column("epoch", justify="right")
        for k in keys:
            curves.add_column(escape(k), justify="right")

        def cell(h: dict[str, list[float]], k: str, e: int) -> str:
            return f"{h[k][e]:.4f}" if e < len(h.get(k, [])) else "-"

        for e in range(max(len(next(iter(hist_a.values()), [])), len(next(iter(hist_b.values()), [])))):
            curves.add_row(str(e + 1), *[f"{cell(hist_a, k, e)} | {cell(hist_b, k, e)}" for k in keys])
        console.print(curves)
        if out is not None:
            print(f"plot: {api.plot([run_a, run_b], out)}")

    output.guard(body, debug)


@app.command()
def schema(
    sweep_file: Annotated[bool, typer.Option("--sweep", help="The schema of sweep files instead.")] = False,
    debug: output.DebugOption = False,
) -> None:
    """Print the JSON Schema of the config language (for editors: yaml-language-server).

    [bold]Example:[/] dlrun schema > dlrun.schema.json
    """

    def body() -> None:
        from dlrun import api

        print(jsonio.dumps(api.sweep_schema() if sweep_file else api.json_schema(), indent=2))

    output.guard(body, debug)


@app.command()
def sweep(
    sweep_file: Annotated[Path | None, typer.Argument(help="The sweep file (YAML).")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue the sweep in this folder (runs/<name>/<time>).")
    ] = None,
    runs_dir: Annotated[str, typer.Option("--runs-dir", help="Where sweep folders go.")] = "runs",
    trials: Annotated[
        int | None, typer.Option("--trials", help="Trials in all (the file's `trials` otherwise).")
    ] = None,
    parallel: Annotated[int | None, typer.Option("--parallel", help="Trials at once on this machine.")] = None,
    storage: Annotated[
        str | None, typer.Option("--storage", help="Optuna storage URL shared with other machines (postgresql://...).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="Override the base config's device: auto, cpu or gpu.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the result, as JSON.")] = False,
    debug: output.DebugOption = False,
) -> None:
    """Search hyperparameters with Optuna: train one run per trial, keep the best config.

    Writes runs/<name>/<time>/ with trials/<number>/ (ordinary run folders), trials.json, trials.csv,
    best.yaml and sweep.png. Ctrl-C stops the running trials after their batch (resume with --resume).

    [bold]Example:[/] dlrun sweep configs/sweeps/fashion_mnist_mlp.yaml
    [bold]Resume:[/] dlrun sweep --resume runs/fashion_mnist_mlp_sweep/20260101-120000 --trials 30
    """

    def body() -> None:
        from dlrun import api
        from dlrun.cli.sweepview import PlainSweepView, RichSweepView
        from dlrun.errors import DlrunError, UsageError

        if (sweep_file is None) == (resume is None):
            raise UsageError(
                "pass a sweep file, or --resume SWEEP_DIR to continue a sweep (not both)",
                hint="dlrun sweep sweep.yaml, or dlrun sweep --resume runs/<name>/<time>",
            )
        if resume is not None and storage is not None:
            raise UsageError("--storage applies to a new sweep; --resume uses the storage in its sweep.yaml")
        if not runs_dir.strip():
            raise UsageError("--runs-dir is empty", hint="pass a folder, e.g. --runs-dir runs")
        tty = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
        view: Any = api.SweepListener() if as_json else (RichSweepView(output.stdout()) if tty else PlainSweepView())
        try:
            if resume is not None:
                result = api.resume_sweep(resume, trials=trials, parallel=parallel, device=device, listener=view)
            else:
                result = api.sweep(
                    sweep_file,
                    runs_dir=runs_dir,
                    trials=trials,
                    parallel=parallel,
                    storage=storage,
                    device=device,
                    listener=view,
                )
        finally:
            if isinstance(view, RichSweepView):
                view.close()
        summary = result.summary()
        if as_json:
            print(jsonio.dumps(summary))
        if summary["best"] is None and summary["failed"]:  # a sweep that found nothing has failed
            raise DlrunError(
                f"no trial of the sweep completed ({summary['failed']} failed, {summary['pruned']} pruned)",
                hint=f"see the trials' messages in {result.dir / 'trials.csv'} and their logs in {result.dir / 'logs'}",
            )
        if as_json:
            return
        best = summary["best"]
        counts = f"{summary['completed']} complete, {summary['pruned']} pruned, {summary['failed']} failed"
        print(f"sweep folder: {result.dir} ({counts})")
        if best is None:
            print("no trial completed: no best config")
        else:
            print(f"best: trial {best['number']}, {result.metric} {best['value']:.6g} ({best['run_dir']})")
            print(f"best config: {result.dir / 'best.yaml'}")

    output.guard(body, debug)


@app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help="A Keras model file: .keras (Keras 3) or .h5 (legacy).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The dlrun checkpoint (.npz) to write.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="Also write the equivalent YAML config (its model.weights: OUT).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="The data section's dataset, e.g. fashion_mnist.")
    ] = None,
    data_path: Annotated[
        str | None, typer.Option("--data-path", help="The dataset's data.path (npz, csv, ...).")
    ] = None,
    normalize: Annotated[
        str,
        typer.Option(
            help="Input normalization in the config: none (Keras's outputs on the same arrays), auto, scale, standardize."
        ),
    ] = "none",
    debug: output.DebugOption = False,
) -> None:
    """Import a Keras model (h5py and json only; no Keras needed) as a dlrun checkpoint.

    [bold]Example:[/] dlrun import model.keras -o model.npz --config model.yaml --dataset fashion_mnist
    """

    def body() -> None:
        from dlrun import api

        result = api.import_model(
            source, out, config_out=config, dataset=dataset, data_path=data_path, normalize=normalize
        )
        trainable, frozen = result.params
        kind = "Functional" if result.functional else "Sequential"
        print(
            f"imported {source} ({result.kind}, Keras {result.keras_version or '?'}): {kind}, "
            f"{result.layers} layers, {trainable + frozen:,} parameters ({frozen:,} non-trainable)"
        )
        print(f"checkpoint: {result.checkpoint}")
        if result.config is not None:
            print(f"config: {result.config}")
        for note in result.notes:
            print(f"note: {note}")

    output.guard(body, debug)


app.add_typer(data_app, name="data")  # dlrun data list|fetch|path
