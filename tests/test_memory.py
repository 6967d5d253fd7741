"""Models and data far too big for the machine: summary and validate allocate nothing, and train,
resume, evaluate and predict refuse them from the static shapes before allocating anything."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dlrun import api
from dlrun.api import memory
from dlrun.cli import app
from dlrun.config.schema import load_config
from dlrun.errors import DlrunError, UsageError
from dlrun.graph.builder import build_model
from dlrun.graph.model import Model

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
GiB = 1 << 30

HEAD = "name: {name}\nseed: 1\ndata: {{dataset: synthetic, samples: {samples}, features: {features}}}\n"
TAIL = "loss: binary_crossentropy\noptimizer: adam\ntraining: {epochs: 1, batch_size: 32}\n"
IMAGE = ["Reshape: {target_shape: [8, 8, 1]}"]
HUGE = {  # name: (samples, features, layers, total parameters); the six repros
    "units_1e9": (100, 10, ["Dense: {units: 1000000000, activation: relu}"], 12_000_000_001),
    "units_2e9": (100, 10, ["Dense: {units: 2000000000, activation: relu}"], 24_000_000_001),
    "input_1e12": (100, 10**12, ["Reshape: {target_shape: [100000, 100000, 100]}", "Flatten"], 10**12 + 1),
    "upsampling": (100, 64, [*IMAGE, "UpSampling2D: {size: 100000}", "Flatten"], (8 * 100_000) ** 2 + 1),
    "zero_padding": (100, 64, [*IMAGE, "ZeroPadding2D: {padding: 100000}", "Flatten"], (8 + 2 * 100_000) ** 2 + 1),
    "samples_1e9": (10**9, 10, [], 11),
}


def huge_config(tmp_path: Path, name: str) -> Path:
    samples, features, layers, _ = HUGE[name]
    entries = "".join(f"    - {entry}\n" for entry in [*layers, "Dense: {units: 1, activation: sigmoid}"])
    path = tmp_path / f"{name}.yaml"
    path.write_text(HEAD.format(name=name, samples=samples, features=features) + "model:\n  layers:\n" + entries + TAIL)
    return path


def expected_params(name: str) -> int:
    return HUGE[name][3]


@pytest.fixture
def no_allocation(monkeypatch):
    """Any weight allocation (or data generation) fails the test instead of asking for terabytes."""

    def refuse(*args, **kwargs):
        raise AssertionError("allocated weights or data")

    monkeypatch.setattr(Model, "_allocate", refuse)
    monkeypatch.setattr("dlrun.data.datasets.synthetic.make", refuse)


@pytest.mark.parametrize("name", sorted(HUGE))
def test_validate_and_summary_of_a_huge_model_allocate_nothing(tmp_path, name, no_allocation):
    path = huge_config(tmp_path, name)
    start = time.perf_counter()
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    assert f"{expected_params(name):,} parameters" in res.output
    res = runner.invoke(app, ["summary", str(path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["total_params"] == expected_params(name)
    assert data["memory"]["optimizer_values"] == 2 * expected_params(name)  # exact Python ints
    text = runner.invoke(app, ["summary", str(path)]).output
    assert f" Total params: {expected_params(name):,} (" in text
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("name", sorted(HUGE))
def test_train_refuses_a_run_that_does_not_fit_before_allocating(tmp_path, monkeypatch, name, no_allocation):
    monkeypatch.setenv(memory.ENV, "2G")
    runs = tmp_path / "runs"
    res = runner.invoke(app, ["train", str(huge_config(tmp_path, name)), "--runs-dir", str(runs)])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit)  # a message, no traceback
    out = " ".join(res.output.split())
    assert "this run needs about" in out and "this machine has 2.0 GiB available (DLRUN_MEMORY_LIMIT)" in out
    assert "parameters" in out and "optimizer" in out and "batch of" in out
    assert "refused before allocating it" in out and "hint:" in out
    if name == "samples_1e9":
        assert "data 116.2 GiB" in out and "fewer data.samples" in out
    assert not runs.exists()


def test_a_model_of_a_trillion_parameters_summarises_instantly():
    cfg = load_config(ROOT / "configs/fashion_mnist_mlp.yaml", ["model.input_shape=[1000000, 1000000]"])
    start = time.perf_counter()
    model, _ = build_model(cfg)
    trainable, frozen = model.param_counts()
    assert not model.allocated
    assert trainable + frozen == 10**12 * 100 + 100 + 100 * 10 + 10
    assert time.perf_counter() - start < 1


def test_summary_and_validate_leave_the_weights_unallocated(monkeypatch):
    monkeypatch.setattr(Model, "_allocate", lambda *a: pytest.fail("allocated"))
    api.summary(ROOT / "configs/fashion_mnist_cnn.yaml")
    api.graph(ROOT / "configs/fashion_mnist_cnn.yaml")
    assert not api.validate(ROOT / "configs/lenet5.yaml").model.allocated


@pytest.mark.parametrize(
    ("config", "total"),
    [
        ("fashion_mnist_cnn", 1_677_034),
        ("fashion_mnist_mlp_bn", 236_682),
        ("lenet5", 61_706),
        ("fashion_mnist_resnet", 108_650),
    ],
)
def test_shipped_parameter_counts_come_from_the_declared_weights(config, total):
    _, data = api.summary(ROOT / "configs" / f"{config}.yaml")
    assert data["total_params"] == total


@pytest.mark.parametrize("config", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_fits_a_2_gib_budget(monkeypatch, config):
    monkeypatch.setenv(memory.ENV, str(2 * GiB))
    setup = api.prepare(ROOT / "configs" / f"{config}.yaml", device="cpu")
    api.training.check_memory(setup, "this run", None)  # raises when it would refuse


def test_lazy_allocation_gives_the_same_initial_weights():
    cfg = load_config(ROOT / "configs/lenet5.yaml")
    eager, _ = build_model(cfg, allocate=True)
    lazy = api.prepare(cfg, device="cpu").model
    assert not lazy.allocated
    lazy.allocate()
    lazy.allocate()  # once only: a second call changes nothing
    for key, value in eager.get_weights().items():
        np.testing.assert_array_equal(lazy.get_weights()[key], value)


def test_training_under_a_budget_still_trains(tmp_path, monkeypatch, synth_config):
    unlimited = api.train(synth_config, runs_dir=tmp_path / "a")
    monkeypatch.setenv(memory.ENV, "2G")
    limited = api.train(synth_config, runs_dir=tmp_path / "b")
    assert limited.history == unlimited.history


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synth_config):
    return api.train(synth_config, runs_dir=tmp_path_factory.mktemp("memory") / "runs").run_dir


def test_evaluate_predict_and_resume_refuse_before_allocating(tmp_path, monkeypatch, trained_run):
    monkeypatch.setenv(memory.ENV, "1K")
    manifest = (trained_run / "manifest.json").read_text()
    res = runner.invoke(app, ["evaluate", str(trained_run)])
    assert res.exit_code == 1 and "evaluating this checkpoint needs about" in " ".join(res.output.split())
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.zeros((2, 12), np.float32))
    res = runner.invoke(app, ["predict", str(trained_run), "--input", str(inputs)])
    assert res.exit_code == 1 and "predicting with this checkpoint needs about" in " ".join(res.output.split())
    res = runner.invoke(app, ["train", "--resume", str(trained_run)])
    assert res.exit_code == 1 and "resuming this run needs about" in " ".join(res.output.split())
    assert (trained_run / "manifest.json").read_text() == manifest  # no resume recorded


def test_the_limit_is_a_size_or_off(monkeypatch):
    for text, expected in [("2G", 2 * GiB), ("512M", 512 << 20), ("1.5GiB", 3 * GiB // 2), ("1000", 1000)]:
        monkeypatch.setenv(memory.ENV, text)
        assert memory.available_bytes() == (expected, memory.ENV)
    monkeypatch.setenv(memory.ENV, "off")
    assert memory.available_bytes()[0] is None
    memory.check(memory.Need(10**30, 0, 0, 1, "training", 0))  # no check at all
    monkeypatch.setenv(memory.ENV, "lots")
    with pytest.raises(UsageError, match="is not a size"):
        memory.available_bytes()


def test_the_machine_reports_its_available_memory(monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    available, source = memory.available_bytes()
    assert available is None or available > 0
    assert source


def test_refusal_is_above_ninety_percent_of_what_is_available(monkeypatch):
    monkeypatch.setenv(memory.ENV, "1000")
    memory.check(memory.Need(600, 300, 0, 1, "training", 0))
    with pytest.raises(DlrunError, match="needs about"):
        memory.check(memory.Need(600, 301, 0, 1, "training", 0))


def test_training_activations_count_what_backward_keeps():
    cfg = load_config(ROOT / "configs/fashion_mnist_mlp.yaml")
    setup = api.prepare(cfg, device="cpu")
    need = memory.training_need(setup.model, setup.optimizer, 64, cfg.resolved["data"])
    # input 784; each layer keeps its output and one more of its size; the widest gradient step (784 + 784)
    per_sample = 784 + 2 * (784 + 100 + 10) + (784 + 784)
    evaluation = (784 + 784 + 100 + 10) * 1024  # Flatten, Dense, Dense outputs and the input
    assert need.activations == max(per_sample * 64, evaluation) * 4
