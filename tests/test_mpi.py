"""Data-parallel training: N processes under a real `mpiexec` compute what one process does.

The MPI tests start real `mpiexec -n 2 python -m dlrun train` jobs (mpi4py and the mpich wheel, from
the `test` extra) and compare their history.json with a single-process run of the same global
batch; they skip when mpi4py or mpiexec is missing. The rest (synchronized BatchNormalization's
gradients on one process, sharding arithmetic, launcher detection, the config error) need no MPI.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import F64, assert_grad_close, build_model, chain_input_grad, numeric_grad

from dlrun.data.augment import augmenter
from dlrun.data.dataset import Split
from dlrun.data.pipeline import Batches
from dlrun.engine.backend import CPU
from dlrun.engine.random import NoiseRNG
from dlrun.errors import ArgumentError, ConfigError, UsageError
from dlrun.graph.layer import LAYERS
from dlrun.graph.layers.normalization import BatchNormalization
from dlrun.parallel import communicator, launch
from dlrun.runs import checkpoint as ckpt_mod

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
MPIEXEC = launch.find_mpiexec()
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or MPIEXEC is None, reason="needs mpi4py and mpiexec (dlrun[mpi])"
)

SYNTHETIC = {
    "name": "dp",
    "seed": 5,
    "data": {"dataset": "synthetic", "samples": 600, "features": 12, "classes": 3, "validation_split": 0.2},
    "model": {
        "layers": [
            {"Dense": {"units": 24, "activation": "relu", "kernel_regularizer": {"type": "l2", "l2": 0.001}}},
            {"BatchNormalization": {"synchronized": True}},
            {"Dropout": {"rate": 0.3}},
            {"Dense": {"units": 3, "activation": "softmax"}},
        ]
    },
    "loss": "sparse_categorical_crossentropy",
    "optimizer": "adam",
    "metrics": ["accuracy"],
    # 480 training samples: the last batch of 32 has 0, of 36 has 12 (split 6 + 6).
    "training": {"epochs": 3, "batch_size": 36, "shuffle": True},
}


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", **extra}
    for name in ("PMI_RANK", "PMI_SIZE", "PMI_FD", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        env.pop(name, None)  # a test run under mpiexec itself must still start fresh jobs
    return env


def _write(tmp_path: Path, cfg: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _dlrun(n: int, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "dlrun", *args]
    if n > 1:
        cmd = [MPIEXEC, "-n", str(n), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(**env), cwd=ROOT)


def _train(tmp_path: Path, cfg: dict, n: int, tag: str) -> tuple[Path, dict]:
    config = _write(tmp_path, cfg, f"{tag}.yaml")
    runs = tmp_path / f"runs_{tag}"
    proc = _dlrun(n, "train", str(config), "--runs-dir", str(runs), "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (runs / cfg["name"]).iterdir()  # one folder: only rank 0 writes
    return run_dir, json.loads((run_dir / "history.json").read_text())


def _close(a: dict, b: dict, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=1e-7, err_msg=key)


def _max_rel(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(np.subtract(a[k], b[k])) / np.maximum(np.abs(b[k]), 1e-12))) for k in a)


# -- single-process pieces -------------------------------------------------------------------------------
def test_synchronized_batchnorm_gradients_on_one_process(rng):
    """The synchronized path (its packed sums and the global-count formula) is exact on one process."""
    bn = BatchNormalization(synchronized=True, momentum=0.9)
    model = build_model([bn], (5,), backend=F64)
    model.use_communicator(communicator.Communicator())
    x = rng.standard_normal((16, 5)) * 3 + 2
    dout = rng.standard_normal((16, 5))

    def loss() -> float:
        return float((model.forward(x, training=True) * dout).sum())

    model.forward(x, training=True)
    model.backward(dout)
    analytic = model.flat_grads.copy()
    numeric = numeric_grad(lambda _: loss(), model.flat_params)
    assert_grad_close(analytic, numeric)
    assert_grad_close(chain_input_grad(model, x, dout, training=True), numeric_grad(lambda v: loss(), x))
    local = BatchNormalization(momentum=0.9)
    ref = build_model([local], (5,), backend=F64)
    np.testing.assert_allclose(model.forward(x, training=True), ref.forward(x, training=True), rtol=1e-10)


def test_synchronized_is_a_checked_keras_argument():
    layer = LAYERS.lookup("BatchNormalization")[1](synchronized=True)
    assert layer.get_config()["synchronized"] is True
    assert LAYERS.lookup("BatchNormalization")[1](**layer.get_config()).synchronized is True
    assert BatchNormalization().get_config()["synchronized"] is False
    with pytest.raises(ArgumentError, match="synchronized"):
        BatchNormalization(synchronized="yes")


def test_each_rank_takes_its_part_of_every_global_batch():
    split = Split(np.arange(50, dtype=np.float32).reshape(50, 1), np.arange(50))
    order = np.random.default_rng(0).permutation(50)
    whole = [y for _, y in Batches(split, 12, CPU).epoch(np.random.default_rng(0))]
    parts = [list(Batches(split, 12, CPU, shard=(r, 3)).epoch(np.random.default_rng(0))) for r in range(3)]
    for b, y in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([parts[r][b][1] for r in range(3)]), y)
    assert [len(p[-1][1]) for p in parts] == [0, 1, 1]  # the last batch holds 2 samples
    np.testing.assert_array_equal(whole[0], order[:12])


def test_augmentation_and_masks_are_drawn_for_the_global_batch():
    x = np.random.default_rng(1).integers(0, 255, (20, 8, 8, 1), dtype=np.uint8)
    split = Split(x, np.zeros(20, dtype=np.int64))
    aug = augmenter([{"RandomFlip": {"mode": "horizontal"}}, {"RandomCrop": {"padding": 2}}], 3, (8, 8, 1))
    whole = [xb for xb, _ in Batches(split, 10, CPU, 1 / 255, augmenter=aug).epoch(epoch=0)]
    halves = [
        [xb for xb, _ in Batches(split, 10, CPU, 1 / 255, augmenter=aug, shard=(r, 2)).epoch(epoch=0)] for r in (0, 1)
    ]
    for b in range(2):
        np.testing.assert_array_equal(np.concatenate([halves[0][b], halves[1][b]]), whole[b])
    one = NoiseRNG(CPU, np.random.default_rng(7)).bernoulli((10, 4), 0.5)
    noise = NoiseRNG(CPU, np.random.default_rng(7))
    noise.set_part(6, 10, 10)
    np.testing.assert_array_equal(noise.bernoulli((4, 4), 0.5), one[6:])


def test_launchers_are_recognised_from_their_environment(monkeypatch):
    for name in (
        "PMI_SIZE",
        "OMPI_COMM_WORLD_SIZE",
        "MPI_LOCALNRANKS",
        "SLURM_STEP_NUM_TASKS",
        "PMIX_RANK",
        "PMIX_SIZE",
    ):
        monkeypatch.delenv(name, raising=False)
    assert not communicator.launched_under_mpi()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert not communicator.launched_under_mpi()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert communicator.launched_under_mpi()
    assert launch.without_processes(["train", "c.yaml", "--processes", "4", "-q", "--processes=2"]) == [
        "train",
        "c.yaml",
        "-q",
    ]


def test_processes_without_mpiexec_names_the_extra(monkeypatch):
    monkeypatch.setattr(launch, "find_mpiexec", lambda: None)
    monkeypatch.setattr(launch, "launched_under_mpi", lambda: False)
    with pytest.raises(UsageError, match="mpiexec") as info:
        launch.relaunch(2)
    assert "dlrun[mpi]" in info.value.hint


def test_a_batch_that_does_not_split_is_a_config_error(tmp_path):
    from dlrun.api.setup import as_config
    from dlrun.training.distributed import check_batch_split

    cfg = as_config(_write(tmp_path, {**SYNTHETIC, "training": {"epochs": 1, "batch_size": 30}}))
    check_batch_split(cfg, 3)
    with pytest.raises(ConfigError, match="global batch") as info:
        check_batch_split(cfg, 4)
    lines = Path(info.value.file).read_text().splitlines()
    assert "batch_size: 30" in lines[info.value.line - 1]
    assert "28 or 32" in info.value.hint


# -- real mpiexec jobs -----------------------------------------------------------------------------------
@needs_mpi
def test_two_processes_train_what_one_does(tmp_path):
    run1, h1 = _train(tmp_path, SYNTHETIC, 1, "one")
    run2, h2 = _train(tmp_path, SYNTHETIC, 2, "two")
    _close(h2, h1)
    manifest = json.loads((run2 / "manifest.json").read_text())
    assert manifest["processes"]["world_size"] == 2 and "MPICH" in manifest["processes"]["mpi_library"]
    assert "processes" not in json.loads((run1 / "manifest.json").read_text())
    # The checkpoint is the single-process format: the same weights up to summation order.
    w1, w2 = (
        ckpt_mod.load(run1 / "checkpoints" / "last.npz").weights,
        ckpt_mod.load(run2 / "checkpoints" / "last.npz").weights,
    )
    for key in w1:
        np.testing.assert_allclose(w2[key], w1[key], rtol=1e-4, atol=1e-6)


@needs_mpi
def test_local_batchnorm_differs_and_synchronized_does_not(tmp_path):
    local = {**SYNTHETIC, "name": "local", "training": {**SYNTHETIC["training"], "epochs": 2}}
    local["model"] = {"layers": [dict(e) for e in SYNTHETIC["model"]["layers"]]}
    local["model"]["layers"][1] = "BatchNormalization"
    _, h1 = _train(tmp_path, local, 1, "l1")
    _, h2 = _train(tmp_path, local, 2, "l2")
    assert _max_rel(h2, h1) > 1e-3  # each rank normalises its half with its own statistics
    synced = {**local, "model": SYNTHETIC["model"], "name": "synced"}
    _, s1 = _train(tmp_path, synced, 1, "s1")
    _, s2 = _train(tmp_path, synced, 2, "s2")
    _close(s2, s1)


@needs_mpi
@pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").is_file() and not FASHION.is_dir(), reason="no Fashion-MNIST"
)
def test_fashion_mnist_cnn_slice_with_dropout_augmentation_and_synchronized_bn(tmp_path):
    cfg = {
        "name": "fm",
        "seed": 11,
        "data": {
            "dataset": "fashion_mnist",
            "path": str(FASHION),
            "limit": 640,
            "validation_split": 0.2,
            "augmentation": [
                {"RandomFlip": {"mode": "horizontal"}},
                {"RandomTranslation": {"height_factor": 0.1, "width_factor": 0.1}},
            ],
        },
        "model": {
            "input_shape": [28, 28, 1],
            "layers": [
                {"Conv2D": {"filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"}},
                {"BatchNormalization": {"synchronized": True}},
                {"MaxPooling2D": {"pool_size": 2}},
                {"Dropout": {"rate": 0.25}},
                "Flatten",
                {"Dense": {"units": 10, "activation": "softmax"}},
            ],
        },
        "loss": "sparse_categorical_crossentropy",
        "optimizer": {"type": "adam", "learning_rate": 0.003},
        "metrics": ["accuracy"],
        "training": {"epochs": 2, "batch_size": 64, "shuffle": True},
    }
    _, h1 = _train(tmp_path, cfg, 1, "f1")
    _, h2 = _train(tmp_path, cfg, 2, "f2")
    _close(h2, h1)


def _rank_pids(tag: str) -> dict[int, int]:
    """The dlrun ranks of the job whose environment carries `tag`: {rank: pid}."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError):
            continue
        if env.get("DLRUN_TEST_TAG") == tag and "PMI_RANK" in env:
            found[int(env["PMI_RANK"])] = int(proc.name)
    return found


def _start(config: Path, runs: Path, tag: str) -> subprocess.Popen:
    return subprocess.Popen(
        [MPIEXEC, "-n", "2", sys.executable, "-m", "dlrun", "train", str(config), "--runs-dir", str(runs), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(DLRUN_TEST_TAG=tag),
        cwd=ROOT,
    )


def _wait_for_checkpoint(runs: Path, name: str, proc: subprocess.Popen, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list((runs / name).glob("*/checkpoints/last.npz"))
        if found:
            return found[0].parents[1]
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


LONG = {
    **SYNTHETIC,
    "name": "long",
    "data": {**SYNTHETIC["data"], "samples": 3000},
    "model": {
        "layers": [
            {"Dense": {"units": 256, "activation": "relu"}},
            {"BatchNormalization": {"synchronized": True}},
            {"Dropout": {"rate": 0.3}},
            {"Dense": {"units": 3, "activation": "softmax"}},
        ]
    },
    "training": {"epochs": 6, "batch_size": 12, "shuffle": True},
}


@needs_mpi
def test_interrupted_run_resumes_exactly_on_two_processes_and_on_one(tmp_path):
    _, reference = _train(tmp_path, LONG, 2, "ref")  # the uninterrupted run, on as many processes
    config, runs, tag = _write(tmp_path, LONG, "long.yaml"), tmp_path / "runs_int", uuid.uuid4().hex
    proc = _start(config, runs, tag)
    run_dir = _wait_for_checkpoint(runs, "long", proc)
    # Into the next epoch: the stop then saves an unfinished one. Not longer: epochs take 0.06 s on
    # a fast machine, and a signal that lands after the last one tests the exit, not the stop.
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=30)
    finally:  # a hung job must fail this test, not live on beside the rest of the suite
        for pid in [*_rank_pids(tag).values(), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert time.monotonic() - started < 30
    assert proc.returncode == 130, err[-2000:]
    assert err.count("stopped by SIGINT") == 1  # rank 0 alone says it
    assert "MPI_Abort" not in err  # the ranks agreed on the batch to stop after: no abort
    meta = ckpt_mod.load(run_dir / "checkpoints" / "last.npz").meta
    assert "partial_epoch" in meta or meta["epoch"] < LONG["training"]["epochs"]
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for n, folder in ((2, run_dir), (1, copy)):
        proc2 = _dlrun(n, "train", "--resume", str(folder), "-q")
        assert proc2.returncode == 0, proc2.stderr[-3000:]
        resumed = json.loads((folder / "history.json").read_text())
        # Measured: 0.0 on two processes, 8.6e-8 relative on one (it sums each batch in another order).
        _close(resumed, reference)


@needs_mpi
def test_kill_9_of_one_rank_ends_the_job_and_the_last_checkpoint_loads(tmp_path):
    tag = uuid.uuid4().hex
    config, runs = _write(tmp_path, LONG, "long.yaml"), tmp_path / "runs_k9"
    proc = _start(config, runs, tag)
    run_dir = _wait_for_checkpoint(runs, "long", proc)
    pids = _rank_pids(tag)
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGKILL)
    started = time.monotonic()
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and time.monotonic() - started < 60
    assert ckpt_mod.load(run_dir / "checkpoints" / "last.npz").epoch >= 1
    assert not _rank_pids(tag)  # no rank is left behind


@needs_mpi
def test_an_error_on_one_rank_ends_every_rank(tmp_path):
    """Rank 1 alone cannot read its data (as on a host without the files): it says so, and MPI_Abort
    ends rank 0, which would otherwise wait for it forever."""
    good = _write(tmp_path, SYNTHETIC, "good.yaml")
    bad_cfg = {**SYNTHETIC, "data": {"dataset": "npz", "path": str(tmp_path / "missing.npz")}}
    bad = _write(tmp_path, bad_cfg, "bad.yaml")
    cmd = [MPIEXEC, "-n", "1", sys.executable, "-m", "dlrun", "train", str(good), "--runs-dir", str(tmp_path / "r")]
    cmd += [":", "-n", "1", sys.executable, "-m", "dlrun", "train", str(bad), "--runs-dir", str(tmp_path / "r")]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_env(), cwd=ROOT)
    assert proc.returncode != 0 and time.monotonic() - started < 30
    assert "rank 1 of 2" in proc.stderr and "missing.npz" in proc.stderr


@needs_mpi
def test_processes_option_and_a_batch_that_does_not_split(tmp_path):
    bad = _write(tmp_path, {**SYNTHETIC, "training": {"epochs": 1, "batch_size": 33}})
    proc = _dlrun(1, "train", str(bad), "--processes", "2", "--runs-dir", str(tmp_path / "r"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("must split evenly over the 2 processes") == 1
    assert "32 or 34" in proc.stderr and "batch_size: 33" in proc.stderr  # the YAML line is shown
    assert not (tmp_path / "r").exists()


def test_warmup_ramps_the_rate_of_each_step(tmp_path):
    from dlrun import api

    cfg = {
        **SYNTHETIC,
        "name": "warm",
        "optimizer": {"type": "sgd", "learning_rate": 0.1},
        "training": {"epochs": 3, "batch_size": 40, "warmup_epochs": 2},
    }
    warm = api.train(cfg, runs_dir=tmp_path / "w")
    cold = api.train({**cfg, "training": {**cfg["training"], "warmup_epochs": 0}}, runs_dir=tmp_path / "c")
    assert warm.history["learning_rate"] == [0.1, 0.1, 0.1]  # the target; the steps ramp up to it
    assert warm.history["loss"][0] != cold.history["loss"][0]
    with pytest.raises(ConfigError, match="warmup_epochs"):
        api.train({**cfg, "training": {**cfg["training"], "warmup_epochs": -1}}, runs_dir=tmp_path / "x")


def _gpus() -> int:
    from dlrun.engine import backend as backend_mod

    if backend_mod.gpu_unavailable_reason() is not None:
        return 0
    import cupy  # type: ignore[import-not-found]

    return int(cupy.cuda.runtime.getDeviceCount())


@needs_mpi
@pytest.mark.gpu
@pytest.mark.skipif(_gpus() < 2, reason="needs two GPUs (NCCL takes one device per rank)")
def test_two_gpu_processes_with_nccl_train_what_one_does(tmp_path):
    cfg = {**SYNTHETIC, "name": "gpu", "device": "gpu"}
    _, h1 = _train(tmp_path, cfg, 1, "g1")
    run2, h2 = _train(tmp_path, cfg, 2, "g2")
    _close(h2, h1, rtol=1e-4)
    assert json.loads((run2 / "manifest.json").read_text())["processes"]["world_size"] == 2
