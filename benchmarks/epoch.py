"""Seconds per epoch of `dlrun train` on real data beside the same training in PyTorch and in Keras 3
on JAX, on an idle machine and beside one busy process; then where one dlrun epoch goes.

    python benchmarks/epoch.py                                  # every model, idle then busy
    python benchmarks/epoch.py --models mlp32 cnn128 --rounds 3
    python benchmarks/epoch.py --torch-python ENV/bin/python --keras-python KERASENV/bin/python
    python benchmarks/epoch.py --smoke                          # CI: tiny slices, checks it all runs
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/epoch.py   # the kernels users get

OpenBLAS's kernels set dlrun's matmul speed (PyTorch brings its own). Some images pin them with
OPENBLAS_CORETYPE (and OPENBLAS_L2_SIZE) for older OpenBLAS builds; the notes say which kernels ran
and which of those variables were set.

Per-epoch seconds = (time to the end of the last epoch with N epochs - the same with 1 epoch) /
(N - 1), each a whole process timed from its start to the moment its last epoch's line arrives, so
start-up, imports, data loading and JIT compilation cancel, and so does what runs after the last
epoch. That matters: dlrun scores the final weights on the validation and test splits and, when the
best epoch was an earlier one, checkpoints/best.npz too, so a plain wall-time difference charges
a 10,000-image test pass to the N-epoch run alone whenever its best epoch is not the last (the JSON
keeps both figures: `wall_rounds` is the plain wall-time difference). dlrun runs as users run it
(`python -m dlrun train CONFIG --set ...`, plain progress); PyTorch and Keras run
benchmarks/frameworks.py (same layers, batch, Adam, a reshuffle and a validation pass every epoch,
data in memory), each skipped with a note when its interpreter lacks the framework. Frameworks
take turns within each round; the table gives each one's median over the rounds. `--busy` repeats
everything beside one process spinning on a core, started here.

The breakdown runs one dlrun training in this process with timers around the model's forward and
backward, the optimizer, the input pipeline (time the loop waits for the next batch), validation,
callbacks (history and checkpoint writes) and progress output. The "step loop" row is the old
headline: train steps on batches already in memory, scaled to an epoch's number of batches.
CIFAR-10 cannot be downloaded here: without --cifar-path, files in the official binary format with
random pixels are written to a temporary folder (the work per epoch does not depend on the pixels).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@dataclass
class Case:
    config: str
    batch: int
    limit: int | None = None  # first N training images (None: all 60,000 / 50,000)
    validation_split: float | None = None  # None: the config's
    overrides: list[str] = field(default_factory=list)
    #: N of the N-minus-1 difference unless --epochs says: sub-second epochs need more of them to
    #: stand above a shared host's jitter (with 3, one framework's MLP-32 figure varied 2-5x between rounds).
    epochs: int = 3


CASES = {
    "mlp32": Case("fashion_mnist_mlp.yaml", 32, epochs=11),
    "mlp256": Case("fashion_mnist_mlp.yaml", 256, epochs=11),
    # 9,600 train + 2,400 validation images, as measured in issue 17
    "cnn128": Case("fashion_mnist_cnn.yaml", 128, limit=12000, validation_split=0.2),
    "lenet5": Case("lenet5.yaml", 64),
    "cifar_cnn128": Case("cifar10_cnn.yaml", 128, limit=10000),
}
SMOKE_LIMIT = 256
FRAMEWORKS = ("dlrun", "torch", "keras")


# -- what each framework runs ---------------------------------------------------------------------------
def resolved(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    import dlrun.api  # noqa: F401  (installs the dataset keys configs are checked against)
    from dlrun.config import load_config

    cfg = load_config(ROOT / "configs" / case.config).resolved
    cfg["training"]["batch_size"] = case.batch
    cfg["data"]["limit"] = limit_of(case, args)
    if case.validation_split is not None:
        cfg["data"]["validation_split"] = case.validation_split
    return cfg


def limit_of(case: Case, args: argparse.Namespace) -> int:
    full = 60000 if "fashion" in case.config or "lenet" in case.config else 50000
    return SMOKE_LIMIT if args.smoke else (case.limit or full)


def data_path(cfg: dict[str, Any], args: argparse.Namespace) -> str:
    if cfg["data"]["dataset"] == "cifar10":
        return args.cifar_path
    from dlrun.data.datasets import fashion_mnist

    found = fashion_mnist.find(None)[0]
    if found is None:
        raise SystemExit("epoch.py: real Fashion-MNIST not found (apt-get install dataset-fashion-mnist)")
    return str(found)


def dlrun_command(case: Case, cfg: dict[str, Any], epochs: int, args: argparse.Namespace, runs: str) -> list[str]:
    sets = {
        "training.epochs": epochs,
        "training.batch_size": cfg["training"]["batch_size"],
        "data.limit": cfg["data"]["limit"],
        "data.validation_split": cfg["data"]["validation_split"],
        "device": "cpu",
    }
    if cfg["data"]["dataset"] == "cifar10":
        sets["data.path"] = args.cifar_path
    cmd = [sys.executable, "-m", "dlrun", "train", str(ROOT / "configs" / case.config), "--runs-dir", runs]
    cmd += ["--progress", "plain"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def layers_of(case: Case) -> list[list[Any]]:
    """[kind, arguments] per layer as written in the YAML (the names and arguments are Keras's)."""
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / case.config).read_text())["model"]["layers"]
    return [[e, {}] if isinstance(e, str) else [*next(iter(e.items()))] for e in raw]


def job_of(case: Case, cfg: dict[str, Any], epochs: int, args: argparse.Namespace) -> dict[str, Any]:
    limit = cfg["data"]["limit"]
    return {
        "dataset": cfg["data"]["dataset"],
        "path": data_path(cfg, args),
        "limit": limit,
        "validation": round(limit * (cfg["data"]["validation_split"] or 0)),
        "layers": [[kind, kwargs or {}] for kind, kwargs in layers_of(case)],
        "input_shape": cfg["model"]["input_shape"],
        "batch_size": cfg["training"]["batch_size"],
        "epochs": epochs,
        "learning_rate": cfg["optimizer"].get("learning_rate", 1e-3),
    }


def framework_command(framework: str, python: str, job_file: Path) -> list[str]:
    return [python, str(ROOT / "benchmarks" / "frameworks.py"), framework, str(job_file)]


def can_import(python: str, module: str) -> bool:
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    try:
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, env=env)
    except OSError:  # no such interpreter
        return False
    return probe.returncode == 0


#: The line each framework prints when an epoch (its validation included) has ended.
EPOCH_END = {
    "dlrun": re.compile(r"^Epoch \d+/\d+ - "),  # --progress plain
    "torch": re.compile(r"^epoch \d+: "),  # frameworks.py
    "keras": re.compile(r"^\d+/\d+ - .*loss"),  # fit(verbose=2)
}


def timed(cmd: list[str], env: dict[str, str], epoch_end: re.Pattern[str]) -> tuple[float, float]:
    """(seconds until the last epoch-end line arrived, seconds until the process ended)."""
    start = time.perf_counter()
    last_epoch, lines = None, []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if epoch_end.search(line):
                last_epoch = time.perf_counter() - start
            lines.append(line)
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or last_epoch is None:
        tail = "".join(lines).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {' / '.join(tail)}")
    return last_epoch, seconds


def per_epoch(
    framework: str, case: Case, cfg: dict[str, Any], args: argparse.Namespace, tmp: Path
) -> tuple[float, float]:
    """(per-epoch seconds to the last epoch's end, per-epoch seconds of plain wall time)."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1"}
    n = epochs_of(case, args)
    times = []
    for epochs in (1, n):
        if framework == "dlrun":
            cmd = dlrun_command(case, cfg, epochs, args, str(tmp / "runs"))
        else:
            job_file = tmp / f"{framework}-{epochs}.json"
            job_file.write_text(json.dumps(job_of(case, cfg, epochs, args)))
            cmd = framework_command(
                framework, args.torch_python if framework == "torch" else args.keras_python, job_file
            )
        times.append(timed(cmd, env, EPOCH_END[framework]))
    (end1, wall1), (end_n, wall_n) = times
    return (end_n - end1) / (n - 1), (wall_n - wall1) / (n - 1)


def epochs_of(case: Case, args: argparse.Namespace) -> int:
    return args.epochs if args.epochs is not None else case.epochs


# -- the busy neighbour --------------------------------------------------------------------------------
class BusyProcess:
    """One process spinning on a core, as another program on a user's laptop or CI runner would."""

    def __enter__(self) -> BusyProcess:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.kill()
        self.proc.wait()


# -- the breakdown of one dlrun epoch ------------------------------------------------------------------
class Clock:
    """Exclusive seconds per category; everything called inside validation counts as validation."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[list[Any]] = []  # [category, seconds of timed calls inside]
        self.active = False  # only calls during `fit` count (not the final test scores)

    def timed(self, fn: Any, category: str) -> Any:
        def run(*a: Any, **k: Any) -> Any:
            if not self.active or any(frame[0] == "validation" for frame in self.stack):
                return fn(*a, **k)
            self.stack.append([category, 0.0])
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds = time.perf_counter() - start
                _, inner = self.stack.pop()
                self.totals[category] += seconds - inner
                if self.stack:
                    self.stack[-1][1] += seconds

        return run

    def wrap(self, owner: Any, name: str, category: str) -> None:
        setattr(owner, name, self.timed(getattr(owner, name), category))

    def iterator(self, it: Any, category: str) -> Any:
        """The batches, each `next` timed; `close` passed on (it stops the prefetch thread)."""
        clock = self

        class Timed:
            def __iter__(self) -> Any:
                return self

            def __next__(self) -> Any:
                return clock.timed(lambda: next(it), category)()

            def close(self) -> None:
                close = getattr(it, "close", None)
                if close is not None:
                    close()

        return Timed()


def breakdown(case_name: str, args: argparse.Namespace) -> dict[str, Any]:
    import bench

    from dlrun import api
    from dlrun.cli.progress import PlainProgress
    from dlrun.engine.optimizers import Optimizer
    from dlrun.training import loop
    from dlrun.training.evaluation import Evaluator

    case = CASES[case_name]
    cfg = resolved(case, args)
    cfg["training"]["epochs"] = 2
    cfg["device"] = "cpu"
    if cfg["data"]["dataset"] == "cifar10":
        cfg["data"]["path"] = args.cifar_path
    ceiling = bench.matmul_ceiling(np)
    clock = Clock()
    clock.wrap(loop.Trainer, "train_step", "loss and metrics (in the step)")
    clock.wrap(Evaluator, "output", "forward")
    clock.wrap(Evaluator, "evaluate", "validation")
    clock.wrap(Optimizer, "apply", "optimizer")
    from dlrun.graph.model import Model

    clock.wrap(Model, "backward", "backward")
    trainers: list[Any] = []
    fit = loop.Trainer.fit

    def timed_fit(self: Any) -> Any:
        trainers.append(self)
        for cb in self.callbacks:
            for hook in ("on_epoch_begin", "on_batch_end", "on_epoch_end"):
                clock.wrap(cb, hook, "history/checkpoint writes")
        for hook in ("on_epoch_begin", "on_batch_end", "on_epoch_end"):
            clock.wrap(self.listener, hook, "progress output")
        epoch = self.train_batches.epoch
        self.train_batches.epoch = lambda *a, **k: clock.iterator(epoch(*a, **k), "input pipeline")
        start, clock.active = time.perf_counter(), True
        try:
            return fit(self)
        finally:
            clock.totals["_fit"], clock.active = time.perf_counter() - start, False

    loop.Trainer.fit = timed_fit
    with tempfile.TemporaryDirectory() as runs, open(os.devnull, "w") as devnull:
        result = api.train(cfg, runs_dir=runs, listener=PlainProgress(devnull), threads=args.threads)
    trainer = trainers[0]
    epochs = len(result.history["loss"])
    totals = {k: v / epochs for k, v in clock.totals.items()}
    epoch_seconds = totals.pop("_fit")
    totals["other (loop, callbacks' bookkeeping)"] = epoch_seconds - sum(totals.values())
    # The old headline: steps on batches already in memory, scaled to one epoch's batches.
    batches = len(trainer.train_batches)
    steps = min(batches, 200 if case.batch <= 64 else 30)
    x = np.asarray(trainer.data.train.x[: case.batch], dtype=np.float32)
    y = np.asarray(trainer.data.train.y[: case.batch])
    sums = np.zeros(len(trainer.evaluator.names))
    loop.Trainer.fit = fit
    from dlrun.engine.threads import cpu_threads

    with cpu_threads(args.threads):
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(x, y, sums)
        step_seconds = (time.perf_counter() - start) / steps * batches
    flops = bench.model_flops(trainer.model) * len(trainer.data.train)
    return {
        "epoch": epoch_seconds,
        "parts": totals,
        "step_loop_epoch": step_seconds,
        "gflops": flops / epoch_seconds / 1e9,
        "ceiling_gflops": ceiling,
    }


# -- CIFAR-10 files --------------------------------------------------------------------------------------
def write_cifar_binary(folder: Path, train: int) -> None:
    """Files in the official binary layout (label byte + 3,072 planar pixel bytes per record)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    per_file = math.ceil(train / 5)
    for name, n in [*((f"data_batch_{i}.bin", per_file) for i in range(1, 6)), ("test_batch.bin", 1000)]:
        records = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
        records[:, 0] %= 10
        records.tofile(folder / name)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n")


#: Variables some images set for older OpenBLAS builds; unset, OpenBLAS picks kernels for the processor.
BLAS_PINS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# -- the tables ----------------------------------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def print_epochs(title: str, rows: dict[str, dict[str, float | None]], notes: list[str]) -> None:
    print(f"\n{title}: seconds per epoch (median of rounds), and how many times dlrun's speed")
    print(f"{'model':<14}{'dlrun':>10}{'PyTorch':>10}{'Keras/JAX':>11}{'vs PyTorch':>12}{'vs Keras':>10}")
    for name, r in rows.items():
        cells = [f"{r[f]:.2f}" if r.get(f) else "-" for f in FRAMEWORKS]
        print(
            f"{name:<14}{cells[0]:>10}{cells[1]:>10}{cells[2]:>11}"
            f"{ratio(r.get('torch'), r.get('dlrun')):>12}{ratio(r.get('keras'), r.get('dlrun')):>10}"
        )
    # Hosts drift between rounds; frameworks take turns within one, so a round's ratio is steadier
    # than the ratio of medians.
    for name, r in rows.items():
        turns = r.get("rounds", {})
        pairs = list(zip(turns.get("dlrun", []), turns.get("torch", [])))
        if len(pairs) > 1:
            print(f"  {name}: per round vs PyTorch " + ", ".join(ratio(t, d) for d, t in pairs))
    for note in notes:
        print(f"  note: {note}")


def print_breakdown(name: str, b: dict[str, Any]) -> None:
    print(f"\nOne dlrun epoch of {name}: {b['epoch']:.2f} s ({b['gflops']:.1f} GFLOP/s of matmul work, ", end="")
    print(f"{100 * b['gflops'] / b['ceiling_gflops']:.0f}% of the measured float32 ceiling {b['ceiling_gflops']:.0f})")
    for part, seconds in sorted(b["parts"].items(), key=lambda kv: -kv[1]):
        print(f"  {part:<40}{seconds:>8.3f} s {100 * seconds / b['epoch']:>5.1f}%")
    print(f"  {'step loop on in-memory batches (old headline)':<40}{b['step_loop_epoch']:>8.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--epochs", type=int, help="N of the N-minus-1 difference (default: 3, for the MLPs 11)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of turns per model (default 1)")
    parser.add_argument("--busy", choices=["both", "idle", "busy"], default="both")
    parser.add_argument("--torch-python", default=sys.executable, help="an interpreter with torch")
    parser.add_argument("--keras-python", default=sys.executable, help="an interpreter with keras and jax")
    parser.add_argument("--cifar-path", help="real CIFAR-10 binary files (default: generated ones)")
    parser.add_argument("--threads", type=int, help="dlrun's --threads (default: its own choice)")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_LIMIT} images, 2 epochs: checks it runs")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.rounds = 2, 1
    if args.epochs is not None and args.epochs < 2:
        parser.error("--epochs must be at least 2")
    notes, available = [], {"dlrun": True}
    for framework, python, module in (("torch", args.torch_python, "torch"), ("keras", args.keras_python, "keras")):
        available[framework] = can_import(python, module)
        if not available[framework]:
            notes.append(f"{framework} skipped: {python} cannot import {module} (pass --{framework}-python)")
    epochs = {name: epochs_of(CASES[name], args) for name in args.models}
    results: dict[str, Any] = {"epochs": epochs, "rounds": args.rounds, "idle": {}, "busy": {}, "breakdown": {}}
    notes.append("N of the N-minus-1 epochs: " + ", ".join(f"{name} {n}" for name, n in epochs.items()))
    from dlrun.engine.threads import blas_libraries

    # The kernels OpenBLAS runs set dlrun's matmul speed (PyTorch brings its own): say which.
    results["blas"] = blas_libraries()
    for lib in results["blas"]:
        pinned = [f"{var}={os.environ[var]}" for var in BLAS_PINS if var in os.environ and lib["library"] == "openblas"]
        pin = f" ({', '.join(pinned)} set here)" if pinned else ""
        notes.append(f"dlrun's BLAS: {lib['library']} {lib['version']} with {lib['kernels']} kernels{pin}")
    from dlrun.engine.compiled import numba_version

    results["numba"] = numba_version()
    notes.append(
        f"dlrun's compiled kernels: numba {results['numba']}"
        if results["numba"]
        else "dlrun's compiled kernels: none (NumPy alone: numba not installed, or DLRUN_NUMBA=0)"
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.cifar_path is None and "cifar_cnn128" in args.models:
            args.cifar_path = str(tmp / "cifar10")
            write_cifar_binary(Path(args.cifar_path), limit_of(CASES["cifar_cnn128"], args))
            notes.append("CIFAR-10: generated files in the official binary format (random pixels)")
        modes = ["idle", "busy"] if args.busy == "both" else [args.busy]
        for mode in modes:
            for name in args.models:
                cfg = resolved(CASES[name], args)
                rounds: dict[str, list[float]] = defaultdict(list)
                walls: dict[str, list[float]] = defaultdict(list)
                with BusyProcess() if mode == "busy" else contextlib.nullcontext():
                    for _ in range(args.rounds):
                        for framework in FRAMEWORKS:
                            if available[framework]:
                                epoch, wall = per_epoch(framework, CASES[name], cfg, args, tmp)
                                rounds[framework].append(epoch)
                                walls[framework].append(wall)
                results[mode][name] = {f: statistics.median(v) for f, v in rounds.items()}
                results[mode][name]["rounds"] = dict(rounds)
                results[mode][name]["wall_rounds"] = dict(walls)
            print_epochs(f"{'Idle machine' if mode == 'idle' else 'Beside one busy process'}", results[mode], notes)
        if "idle" in results and "busy" in results and results["busy"]:
            print("\nBusy / idle per-epoch time:")
            for name in args.models:
                line = [
                    f"{f} {results['busy'][name][f] / results['idle'][name][f]:.2f}x"
                    for f in FRAMEWORKS
                    if results["idle"].get(name, {}).get(f) and results["busy"][name].get(f)
                ]
                print(f"  {name:<14}" + ", ".join(line))
        if not args.no_breakdown:
            for name in args.models:
                results["breakdown"][name] = breakdown(name, args)
                print_breakdown(name, results["breakdown"][name])
    results["notes"] = notes
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
