"""Training speed of dlrun against PyTorch (when installed) on the same models, measured in one run.

    python benchmarks/bench.py                 # all models
    python benchmarks/bench.py --models mlp32  # a subset
    python benchmarks/bench.py --device gpu

Each model is timed in its own subprocess (so peak RSS is per model): a warm-up, then steps of
forward + backward + optimizer update on batches of random data of the dataset's shape, the same
for both frameworks. Shared machines are noisy, so the frameworks take turns for `--repeat` rounds
(default 3); the table shows each one's best round, their ratio, and the median and range of the
per-round ratios. GFLOP/s counts the matrix-multiply work of Dense and Conv2D layers
(forward, weight gradient and input gradient where needed) against the machine's measured
float32 matrix-multiply ceiling.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

MLP = [
    {"Flatten": {}},
    {"Dense": {"units": 100, "activation": "relu"}},
    {"Dense": {"units": 10, "activation": "softmax"}},
]
CNN = [
    {"Conv2D": {"filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"}},
    {"BatchNormalization": {}},
    {"Conv2D": {"filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"}},
    {"BatchNormalization": {}},
    {"MaxPooling2D": {"pool_size": 2}},
    {"Dropout": {"rate": 0.25}},
    {"Conv2D": {"filters": 64, "kernel_size": 3, "padding": "same", "activation": "relu"}},
    {"BatchNormalization": {}},
    {"Conv2D": {"filters": 64, "kernel_size": 3, "padding": "same", "activation": "relu"}},
    {"BatchNormalization": {}},
    {"MaxPooling2D": {"pool_size": 2}},
    {"Dropout": {"rate": 0.25}},
    {"Flatten": {}},
    {"Dense": {"units": 512, "activation": "relu"}},
    {"Dense": {"units": 10, "activation": "softmax"}},
]
CIFAR_CNN = [
    {"Conv2D": {"filters": 32, "kernel_size": 3, "padding": "same"}},
    {"BatchNormalization": {}},
    {"LeakyReLU": {}},
    {"Conv2D": {"filters": 32, "kernel_size": 3, "strides": 2, "padding": "same"}},
    {"BatchNormalization": {}},
    {"LeakyReLU": {}},
    {"Conv2D": {"filters": 64, "kernel_size": 3, "padding": "same"}},
    {"BatchNormalization": {}},
    {"LeakyReLU": {}},
    {"Conv2D": {"filters": 64, "kernel_size": 3, "strides": 2, "padding": "same"}},
    {"BatchNormalization": {}},
    {"LeakyReLU": {}},
    {"Flatten": {}},
    {"Dense": {"units": 128}},
    {"BatchNormalization": {}},
    {"LeakyReLU": {}},
    {"Dropout": {"rate": 0.5}},
    {"Dense": {"units": 10, "activation": "softmax"}},
]

MODELS = {
    "mlp32": dict(layers=MLP, shape=(28, 28, 1), batch=32, steps=3000),
    "mlp256": dict(layers=MLP, shape=(28, 28, 1), batch=256, steps=600),
    "cnn128": dict(layers=CNN, shape=(28, 28, 1), batch=128, steps=12),
    "cifar_cnn128": dict(layers=CIFAR_CNN, shape=(32, 32, 3), batch=128, steps=15),
}


def matmul_ceiling(xp) -> float:
    """float32 GFLOP/s of a large square matrix multiply on this machine/device."""
    n = 2048
    a = xp.ones((n, n), dtype=xp.float32)
    b = xp.ones((n, n), dtype=xp.float32)
    a @ b
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        c = a @ b
        if xp.__name__ == "cupy":
            xp.cuda.Device().synchronize()
        float(c[0, 0])
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def model_flops(model) -> float:
    """Matmul FLOPs per sample for one training step (forward + backward) of Dense/Conv2D layers."""
    total = 0.0
    for node in model.nodes:
        layer = node.layer
        kind = layer.type_name
        if kind == "Dense":
            fwd = 2 * math.prod(layer.input_shape) * layer.units
        elif kind == "Conv2D":
            oh, ow, cout = node.output_shape
            kh, kw = layer.kernel_size
            fwd = 2 * oh * ow * cout * kh * kw * layer.input_shape[-1]
        else:
            continue
        total += fwd * (3 if layer.needs_input_grad else 2)
    return total


def run_dlrun(name: str, device: str) -> dict:
    import numpy as np

    from dlrun import api

    spec = MODELS[name]
    # Measure the ceiling first: the conv layers later switch OpenBLAS to one thread per call.
    import numpy as xp_host

    ceiling = matmul_ceiling(xp_host) if device == "cpu" else None
    cfg = {
        "seed": 0,
        "device": device,
        "data": {"dataset": "synthetic"},
        "model": {"input_shape": list(spec["shape"]), "layers": spec["layers"]},
        "loss": "sparse_categorical_crossentropy",
        "optimizer": "adam",
        "metrics": ["accuracy"],
    }
    setup = api.prepare(cfg)
    from dlrun.data.dataset import Dataset, Split
    from dlrun.training.loop import Trainer

    rng = np.random.default_rng(0)
    n = spec["batch"] * 8
    x = rng.random((n, *spec["shape"]), dtype=np.float32)
    y = rng.integers(0, 10, n)
    data = Dataset("bench", Split(x, y), None, None, spec["shape"], 10)
    trainer = Trainer(setup.model, setup.loss, setup.optimizer, setup.metrics, data, batch_size=spec["batch"])
    be = setup.backend
    batches = [
        (be.asarray(x[i : i + spec["batch"]]), be.asarray(y[i : i + spec["batch"]])) for i in range(0, n, spec["batch"])
    ]
    sums = be.xp.zeros(2, dtype=be.xp.float64)
    steps = spec["steps"]
    for i in range(max(3, steps // 10)):
        trainer.train_step(*batches[i % len(batches)], sums)
    be.to_host(sums)
    t = time.perf_counter()
    for i in range(steps):
        trainer.train_step(*batches[i % len(batches)], sums)
    be.to_host(sums)
    secs = time.perf_counter() - t
    return {
        "samples_per_s": steps * spec["batch"] / secs,
        "flops_per_sample": model_flops(setup.model),
        "ceiling_gflops": ceiling or matmul_ceiling(be.xp),
        "device": be.describe(),
    }


def torch_model(layers, shape):
    import torch.nn as nn

    mods, c, h, w = [], shape[-1], shape[0], shape[1]
    flat = None
    for entry in layers:
        ((kind, a),) = entry.items()
        if kind == "Flatten":
            mods.append(nn.Flatten())
            flat = c * h * w
        elif kind == "Dense":
            mods.append(nn.Linear(flat, a["units"]))
            flat = a["units"]
        elif kind == "Conv2D":
            s = a.get("strides", 1)
            if a.get("padding") == "same" and s == 1:
                mods.append(nn.Conv2d(c, a["filters"], a["kernel_size"], padding="same"))
            else:
                mods.append(
                    nn.Conv2d(
                        c, a["filters"], a["kernel_size"], stride=s, padding=1 if a.get("padding") == "same" else 0
                    )
                )
                h, w = (h + 2 - 3) // s + 1, (w + 2 - 3) // s + 1
            c = a["filters"]
        elif kind == "BatchNormalization":
            mods.append(
                nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)
                if flat is None
                else nn.BatchNorm1d(flat, eps=1e-3, momentum=0.01)
            )
        elif kind == "MaxPooling2D":
            mods.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        elif kind == "Dropout":
            mods.append(nn.Dropout(a["rate"]))
        elif kind == "LeakyReLU":
            mods.append(nn.LeakyReLU(0.3))
        act = a.get("activation")
        if act == "relu":
            mods.append(nn.ReLU())
        # softmax is folded into CrossEntropyLoss, as dlrun fuses it with the loss
    return nn.Sequential(*mods)


def run_torch(name: str, device: str) -> dict:
    import torch
    import torch.nn.functional as F

    spec = MODELS[name]
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    model = torch_model(spec["layers"], spec["shape"]).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    n = spec["batch"] * 8
    h, w, c = spec["shape"]
    x = torch.rand(n, c, h, w, device=dev)
    y = torch.randint(0, 10, (n,), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    batches = [(x[i : i + spec["batch"]], y[i : i + spec["batch"]]) for i in range(0, n, spec["batch"])]

    def step(i):
        xb, yb = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()

    steps = spec["steps"]
    for i in range(max(3, steps // 10)):
        step(i)
    sync()
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    secs = time.perf_counter() - t
    return {
        "samples_per_s": steps * spec["batch"] / secs,
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
    }


def child(framework: str, name: str, device: str) -> None:
    out = run_dlrun(name, device) if framework == "dlrun" else run_torch(name, device)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def measure(framework: str, name: str, device: str) -> dict | None:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", framework, name, device], capture_output=True, text=True
    )
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        return {"error": err[-1] if err else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per model; the best counts (default 3)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    try:
        import torch  # noqa: F401

        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
    header = (
        f"{'model':<14}{'dlrun samples/s':>16}{'torch samples/s':>16}{'ratio':>7}{'per round: median (range)':>27}"
        f"{'GFLOP/s':>9}{'ceiling':>9}{'share':>7}{'RSS MB dlrun':>13}{'torch':>7}"
    )
    print(f"device: {args.device}, cores: {os.cpu_count()}, best of {args.repeat} alternating rounds")
    print(header)
    ours: dict = {}
    for name in args.models:
        rounds = []
        for _ in range(max(1, args.repeat)):
            rounds.append(
                (measure("dlrun", name, args.device), measure("torch", name, args.device) if have_torch else None)
            )
        failed = next((r[0] for r in rounds if "error" in r[0]), None)
        if failed:
            print(f"{name:<14} dlrun failed: {failed['error']}")
            continue
        ours = max((r[0] for r in rounds), key=lambda r: r["samples_per_s"])
        torch_ok = [r[1] for r in rounds if r[1] and "error" not in r[1]]
        theirs = max(torch_ok, key=lambda r: r["samples_per_s"]) if torch_ok else None
        gflops = ours["samples_per_s"] * ours["flops_per_sample"] / 1e9
        t_sps = theirs["samples_per_s"] if theirs else None
        ratio = f"{ours['samples_per_s'] / t_sps:6.2f}x" if t_sps else "     -"
        per_round = [a["samples_per_s"] / b["samples_per_s"] for a, b in rounds if b and "error" not in b]
        spread = f"{statistics.median(per_round):.2f} ({min(per_round):.2f}-{max(per_round):.2f})" if per_round else "-"
        print(
            f"{name:<14}{ours['samples_per_s']:>16,.0f}{(f'{t_sps:,.0f}' if t_sps else '-'):>16}{ratio:>7}"
            f"{spread:>27}{gflops:>9.1f}{ours['ceiling_gflops']:>9.0f}{gflops / ours['ceiling_gflops']:>7.0%}{ours['peak_rss_mb']:>13.0f}"
            f"{(format(theirs['peak_rss_mb'], '.0f') if t_sps else '-'):>7}"
        )
    if ours:
        print(
            f"ceiling: float32 2048x2048 matrix multiply on {ours.get('device', '')}, measured in the same "
            "process as the model's best round"
        )


if __name__ == "__main__":
    main()
