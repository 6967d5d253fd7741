"""The checkpoint format: round trips, atomic writes, and one clear error for every bad file.

Hostile files (pickle payloads) must be refused without running anything: each one here would
create a marker file if it were ever unpickled.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dlrun import api
from dlrun.atomic import remove_temporaries, write_json
from dlrun.cli import app
from dlrun.errors import CheckpointError
from dlrun.runs import checkpoint as ck

CONFIG = {
    "name": "ck",
    "seed": 5,
    "data": {"dataset": "synthetic", "samples": 120, "features": 6, "classes": 3, "validation_split": 0.25},
    "model": {
        "layers": [
            {"Dense": {"units": 8, "activation": "relu"}},
            {"BatchNormalization": {}},
            {"Dense": {"units": 3, "activation": "softmax"}},
        ]
    },
    "loss": "sparse_categorical_crossentropy",
    "optimizer": "adam",
    "metrics": ["accuracy"],
    "training": {"epochs": 2, "batch_size": 16},
    "callbacks": [{"EarlyStopping": {"patience": 5, "restore_best_weights": True}}],
}


class Marker:
    """Unpickling this creates `path`: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return api.train(dict(CONFIG), runs_dir=tmp_path_factory.mktemp("runs"))


def _sample() -> ck.Checkpoint:
    return ck.Checkpoint(
        {"name": "x"},
        {"dense/kernel": np.arange(6, dtype=np.float32).reshape(2, 3)},
        {"momentum": np.ones(6, np.float32)},
        {
            "epoch": 3,
            "history": {"loss": [1.0, float("nan")]},
            "callbacks": [
                {"type": "EarlyStopping", "state": {"best": float("inf"), "best_weights": {"d/k": np.eye(2)}}}
            ],
            "rng": {"shuffle": {"state": {"state": 2**127 + 3, "inc": 5}}},
        },
    )


def test_round_trip_keeps_arrays_metadata_and_state_arrays(tmp_path):
    ck.save(tmp_path / "a.npz", _sample())
    back = ck.load(tmp_path / "a.npz")
    assert back.config == {"name": "x"} and back.epoch == 3
    assert np.array_equal(back.weights["dense/kernel"], _sample().weights["dense/kernel"])
    assert back.weights["dense/kernel"].dtype == np.float32 and np.array_equal(back.optimizer["momentum"], np.ones(6))
    state = back.meta["callbacks"][0]["state"]
    assert state["best"] == float("inf") and np.array_equal(state["best_weights"]["d/k"], np.eye(2))
    assert back.meta["rng"]["shuffle"]["state"]["state"] == 2**127 + 3  # 128-bit RNG state exact
    assert back.meta["format_version"] == ck.FORMAT_VERSION and back.meta["dlrun_version"]
    assert np.isnan(back.meta["history"]["loss"][1])


def test_a_training_checkpoint_holds_everything(trained):
    c = ck.load(trained.run_dir / "checkpoints" / "last.npz")
    assert c.resumable and c.epoch == 2
    assert any("moving_mean" in k for k in c.weights) and any("moving_variance" in k for k in c.weights)
    assert set(c.optimizer) == {"momentum", "velocity"} and c.meta["optimizer"]["iterations"] == 12
    assert {"noise", "shuffle"} <= set(c.meta["rng"]) and c.meta["history"]["loss"]
    assert [s["type"] for s in c.meta["callbacks"]] == ["EarlyStopping", "RunRecorder"]
    assert isinstance(c.meta["callbacks"][0]["state"]["best_weights"]["dense/kernel"], np.ndarray)
    assert c.config["callbacks"][0]["EarlyStopping"]["patience"] == 5


def test_newer_format_version_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "FORMAT_VERSION", 99)
    ck.save(tmp_path / "new.npz", _sample())
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="format version 99.*reads up to version 1") as info:
        ck.load(tmp_path / "new.npz")
    assert "upgrade dlrun" in info.value.hint


@pytest.mark.parametrize("keep", [0, 10, 200, 0.5, 0.9, -1])
def test_truncated_file_is_one_clear_error(tmp_path, keep):
    ck.save(tmp_path / "a.npz", _sample())
    data = (tmp_path / "a.npz").read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    (tmp_path / "t.npz").write_bytes(data[:n])
    with pytest.raises(CheckpointError, match=r"t\.npz"):
        ck.load(tmp_path / "t.npz")


def test_files_that_are_not_checkpoints(tmp_path):
    cases = {
        "text.npz": b"hello, I am a text file\n",
        "bare.npz": b"PK\x03\x04 not really a zip",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    np.save(tmp_path / "arr.npy", np.zeros(3))  # a bare .npy, not an archive
    np.savez(tmp_path / "other.npz", x=np.zeros(3))  # an npz without our metadata
    np.savez(tmp_path / "json.npz", __meta__=np.frombuffer(b'{"format": "x"}', np.uint8))
    with zipfile.ZipFile(tmp_path / "zip.npz", "w") as z:  # a zip member that is not .npy
        z.writestr("__meta__.npy", b"garbage")
    messages = {}
    for name in [*cases, "arr.npy", "other.npz", "json.npz", "zip.npz"]:
        with pytest.raises(CheckpointError) as info:
            ck.load(tmp_path / name)
        messages[name] = str(info.value)
        assert name in messages[name]
    assert "not an .npz archive" in messages["text.npz"] and "not an .npz archive" in messages["arr.npy"]
    assert "no metadata record" in messages["other.npz"]
    assert "is not a dlrun checkpoint" in messages["json.npz"]
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ck.load(tmp_path / "missing.npz")


def test_unknown_entries_are_refused(tmp_path):
    ck.save(tmp_path / "a.npz", _sample())
    with zipfile.ZipFile(tmp_path / "a.npz", "a") as z:
        buf = io.BytesIO()
        np.save(buf, np.zeros(2))
        z.writestr("extra.npy", buf.getvalue())
    with pytest.raises(CheckpointError, match="unexpected entries: extra"):
        ck.load(tmp_path / "a.npz")


def test_pickled_object_array_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = Marker(marker)
    good = _sample()
    # The same layout as a real checkpoint, with an object array where the weights are.
    meta = {"format": ck.FORMAT, "format_version": 1, "config": {"name": "x"}}
    np.savez(
        tmp_path / "evil.npz",
        __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8),
        **{"weights/dense/kernel": evil},
        **{"optimizer/m": good.optimizer["momentum"]},
    )
    # And one hiding it under a name the loader might skip.
    np.savez(tmp_path / "evil2.npz", __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **{"state/0": evil})
    # NumPy itself refuses the object array when pickles are disallowed: the property we rely on.
    with (
        np.load(tmp_path / "evil.npz", allow_pickle=False) as npz,
        pytest.raises(ValueError, match="allow_pickle=False"),
    ):
        npz["weights/dense/kernel"]
    for name in ("evil.npz", "evil2.npz"):
        with pytest.raises(CheckpointError, match="pickled Python objects and was refused") as info:
            ck.load(tmp_path / name)
        assert "hostile" in info.value.hint
    # A raw pickle renamed .npz is refused before NumPy sees it.
    (tmp_path / "raw.npz").write_bytes(pickle.dumps(Marker(marker)))
    with pytest.raises(CheckpointError, match="is a Python pickle"):
        ck.load(tmp_path / "raw.npz")
    assert not marker.exists()


def test_cli_evaluate_refuses_hostile_and_broken_files_cleanly(tmp_path):
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = Marker(marker)
    meta = {"format": ck.FORMAT, "format_version": 1, "config": {"name": "x"}}
    np.savez(tmp_path / "evil.npz", __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **{"weights/w": evil})
    (tmp_path / "half.npz").write_bytes(b"PK\x03\x04" + b"\0" * 50)
    for name in ("evil.npz", "half.npz"):
        res = CliRunner().invoke(app, ["evaluate", str(tmp_path / name)])
        assert res.exit_code == 1 and "Traceback" not in res.output and name in res.output, res.output
    assert not marker.exists()


def test_evaluate_works_from_each_checkpoint_file_alone(trained, tmp_path):
    for name in ("last.npz", "best.npz"):
        copy = tmp_path / name
        copy.write_bytes((trained.run_dir / "checkpoints" / name).read_bytes())
        scores = api.evaluate(copy)
        assert set(scores) == {"loss", "accuracy"}
    assert api.evaluate(tmp_path / "last.npz", split="val")["accuracy"] == pytest.approx(
        trained.history["val_accuracy"][-1]
    )


def test_atomic_write_leaves_the_previous_file_when_interrupted(tmp_path, monkeypatch):
    ck.save(tmp_path / "a.npz", _sample())
    before = (tmp_path / "a.npz").read_bytes()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # a Ctrl-C in the middle of the write

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save(tmp_path / "a.npz", _sample())
    assert (tmp_path / "a.npz").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary file left behind


def test_leftover_temporaries_are_cleaned(tmp_path):
    (tmp_path / ".last.npz.abc123.tmp").write_bytes(b"half")
    write_json(tmp_path / "h.json", {"a": 1})
    assert [p.name for p in remove_temporaries(tmp_path)] == [".last.npz.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json"]
    assert oct((tmp_path / "h.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
