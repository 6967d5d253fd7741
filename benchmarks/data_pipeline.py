"""How much of an epoch the model waits for data, and how much memory loading CIFAR-10 takes.

    python benchmarks/data_pipeline.py                       # data-wait fraction, CIFAR-shaped CNN + augmentation
    python benchmarks/data_pipeline.py --model mlp           # the same with a Dense model (a cheap step)
    python benchmarks/data_pipeline.py --memory              # peak RSS loading 50,000 images (official format)

Wait: images in the official CIFAR-10 binary format are generated into a temporary folder and
loaded by the real loader; a model trains on them with augmentation (RandomFlip, RandomCrop with
padding 4, RandomBrightness, RandomContrast), with the pipeline's background thread (`prefetch: 2`)
and without it (`prefetch: 0`, every batch made on demand). The data wait of an epoch is the time
the training loop spent in `next()` on the batch iterator; the fraction is that over the epoch's
wall time (the second epoch; the first warms up).

Memory: 50,000 training + 10,000 test images are written in the official format, then a fresh
process loads them (`cifar10.load` from the folder and from the .tar.gz; `load_dataset` with a 10%
validation split) and reports its peak RSS next to that of a process that only imports dlrun. The images are 50,000 x 3,072 bytes = 153.6 MB as uint8
(float32 would be 614 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AUGMENTATION = [
    {"RandomFlip": {"mode": "horizontal"}},
    {"RandomCrop": {"padding": 4}},
    {"RandomBrightness": {"factor": 0.1}},
    {"RandomContrast": {"factor": 0.1}},
]
MLP = [
    {"Flatten": {}},
    {"Dense": {"units": 256, "activation": "relu"}},
    {"Dense": {"units": 10, "activation": "softmax"}},
]


def write_official(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """`cifar-10-batches-bin/` with 5 train files and a test file of random images, official format."""
    from dlrun.data.datasets import cifar10

    rng = np.random.default_rng(seed)
    out = folder / cifar10.FOLDER
    out.mkdir(parents=True, exist_ok=True)
    per = n_train // 5
    for name in [*cifar10.TRAIN_FILES, cifar10.TEST_FILE]:
        n = n_test if name == cifar10.TEST_FILE else per
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        (out / name).write_bytes(cifar10.records(x, rng.integers(0, 10, n)))
    (out / cifar10.META_FILE).write_text("\n".join(cifar10.DEFAULT_CLASS_NAMES) + "\n")
    return out


class EpochTimes:
    """A listener noting each epoch's wall time and the pipeline's wait during it."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.trainer = None

    def on_train_begin(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, epoch, epochs, batches): ...
    def on_batch_end(self, batch, batches, samples, running): ...
    def on_train_end(self, history): ...
    def message(self, text): ...

    def on_epoch_end(self, epoch, logs, seconds):
        stats = self.trainer.train_batches.stats
        self.rows.append({"epoch_s": seconds, "wait_s": stats.wait_seconds, "batches": stats.batches})


def wait_fraction(args: argparse.Namespace) -> list[dict]:
    from bench import CIFAR_CNN

    from dlrun import api
    from dlrun.data.dataset import load_dataset
    from dlrun.engine.random import streams
    from dlrun.training.loop import Trainer

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_official(Path(tmp), args.samples, 100)
        for prefetch in (0, 2):
            cfg = {
                "seed": 0,
                "device": args.device,
                "data": {"dataset": "cifar10", "path": tmp, "augmentation": AUGMENTATION, "prefetch": prefetch},
                "model": {"layers": CIFAR_CNN if args.model == "cnn" else MLP},
                "loss": "sparse_categorical_crossentropy",
                "optimizer": "adam",
                "metrics": ["accuracy"],
                "training": {"epochs": 2, "batch_size": args.batch_size},
            }
            setup = api.prepare(cfg)
            data = load_dataset(setup.config.resolved["data"], 0, allow_download=False)
            listener = EpochTimes()
            trainer = Trainer(
                setup.model,
                setup.loss,
                setup.optimizer,
                setup.metrics,
                data,
                batch_size=args.batch_size,
                epochs=2,
                shuffle_rng=streams(0).shuffle,
                listener=listener,
            )
            trainer.fit()
            row = listener.rows[-1]
            # The data work alone: every batch of an epoch made with nothing else running.
            start = time.perf_counter()
            for _ in data.batches(data.train, args.batch_size, setup.backend, training=True).epoch(epoch=9):
                pass
            make_s = time.perf_counter() - start
            results.append(
                {
                    "model": args.model,
                    "device": setup.backend.describe(),
                    "prefetch": prefetch,
                    "samples": len(data.train),
                    "batch_size": args.batch_size,
                    "epoch_s": round(row["epoch_s"], 3),
                    "data_wait_s": round(row["wait_s"], 4),
                    "data_wait_fraction": round(row["wait_s"] / row["epoch_s"], 4),
                    "data_work_alone_s": round(make_s, 3),
                    "data_ms_per_batch": round(1000 * make_s / row["batches"], 2),
                }
            )
    return results


MEMORY_CHILD = """
import json, resource, sys, time
import numpy as np
from dlrun.data.datasets import cifar10
mode, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "load_dataset":  # the whole preparation, with a seeded 10% validation split (copies once)
    from dlrun.data.dataset import load_dataset
    d = load_dataset({"dataset": "cifar10", "path": path, "validation_split": 0.1}, 0, allow_download=False)
    info = {"train": list(d.train.x.shape), "dtype": str(d.train.x.dtype),
            "array_mb": round((d.train.x.nbytes + d.val.x.nbytes + d.test.x.nbytes) / 1e6, 1)}
elif mode != "baseline":
    x_tr, y_tr, x_te, y_te, names = cifar10.load(path, allow_download=False)
    info = {"train": list(x_tr.shape), "dtype": str(x_tr.dtype), "array_mb": round((x_tr.nbytes + x_te.nbytes) / 1e6, 1)}
else:
    info = {}
info["seconds"] = round(time.perf_counter() - start, 2)
# VmHWM: the peak RSS of this program (ru_maxrss would also count the forking parent's pages).
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
info["peak_rss_mb"] = round(int(hwm.split()[1]) / 1024, 1)
print(json.dumps(info))
"""


def memory(args: argparse.Namespace) -> dict:
    from dlrun.data.datasets import cifar10

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_official(Path(tmp) / "folder", 50_000, 10_000)
        archive = Path(tmp) / "archive" / cifar10.ARCHIVE
        archive.parent.mkdir()
        with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
            for f in cifar10.FILES:
                tar.add(folder / f, arcname=f"{cifar10.FOLDER}/{f}")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        for mode, path in (
            ("baseline", ""),
            ("folder", folder.parent),
            ("archive", archive),
            ("load_dataset", folder.parent),
        ):
            proc = subprocess.run(
                [sys.executable, "-c", MEMORY_CHILD, mode, str(path)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            out[mode] = json.loads(proc.stdout)
    for mode in ("folder", "archive", "load_dataset"):
        out[mode]["above_baseline_mb"] = round(out[mode]["peak_rss_mb"] - out["baseline"]["peak_rss_mb"], 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--samples", type=int, default=2560, help="training images (default 2560)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu", help="cpu, gpu or auto")
    parser.add_argument("--memory", action="store_true", help="measure peak RSS of loading 50,000 images instead")
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(memory(args), indent=2))
        return
    for row in wait_fraction(args):
        print(json.dumps(row))
    print(
        f"(this process: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)", file=sys.stderr
    )


if __name__ == "__main__":
    main()
