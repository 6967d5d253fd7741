"""Data-parallel scaling on this machine: per-epoch seconds and the gradient all-reduce's cost.

    python benchmarks/mpi_scaling.py epochs --limit 3200 --repeat 3
        The seed CNN (configs/fashion_mnist_cnn.yaml on data.limit samples): 1 process x 2 threads
        against 2 processes x 1 thread. Per-epoch seconds = wall time of a 2-epoch run minus that of
        a 1-epoch run (start-up, data loading and final scoring cancel out); min and median.
    mpiexec -n N python benchmarks/mpi_scaling.py step --model cnn
        Inside one training (OPENBLAS_NUM_THREADS=1 per rank): rank 0's epoch seconds, the time its
        train steps spent in the gradient all-reduce (waiting for slower ranks included), and a bare
        MPI Allreduce of the model's flat gradient buffer after a barrier (the transfer alone).

Other processes on a shared machine add noise: repeat and read the minimum.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FASHION = "/usr/share/datasets/fashion-mnist"


def cnn_config(limit: int, epochs: int) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "fashion_mnist_cnn.yaml").read_text())
    cfg["data"].update(limit=limit, path=FASHION)
    cfg["training"]["epochs"] = epochs
    cfg["device"] = "cpu"
    return cfg


def mlp_config(limit: int, epochs: int) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "fashion_mnist_mlp.yaml").read_text())
    cfg["data"].update(limit=limit, path=FASHION)
    cfg["training"].update(epochs=epochs, batch_size=128)
    cfg["device"] = "cpu"
    return cfg


def _run(cfg: dict, processes: int, threads: int, folder: Path) -> float:
    path = folder / f"c{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dlrun", "train", str(path), "--runs-dir", str(folder / "runs"), "-q"]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def epochs_mode(args: argparse.Namespace) -> None:
    layouts = [(1, 2), (2, 1)]
    per_epoch: dict[tuple[int, int], list[float]] = {k: [] for k in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for p, t in layouts:  # alternate, so drifting load hits both alike
                one = _run(cnn_config(args.limit, 1), p, t, Path(tmp))
                two = _run(cnn_config(args.limit, 2), p, t, Path(tmp))
                per_epoch[(p, t)].append(two - one)
    for (p, t), values in per_epoch.items():
        print(
            json.dumps(
                {
                    "processes": p,
                    "threads": t,
                    "per_epoch_s": [round(v, 2) for v in values],
                    "min": round(min(values), 2),
                    "median": round(statistics.median(values), 2),
                }
            )
        )


def step_mode(args: argparse.Namespace) -> None:
    import numpy as np

    from dlrun import api
    from dlrun.parallel import world
    from dlrun.training.loop import SilentListener

    comm = world()
    spent = [0.0, 0]
    reduce = comm.allreduce

    def timed(buffer):  # the gradient all-reduce of each step
        start = time.perf_counter()
        reduce(buffer)
        spent[0] += time.perf_counter() - start
        spent[1] += 1

    comm.allreduce = timed  # type: ignore[method-assign]
    seconds: list[float] = []

    class Listener(SilentListener):
        def on_epoch_end(self, epoch, logs, s):
            seconds.append(s)

    make = cnn_config if args.model == "cnn" else mlp_config
    cfg = make(args.limit, args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = comm.bcast(tmp)  # rank 0's folder: it alone writes
        result = api.train(copy.deepcopy(cfg), runs_dir=folder, listener=Listener())
    params = sum(int(np.prod(v.shape)) for v in result.weights.values()) if comm.rank == 0 else 0
    n = int(comm.bcast(params))
    buf = np.ones(n, dtype=np.float32)
    times = []
    for _ in range(args.reps):
        comm.barrier()
        start = time.perf_counter()
        reduce(buf)
        times.append(time.perf_counter() - start)
    if comm.rank == 0:
        steps = spent[1] // args.epochs
        epoch = statistics.median(seconds[1:] or seconds)
        in_steps = spent[0] / max(spent[1], 1)
        print(
            json.dumps(
                {
                    "model": args.model,
                    "processes": comm.size,
                    "parameters": n,
                    "steps_per_epoch": steps,
                    "epoch_s": round(epoch, 3),
                    "step_ms": round(1000 * epoch / max(steps, 1), 2),
                    "allreduce_in_step_ms": round(1000 * in_steps, 3),
                    "allreduce_share": round(in_steps * steps / epoch, 4),
                    "bare_allreduce_ms_min": round(1000 * min(times), 3),
                    "bare_allreduce_ms_median": round(1000 * statistics.median(times), 3),
                }
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("epochs")
    e.add_argument("--limit", type=int, default=3200)
    e.add_argument("--repeat", type=int, default=3)
    s = sub.add_parser("step")
    s.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    s.add_argument("--limit", type=int, default=3200)
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    epochs_mode(args) if args.mode == "epochs" else step_mode(args)


if __name__ == "__main__":
    main()
