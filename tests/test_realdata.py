"""Smoke trainings on real Fashion-MNIST (installed in CI by `apt-get install dataset-fashion-mnist`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlrun import api
from dlrun.config import load_config
from dlrun.data.datasets import fashion_mnist

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(fashion_mnist.find(None)[0] is None, reason="real Fashion-MNIST files not installed")


def test_loader_reads_the_official_content():
    x_tr, y_tr, x_te, y_te = fashion_mnist.load(allow_download=False)
    assert x_tr.shape == (60000, 28, 28, 1) and x_te.shape == (10000, 28, 28, 1)
    assert x_tr.dtype == "uint8" and set(y_tr[:1000]) == set(range(10))
    # Known first labels of the official training and test sets.
    assert list(y_tr[:5]) == [9, 0, 0, 3, 0] and list(y_te[:5]) == [9, 2, 1, 1, 6]


def test_mlp_smoke_training_beats_chance_by_far(tmp_path):
    cfg = load_config(ROOT / "configs/fashion_mnist_mlp.yaml")
    cfg.resolved["data"]["limit"] = 6000
    cfg.resolved["training"]["epochs"] = 2
    result = api.train(cfg, runs_dir=tmp_path)
    assert result.metrics["val"]["accuracy"] > 0.75  # chance is 0.10
    assert result.metrics["test"]["accuracy"] > 0.75
    assert (result.run_dir / "checkpoints" / "best.npz").is_file()
