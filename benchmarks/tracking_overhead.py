"""Per-epoch cost of the TensorBoard and MLflow callbacks on the Fashion-MNIST MLP.

Each variant trains configs/fashion_mnist_mlp.yaml (`data.limit`, default 12000 samples) with one
extra callback; variants take turns for `--repeat` rounds. An epoch's time runs from one listener
`on_epoch_end` to the next, so it includes every callback's epoch-end work (the listener is called
after them); the first epoch is left out (it also holds the callbacks' start: imports, the MLflow
store). On a shared machine those wall times drift more than the callbacks cost, so the hooks of
the tracking callbacks are also timed themselves (per-epoch sum of on_batch_end and on_epoch_end;
the start, on_train_begin; the end, on_train_end + on_run_end).

    python benchmarks/tracking_overhead.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from dlrun import api
from dlrun.training import tracking
from dlrun.training.loop import SilentListener

VARIANTS = {
    "none": [],
    "TensorBoard": ["callbacks=[TensorBoard]"],
    "TensorBoard batch+hist": ["callbacks=[{TensorBoard: {update_freq: batch, histogram_freq: 1}}]"],
    "MLflow": ["callbacks=[MLflow]"],
}


HOOK_TIME: dict[str, float] = {}


def time_hooks() -> None:
    """Wrap the tracking callbacks' hooks to add their own time into HOOK_TIME[<phase>]."""
    phases = {"on_train_begin": "start", "on_batch_end": "epoch", "on_epoch_end": "epoch"}
    phases |= {"on_train_end": "end", "on_run_end": "end"}
    for cls in (tracking.TensorBoard, tracking.MLflow):
        for hook, phase in phases.items():
            original = getattr(cls, hook)

            def timed(self, *args, _original=original, _phase=phase):
                start = time.perf_counter()
                try:
                    return _original(self, *args)
                finally:
                    HOOK_TIME[_phase] = HOOK_TIME.get(_phase, 0.0) + time.perf_counter() - start

            setattr(cls, hook, timed)


class Clock(SilentListener):
    def __init__(self) -> None:
        self.begin = 0.0
        self.ends: list[float] = []

    def on_train_begin(self, trainer) -> None:
        self.begin = time.perf_counter()

    def on_epoch_end(self, epoch, logs, seconds) -> None:
        self.ends.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(Path(__file__).parent.parent / "configs" / "fashion_mnist_mlp.yaml"))
    parser.add_argument("--limit", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    time_hooks()
    epochs: dict[str, list[float]] = {k: [] for k in VARIANTS}
    starts: dict[str, list[float]] = {k: [] for k in VARIANTS}
    hooks: dict[str, list[dict[str, float]]] = {k: [] for k in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for name, sets in VARIANTS.items():
                clock = Clock()
                HOOK_TIME.clear()
                overrides = [f"data.limit={args.limit}", f"training.epochs={args.epochs}", "device=cpu", *sets]
                api.train(args.config, runs_dir=Path(tmp) / "runs", listener=clock, overrides=overrides)
                epochs[name] += [b - a for a, b in zip(clock.ends[:-1], clock.ends[1:])]
                starts[name].append(clock.ends[0] - clock.begin)
                hooks[name].append(dict(HOOK_TIME))
    base = statistics.median(epochs["none"])
    base_first = statistics.median(starts["none"])
    print(f"{args.limit} samples, {args.epochs} epochs, {args.repeat} rounds; seconds")
    head = ("variant", "epoch (median)", "vs none", "1st epoch vs none", "hooks/epoch", "hooks start", "hooks end")
    print(f"{head[0]:24} {head[1]:>15} {head[2]:>8} {head[3]:>18} {head[4]:>12} {head[5]:>12} {head[6]:>10}")
    for name in VARIANTS:
        med = statistics.median(epochs[name])
        first = statistics.median(starts[name]) - base_first
        per_epoch = statistics.median(h.get("epoch", 0.0) / args.epochs for h in hooks[name])
        start = [round(h.get("start", 0.0), 3) for h in hooks[name]]  # the first round imports
        end = statistics.median(h.get("end", 0.0) for h in hooks[name])
        print(f"{name:24} {med:15.3f} {med - base:+8.3f} {first:+18.3f} {per_epoch:12.4f} {start!s:>12} {end:10.3f}")


if __name__ == "__main__":
    main()
