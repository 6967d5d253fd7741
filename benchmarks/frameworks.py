"""The same training in PyTorch and in Keras 3 on JAX, for benchmarks/epoch.py to time beside `dlrun train`.

    python benchmarks/frameworks.py torch JOB.json     # in an environment with torch
    python benchmarks/frameworks.py keras JOB.json     # KERAS_BACKEND=jax, with keras and jax

JOB.json (written by epoch.py from a dlrun config) names the layers (dlrun's, which are Keras's),
the input shape, batch size, epochs, learning rate and the data: real Fashion-MNIST or CIFAR-10
files, the first `limit` training images, the last `validation` of them held out. Each script does
what an idiomatic user script does: data in memory (pixels / 255), Adam, a reshuffle every epoch,
the validation split scored after every epoch, one line of output per epoch. This file imports
neither dlrun nor anything but NumPy at the top, so it runs in the other frameworks' environments.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np


def read_fashion_mnist(folder: str) -> tuple[np.ndarray, np.ndarray]:
    """The training images (N, 28, 28, 1) uint8 and labels of the official idx files."""
    root = Path(folder)
    with gzip.open(root / "train-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28, 1)
    with gzip.open(root / "train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    return x, y


def read_cifar10(folder: str) -> tuple[np.ndarray, np.ndarray]:
    """The training images (N, 32, 32, 3) uint8 and labels of the official binary batches."""
    records = np.concatenate(
        [np.fromfile(Path(folder) / f"data_batch_{i}.bin", np.uint8).reshape(-1, 3073) for i in range(1, 6)]
    )
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0]


def load(job: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    read = read_fashion_mnist if job["dataset"] == "fashion_mnist" else read_cifar10
    x, y = read(job["path"])
    x, y = x[: job["limit"]], y[: job["limit"]].astype(np.int64)
    x = x.astype(np.float32) / 255.0
    cut = len(x) - job["validation"]
    return x[:cut], y[:cut], x[cut:], y[cut:]


def layer_items(job: dict) -> list[tuple[str, dict]]:
    return [(kind, dict(args)) for kind, args in job["layers"]]


# -- PyTorch -------------------------------------------------------------------------------------------
def torch_model(layers: list[tuple[str, dict]], shape: tuple[int, int, int]):
    """An nn.Sequential for NCHW input equal in work to the Keras layers (softmax left to the loss)."""
    import torch.nn as nn

    h, w, c = shape
    flat: int | None = None
    mods: list = []
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    for kind, a in layers:
        if kind == "Flatten":
            mods.append(nn.Flatten())
            flat = c * h * w
        elif kind == "Dense":
            mods.append(nn.Linear(flat, a["units"], bias=a.get("use_bias", True)))
            flat = a["units"]
        elif kind == "Conv2D":
            k, s = a["kernel_size"], a.get("strides", 1)
            same = a.get("padding") == "same"
            pad = k // 2 if same else 0
            mods.append(nn.Conv2d(c, a["filters"], k, stride=s, padding=pad, bias=a.get("use_bias", True)))
            h, w = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
            c = a["filters"]
        elif kind == "BatchNormalization":
            bn = nn.BatchNorm2d(c, eps=1e-3, momentum=0.01) if flat is None else nn.BatchNorm1d(flat, eps=1e-3)
            mods.append(bn)
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            p = a.get("pool_size", 2)
            mods.append(nn.MaxPool2d(p) if kind == "MaxPooling2D" else nn.AvgPool2d(p))
            h, w = h // p, w // p
        elif kind == "ZeroPadding2D":
            p = a.get("padding", 1)
            mods.append(nn.ZeroPad2d(p))
            h, w = h + 2 * p, w + 2 * p
        elif kind == "Dropout":
            mods.append(nn.Dropout(a["rate"]))
        elif kind == "LeakyReLU":
            mods.append(nn.LeakyReLU(a.get("negative_slope", 0.3)))
        elif kind == "ReLU":
            mods.append(nn.ReLU())
        else:
            raise SystemExit(f"frameworks.py: no PyTorch equivalent written for {kind}")
        act = a.get("activation")
        if act in acts:
            mods.append(acts[act]())
    return nn.Sequential(*mods)


def run_torch(job: dict) -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    x_tr, y_tr, x_val, y_val = load(job)

    def to_nchw(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    x_tr, x_val, y_tr, y_val = to_nchw(x_tr), to_nchw(x_val), torch.from_numpy(y_tr), torch.from_numpy(y_val)
    model = torch_model(layer_items(job), tuple(job["input_shape"]))
    opt = torch.optim.Adam(model.parameters(), lr=job["learning_rate"], eps=1e-7)
    batch = job["batch_size"]
    for epoch in range(job["epochs"]):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(x_tr))
        total, seen = 0.0, 0
        for i in range(0, len(x_tr), batch):
            idx = order[i : i + batch]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        model.eval()
        correct, val_loss = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(x_val), 1024):
                out = model(x_val[i : i + 1024])
                val_loss += F.cross_entropy(out, y_val[i : i + 1024], reduction="sum").item()
                correct += int((out.argmax(1) == y_val[i : i + 1024]).sum())
        print(
            f"epoch {epoch + 1}: loss {total / seen:.4f} val_loss {val_loss / max(1, len(x_val)):.4f} "
            f"val_accuracy {correct / max(1, len(x_val)):.4f} ({time.perf_counter() - start:.2f}s)",
            flush=True,
        )
    print(json.dumps({"version": torch.__version__, "threads": torch.get_num_threads()}))


# -- Keras 3 on JAX ------------------------------------------------------------------------------------
def run_keras(job: dict) -> None:
    import keras

    keras.utils.set_random_seed(0)
    x_tr, y_tr, x_val, y_val = load(job)
    layers = [keras.Input(tuple(job["input_shape"]))]
    layers += [getattr(keras.layers, kind)(**args) for kind, args in layer_items(job)]
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(job["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    validation = (x_val, y_val) if len(x_val) else None
    model.fit(
        x_tr,
        y_tr,
        batch_size=job["batch_size"],
        epochs=job["epochs"],
        validation_data=validation,
        shuffle=True,
        verbose=2,
    )
    print(json.dumps({"version": keras.__version__, "backend": keras.backend.backend()}))


if __name__ == "__main__":
    framework, job_file = sys.argv[1], sys.argv[2]
    {"torch": run_torch, "keras": run_keras}[framework](json.loads(Path(job_file).read_text()))
