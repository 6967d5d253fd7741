"""The same config and seed give the same bits on 1, 2 or 16 threads (real Fashion-MNIST slices)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from dlrun import api
from dlrun.config import load_config
from dlrun.data.datasets import fashion_mnist

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(fashion_mnist.find(None)[0] is None, reason="real Fashion-MNIST files not installed")


def blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def run(tmp_path: Path, config: str, threads: int, **training) -> api.RunResult:
    cfg = load_config(ROOT / "configs" / config)
    cfg.resolved["data"]["limit"] = training.pop("limit")
    cfg.resolved["training"].update(training)
    return api.train(cfg, runs_dir=tmp_path / str(threads), threads=threads)


def assert_same_bits(a: api.RunResult, b: api.RunResult) -> None:
    assert a.history == b.history  # floats compared exactly
    assert a.weights.keys() == b.weights.keys()
    for name in a.weights:
        np.testing.assert_array_equal(a.weights[name], b.weights[name], err_msg=name)


@pytest.mark.parametrize(
    "config,training,threads",
    [
        # batch 32: products too small to split; batch 256: the Dense products are cut into pieces
        ("fashion_mnist_mlp.yaml", {"limit": 1500, "epochs": 2, "batch_size": 32}, (2,)),
        ("fashion_mnist_mlp.yaml", {"limit": 3000, "epochs": 2, "batch_size": 256}, (2, 16)),
        # convolutions, BatchNormalization, pooling, Dropout and a split Dense product
        ("fashion_mnist_cnn.yaml", {"limit": 400, "epochs": 1, "batch_size": 128}, (2,)),
    ],
)
def test_history_and_weights_do_not_depend_on_the_thread_count(tmp_path, config, training, threads):
    before = blas_threads()
    one = run(tmp_path, config, 1, **dict(training))
    for n in threads:
        assert_same_bits(one, run(tmp_path, config, n, **dict(training)))
    assert blas_threads() == before  # the limits were scoped to training


def test_threads_option_and_variables_reach_training(tmp_path, monkeypatch):
    """--threads wins over OMP_NUM_THREADS; without it the variable sets the count."""
    from typer.testing import CliRunner

    from dlrun.cli import app
    from dlrun.engine import threads

    seen: list[int] = []
    real = threads.cpu_threads

    def spy(n=None):
        scope = real(n)
        seen.append(threads.default_threads() if n is None else n)
        return scope

    monkeypatch.setattr("dlrun.api.training.cpu_threads", spy)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["train", str(ROOT / "configs/fashion_mnist_logreg.yaml"), "--runs-dir", str(tmp_path), "-q"]
    args += ["--set", "data.limit=200", "--set", "training.epochs=1"]
    for extra in ([], ["--threads", "2"]):
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 0, result.output
    assert seen == [1, 2]
    bad = CliRunner().invoke(app, [*args, "--threads", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output
