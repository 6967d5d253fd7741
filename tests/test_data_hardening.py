"""Bad data files get one clear error saying what is wrong with them, never a traceback, a hang, a
silent fallback or a silently different dataset (issue 12)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from dlrun import api, npzfile
from dlrun.data import userfiles
from dlrun.data.dataset import check_data_files, dataset_input_shape, load_dataset
from dlrun.data.datasets import cifar10, fashion_mnist
from dlrun.data.inputs import load_inputs
from dlrun.errors import CheckpointError, DataError
from dlrun.runs import checkpoint as ck


def csv_cfg(path: Path, task: str = "classification", target: str | int = "y") -> dict:
    return {"dataset": "csv", "path": str(path), "target": target, "task": task}


def npz_cfg(path: Path, task: str = "classification") -> dict:
    return {"dataset": "npz", "path": str(path), "task": task}


# -- csv targets and quotes ----------------------------------------------------------------------------
def test_an_empty_csv_target_is_an_error_not_a_class(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('a,b,y\n1,2,""\n3,4,1\n5,6,0\n')
    with pytest.raises(DataError, match=r"t\.csv, row 2, column 'y': the target is empty"):
        load_dataset(csv_cfg(p), 0)
    p.write_text("1,2,0\n\n3,4, \n")  # no header; the blank line still counts in the row number
    with pytest.raises(DataError, match="row 3, column 2: the target is empty"):
        load_dataset(csv_cfg(p, target=-1), 0)


def test_an_unparsable_regression_target_names_row_and_column(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("a,y\n1,0.5\n2,abc\n")
    with pytest.raises(DataError, match=r"row 3, column 'y': the target 'abc' is not a finite number"):
        load_dataset(csv_cfg(p, "regression"), 0)
    p.write_text("a,y\n1,0.5\n2,1e39\n")  # beyond float32
    with pytest.raises(DataError, match="row 3, column 'y': the target '1e39' is not a finite number"):
        load_dataset(csv_cfg(p, "regression"), 0)
    p.write_text("a,y\n1,0\n2,nan\n")
    with pytest.raises(DataError, match="row 3, column 'y': the class label 'nan' is not a class"):
        load_dataset(csv_cfg(p), 0)
    p.write_text("a,y\ninf,0\n2,1\n")
    with pytest.raises(DataError, match="row 2, column 'a': 'inf' is not a finite number"):
        load_dataset(csv_cfg(p), 0)


def test_an_unterminated_csv_quote_says_where_it_opens(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('a,b,y\n1,2,0\n"3,4,1\n5,6,0\n7,8,1\n')
    with pytest.raises(DataError, match=r"q\.csv, row 3: a quote \(\"\) opened here is never closed"):
        load_dataset({**csv_cfg(p), "test_split": 0.2}, 0)
    p.write_text('a,b,y\n1,"2"x,0\n')
    with pytest.raises(DataError, match="row 2: bad quoting"):
        load_dataset(csv_cfg(p), 0)
    p.write_text('a,b,y\n1,"2\n3",0\n')  # a closed quote spanning lines: said so
    with pytest.raises(DataError, match="row 2, column 'b': .* spanning lines"):
        load_dataset(csv_cfg(p), 0)


def test_quoted_csv_cells_still_work(tmp_path):
    p = tmp_path / "ok.csv"
    p.write_text('"a","b","y"\n"1","2","cat"\n3,4,"dog"\n')
    data = load_dataset({**csv_cfg(p), "normalize": "none"}, 0)
    assert data.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(data.train.x, [[1, 2], [3, 4]])


# -- npz contents ------------------------------------------------------------------------------------
def test_npz_label_messages_say_what_is_wrong(tmp_path):
    p = tmp_path / "d.npz"
    x = np.zeros((3, 2), np.float32)
    np.savez(p, x_train=x, y_train=np.array([0.0, np.nan, 1.0]))
    with pytest.raises(DataError, match="1 class labels are NaN or infinite"):
        load_dataset(npz_cfg(p), 0)
    np.savez(p, x_train=x, y_train=np.array([0.0, 1e300, 1.0]))
    with pytest.raises(DataError, match=r"a class label is 1e\+300, too large to be a class number"):
        load_dataset(npz_cfg(p), 0)
    np.savez(p, x_train=x, y_train=np.array([0, 2**64 - 1, 1], np.uint64))
    with pytest.raises(DataError, match="too large to be a class number"):
        load_dataset(npz_cfg(p), 0)
    np.savez(p, x_train=x, y_train=np.array([0.5, 1.0, 2.0]))
    with pytest.raises(DataError, match=r"values such as \[0.5\]"):
        load_dataset(npz_cfg(p), 0)
    np.savez(p, x_train=x, y_train=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match="class labels must be integers 0, 1, 2, ..., got <U1 values"):
        load_dataset(npz_cfg(p), 0)
    np.savez(p, x_train=x, y_train=np.array([1.0, np.inf, 2.0]))
    with pytest.raises(DataError, match="NaN or infinite"):
        load_dataset(npz_cfg(p, "regression"), 0)


def test_a_0d_y_train_is_an_error(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x_train=np.zeros((3, 2), np.float32), y_train=np.array(1))
    for task in ("classification", "regression"):
        with pytest.raises(DataError, match="y_train is a single value"):
            load_dataset(npz_cfg(p, task), 0)
    with pytest.raises(DataError, match="a single value"):
        userfiles.labels_or_values([np.array(1.0)], "regression", "here")


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros(5, np.float32), r"x_train has shape \[5\]; inputs must be an array of shape \(samples, features"),
        (np.zeros((5, 2), dtype=[("a", "f4")]), "x_train holds a structured array; inputs must be a numeric array"),
        (np.array(["a"] * 5), "x_train holds <U1 values; inputs must be a numeric array"),
        (np.array([{"a": 1}] * 5, dtype=object), "holds Python objects"),
        (np.zeros((5, 2), np.complex64), "x_train holds complex64 values"),
    ],
)
def test_bad_x_says_what_x_must_be(tmp_path, x, message):
    p = tmp_path / "d.npz"
    np.savez(p, x_train=x, y_train=np.zeros(5, np.int64))
    with pytest.raises(DataError, match=message):
        dataset_input_shape(npz_cfg(p), needed=True)  # what summary/validate ask when input_shape is unset
    with pytest.raises(DataError, match=message):
        check_data_files(npz_cfg(p))  # and validate's static check, reading no array


def test_static_npz_check_reads_headers_only(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x_train=np.zeros((4, 2)), y_train=np.zeros(3), x_test=np.zeros((2, 3)), y_test=np.zeros(2))
    with pytest.raises(DataError, match="x_train has 4 samples, y_train 3"):
        check_data_files(npz_cfg(p))
    np.savez(p, x_train=np.zeros((4, 2)), y_train=np.zeros(4), x_test=np.zeros((2, 3)), y_test=np.zeros(2))
    with pytest.raises(DataError, match=r"x_test samples have shape \[3\], x_train \[2\]"):
        check_data_files(npz_cfg(p))
    np.savez(p, x_train=np.zeros((0, 2)), y_train=np.zeros(0))
    with pytest.raises(DataError, match="x_train holds no samples"):
        check_data_files(npz_cfg(p))
    np.savez(p, x_train=np.zeros((4, 2)), y_train=np.zeros(4))
    check_data_files(npz_cfg(p))
    with pytest.raises(DataError, match="not a file"):
        check_data_files(npz_cfg(tmp_path / "missing.npz"))
    with pytest.raises(DataError, match="not a file"):
        check_data_files(csv_cfg(tmp_path / "missing.csv"))


# -- an empty test split -----------------------------------------------------------------------------
def test_an_empty_npz_test_set_is_skipped_with_a_note(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=x, y_train=y, x_test=x[:0], y_test=y[:0])
    data = load_dataset(npz_cfg(p), 0)
    assert data.test is None and data.notes == ["the test split of npz is empty (0 samples) and was skipped"]
    with pytest.raises(DataError, match="has no test split here .*empty .* skipped"):
        data.split("test")
    cfg = {
        "name": "empty",
        "seed": 1,
        "data": npz_cfg(p),
        "model": {"layers": [{"Dense": {"units": 2, "activation": "softmax"}}]},
        "loss": "sparse_categorical_crossentropy",
        "optimizer": "adam",
        "metrics": ["accuracy"],
        "training": {"epochs": 1, "batch_size": 8},
    }
    result = api.train(cfg, runs_dir=tmp_path / "runs")  # was ZeroDivisionError after the first epoch
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert "test" not in metrics and metrics["epochs"] == 1


def test_means_over_no_samples_are_nan_not_a_division_by_zero():
    from dlrun.engine.backend import CPU
    from dlrun.training.evaluation import means

    out = means(CPU, np.zeros(2), 0, ["loss", "accuracy"])
    assert all(np.isnan(v) for v in out.values())


# -- explicit paths ----------------------------------------------------------------------------------
@pytest.mark.parametrize("module", [fashion_mnist, cifar10])
def test_a_named_path_without_the_files_is_an_error_not_a_fallback(tmp_path, module, monkeypatch):
    # A copy the search would find elsewhere: the named path must still win (and fail).
    monkeypatch.setattr(module, "find", lambda user_path: pytest.fail("searched past the named path"))
    for where in (tmp_path / "nonexistent", tmp_path):
        cfg = {"dataset": module.NAME, "path": str(where)}
        with pytest.raises(DataError, match=f"the data path {where} (does not exist|lacks the files)") as info:
            load_dataset(cfg, 0, allow_download=False)
        assert "expects there" in info.value.message and next(iter(module.FILES)) in info.value.message
        with pytest.raises(DataError, match="expects there"):
            check_data_files(cfg)


def test_a_named_fashion_folder_with_some_files_lists_the_missing_ones(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"missing: train-labels-idx1-ubyte.gz, t10k-images"):
        fashion_mnist.check_user_path(str(tmp_path))


def test_evaluate_data_path_is_not_ignored(tmp_path):
    cfg = {
        "name": "fm",
        "seed": 1,
        "data": {"dataset": "synthetic", "samples": 40, "features": 4},
        "model": {"layers": [{"Dense": {"units": 2, "activation": "softmax"}}]},
        "loss": "sparse_categorical_crossentropy",
        "optimizer": "adam",
        "training": {"epochs": 1, "batch_size": 8},
    }
    run = api.train(cfg, runs_dir=tmp_path / "runs").run_dir
    last = ck.load(run / "checkpoints" / "last.npz")
    last.config["data"] = {"dataset": "fashion_mnist"}
    last.config["model"]["input_shape"] = [28, 28, 1]
    last.config["model"]["layers"].insert(0, "Flatten")
    last.weights = {k: np.zeros((784, 2) if v.ndim == 2 else v.shape, v.dtype) for k, v in last.weights.items()}
    path = tmp_path / "fm.npz"
    ck.save(path, last)
    with pytest.raises(DataError, match="the data path /nonexistent does not exist"):
        api.evaluate(path, data_path="/nonexistent")


# -- FIFOs -------------------------------------------------------------------------------------------
@pytest.fixture
def fifo(tmp_path):
    """A FIFO, and a thread unblocking whoever opens it for reading (with junk), so that a reader
    that blocks makes the test fail instead of hang."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs FIFOs")
    made: list[Path] = []
    done = threading.Event()

    def unblock() -> None:
        while not done.wait(0.2):
            for path in made:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # fails while nobody reads
                except OSError:
                    continue
                os.write(fd, b"junk")
                os.close(fd)
                opened.append(path)

    opened: list[Path] = []

    def make(name: str) -> Path:
        path = tmp_path / name
        os.mkfifo(path)
        made.append(path)
        return path

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    yield make
    done.set()
    thread.join()
    assert not opened, f"{opened} were opened for reading"


@pytest.mark.parametrize("dataset", ["npz", "csv"])
def test_a_fifo_data_path_never_blocks(fifo, dataset):
    pipe = fifo(f"pipe.{dataset}")
    cfg = {"dataset": dataset, "path": str(pipe), "target": -1, "task": "classification"}
    assert dataset_input_shape(cfg) is None  # the header read used by summary/validate
    for call in (lambda: load_dataset(cfg, 0), lambda: check_data_files(cfg)):
        with pytest.raises(DataError, match="is not a file .*FIFO"):
            call()
    with pytest.raises(DataError, match="the data path .* FIFO"):
        check_data_files({"dataset": "fashion_mnist", "path": str(pipe)})


def test_fifos_are_never_opened_as_npz_inputs_or_checkpoints(fifo):
    pipe = fifo("pipe.npz")
    assert not npzfile.regular_file(pipe)
    with pytest.raises(npzfile.NotAnArchive, match="not a regular file"):
        npzfile.NpzReader(pipe)
    with pytest.raises(DataError, match="input file not a regular file"):
        load_inputs(pipe, (2,))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ck.load(pipe)


# -- checkpoint metadata -----------------------------------------------------------------------------
def _ckpt(tmp_path: Path, **meta) -> Path:
    path = tmp_path / "c.npz"
    ck.save(path, ck.Checkpoint({"name": "x"}, {"d/k": np.zeros(2, np.float32)}, {}, meta))
    return path


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epoch", -5),
        ("epoch", "3"),
        ("epoch", True),
        ("epochs", 2.5),
        ("history", "x"),
        ("history", {"loss": "x"}),
        ("history", {"loss": [1.0, "a"]}),
        ("callbacks", {"type": "EarlyStopping"}),
        ("callbacks", ["EarlyStopping"]),
        ("optimizer", []),
        ("optimizer", {"iterations": -1}),
        ("optimizer", {"learning_rate": "fast"}),
        ("rng", "seed"),
        ("rng", {"shuffle": 3}),
        ("stop_training", "no"),
        ("partial_epoch", {"batch": 1}),
    ],
)
def test_checkpoint_metadata_fields_are_checked(tmp_path, field, value):
    path = _ckpt(tmp_path, **{field: value})
    with pytest.raises(CheckpointError, match=rf"c\.npz is corrupt: its metadata field '{field}' is"):
        ck.load(path)


def test_valid_checkpoint_metadata_still_loads(tmp_path):
    history = {"loss": [1.0, None, float("nan")], "accuracy": [0, 1]}
    loaded = ck.load(_ckpt(tmp_path, epoch=0, epochs=3, history=history, callbacks=[], optimizer={"iterations": 0}))
    assert loaded.epoch == 0 and loaded.meta["history"]["accuracy"] == [0, 1]


def test_a_checkpoint_whose_partial_epoch_does_not_fit_is_refused(tmp_path):
    import signal

    from dlrun import api
    from dlrun.errors import CheckpointError, TrainingInterrupted
    from dlrun.runs import checkpoint as ckpt_mod
    from dlrun.training.loop import SilentListener

    class StopAfterFirstBatch(SilentListener):
        def on_batch_end(self, batch, batches, samples, running):
            if batch == 0:
                signal.raise_signal(signal.SIGINT)

    cfg = {
        "name": "partial",
        "data": {"dataset": "synthetic", "samples": 200, "features": 4, "classes": 2},
        "model": {"layers": [{"Dense": {"units": 2, "activation": "softmax"}}]},
        "loss": "sparse_categorical_crossentropy",
        "metrics": ["accuracy"],
        "training": {"epochs": 1},
    }
    with pytest.raises(TrainingInterrupted) as info:
        api.train(cfg, runs_dir=tmp_path, listener=StopAfterFirstBatch())
    last = info.value.run_dir / "checkpoints" / "last.npz"
    ckpt = ckpt_mod.load(last)
    ckpt.meta["partial_epoch"]["sums"] = ckpt.meta["partial_epoch"]["sums"][:1]
    ckpt_mod.save(last, ckpt)
    with pytest.raises(CheckpointError, match="does not fit its own config: its unfinished epoch sums 1 values"):
        api.resume(info.value.run_dir)


def test_validate_checks_the_data_files_train_would_refuse(tmp_path):
    from dlrun import api
    from dlrun.errors import DataError

    cfg = {
        "data": {"dataset": "npz", "path": str(tmp_path / "missing.npz")},
        "model": {"input_shape": [4], "layers": [{"Dense": {"units": 2, "activation": "softmax"}}]},
        "loss": "sparse_categorical_crossentropy",
    }
    with pytest.raises(DataError):
        api.validate(cfg)
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    cfg["data"]["path"] = str(fifo)
    with pytest.raises(DataError, match="regular file"):
        api.validate(cfg)  # would block forever if it opened the FIFO
    cfg["data"] = {"dataset": "fashion_mnist", "path": str(tmp_path / "nowhere")}
    with pytest.raises(DataError):
        api.validate(cfg)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"dataset": "synthetic", "samples": 200, "features": 4, "validation_split": 0.999}, "0.999 of 200 samples"),
        ({"dataset": "synthetic", "samples": 1, "features": 4, "validation_split": 0.25}, "0.25 of 1 samples"),
        ({"dataset": "fashion_mnist", "limit": 3, "validation_split": 0.1}, "0.1 of 3 samples"),
    ],
)
def test_validate_refuses_splits_that_train_would_find_empty(data, needle):
    from dlrun import api
    from dlrun.errors import DataError

    cfg = {
        "data": data,
        "model": {
            "layers": [
                {"Flatten": {}},
                {"Dense": {"units": 2 if data["dataset"] == "synthetic" else 10, "activation": "softmax"}},
            ]
        },
        "loss": "sparse_categorical_crossentropy",
    }
    with pytest.raises(DataError, match=needle):
        api.validate(cfg)
