"""The dataset registry: a dataset is one Source, and nothing above the data layer names one."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from dlrun import api
from dlrun.checks import POSITIVE
from dlrun.cli import app
from dlrun.config.schema import Key
from dlrun.data.dataset import dataset_input_shape, known_targets, load_dataset
from dlrun.data.registry import DATASETS, TASK, Arrays, Found, Source
from dlrun.errors import ConfigError, DataError

DLRUN = Path(__file__).resolve().parents[1] / "dlrun"


class Tiny(Source):
    """A dataset as a new module would define it: bytes of a file as 4-feature samples."""

    name = "tiny"
    description = "bytes of a file, four to a sample (a test dataset)"
    order = 60
    keys: ClassVar[dict[str, Key]] = {
        "path": Key((str,), None, None, "any file", nullable=True),
        "width": Key((int,), 4, POSITIVE, "features per sample"),
    }

    def check(self, cfg: Any, data: dict[str, Any], node: Any) -> None:
        if not data["path"]:
            raise cfg.error("the tiny dataset needs data.path", node, None, "data")

    def find(self, user_path: str | None) -> Found:
        return Found(Path(user_path), [], [Path(user_path)]) if user_path else Found(None)

    def load(self, data_cfg: dict[str, Any], seed: int, progress: Any, allow_download: bool) -> Arrays:
        path, width = Path(data_cfg["path"]), data_cfg["width"]
        raw = np.frombuffer(path.read_bytes(), np.uint8)
        x = raw[: len(raw) // width * width].reshape(-1, width).astype(np.float32) / 255
        return Arrays(x, (x[:, 0] > 0.5).astype(np.int64), num_classes=2, files=[path])

    def input_shape(self, data_cfg: dict[str, Any]) -> tuple[int, ...]:
        return (data_cfg["width"],)


@pytest.fixture
def tiny(tmp_path):
    DATASETS.add(Tiny())
    data = tmp_path / "blob.bin"
    data.write_bytes(np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes())
    yield data
    DATASETS.remove("tiny")


def config(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "tiny",
        "data": data,
        "model": {"layers": [{"Dense": {"units": 2, "activation": "softmax"}}]},
        "loss": "sparse_categorical_crossentropy",
        "training": {"epochs": 1, "batch_size": 16},
    }


def test_a_new_dataset_is_one_source(tiny, tmp_path):
    cfg = api.as_config(config({"dataset": "tiny", "path": str(tiny), "width": 5}))
    data = cfg.resolved["data"]
    assert data["width"] == 5 and "samples" not in data and "task" not in data  # others' keys are not its own
    assert dataset_input_shape(data) == (5,)
    with pytest.raises(ConfigError, match="'width' only applies to the tiny dataset"):
        api.as_config(config({"dataset": "synthetic", "width": 5}))
    with pytest.raises(ConfigError, match="must be positive"):
        api.as_config(config({"dataset": "tiny", "path": str(tiny), "width": 0}))
    with pytest.raises(ConfigError, match="tiny dataset needs data.path"):
        api.as_config(config({"dataset": "tiny"}))
    with pytest.raises(ConfigError, match="'path' only applies to the fashion_mnist, cifar10, npz, csv and tiny"):
        api.as_config(config({"dataset": "synthetic", "path": "x"}))
    # Trained end to end; the manifest hashes the files the source read.
    result = api.train(cfg, runs_dir=tmp_path / "runs")
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["dataset"]["files"] == {str(tiny.resolve()): hashlib.sha256(tiny.read_bytes()).hexdigest()}
    # The CLI lists it in its place, and the JSON Schema knows its keys.
    listed = json.loads(CliRunner().invoke(app, ["data", "list", "--json", "--path", str(tiny)]).output)
    assert [row["name"] for row in listed] == ["fashion_mnist", "cifar10", "npz", "csv", "tiny", "synthetic"]
    assert listed[4]["found"] == str(tiny) and listed[4]["size"] == 400
    schema = api.json_schema()["properties"]["data"]["properties"]
    assert "tiny" in schema["dataset"]["enum"] and schema["width"]["exclusiveMinimum"] == 0


def test_dataset_files_are_what_was_read(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((10, 3), np.float32), y_train=np.zeros(10, np.int64))
    assert load_dataset({"dataset": "npz", "path": str(path), "task": "classification"}, 0).files == [path]
    table = tmp_path / "t.csv"
    table.write_text("a,b,y\n1,2,0\n3,4,1\n")
    csv_cfg = {"dataset": "csv", "path": str(table), "target": "y", "task": "classification"}
    assert load_dataset(csv_cfg, 0).files == [table]
    synthetic = api.as_config(config({"dataset": "synthetic", "samples": 20, "features": 3})).resolved["data"]
    assert load_dataset(synthetic, 0).files == []


def test_what_is_known_without_loading():
    assert known_targets({"dataset": "fashion_mnist"}).classes == 10
    assert known_targets({"dataset": "synthetic", "task": "regression", "classes": 3}).classes is None
    assert known_targets({"dataset": "npz", "path": "x.npz", "task": "classification"}) is None
    assert dataset_input_shape({"dataset": "cifar10"}) == (32, 32, 3)
    with pytest.raises(DataError, match="unknown dataset 'cifar100'. did you mean 'cifar10'"):
        DATASETS.get("cifar100")


def test_a_key_two_datasets_share_must_agree():
    class Clash(Source):
        name = "clash"
        description = "declares data.task with another default"
        keys: ClassVar[dict[str, Key]] = {"task": Key(TASK.types, "regression", TASK.bounds, "x")}

    with pytest.raises(TypeError, match="data.task"):
        DATASETS.add(Clash())
    assert "clash" not in DATASETS.names()


def test_config_imports_no_data():
    code = "import sys, dlrun.config; print(sorted(m for m in sys.modules if m.startswith('dlrun.data')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("package", ["config", "runs", "cli", "api"])
def test_no_layer_above_the_data_names_a_dataset(package):
    """Datasets are chosen by the registry alone: no string in these packages is a dataset's name."""
    names = set(DATASETS.names())
    found = []
    for path in sorted((DLRUN / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert found == []
