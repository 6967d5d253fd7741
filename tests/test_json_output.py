"""RFC 8259 JSON everywhere: non-finite values are null, and every reader takes null back as NaN."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from dlrun import jsonio
from dlrun.cli import app
from dlrun.errors import CheckpointError
from dlrun.runs.folder import read_history

runner = CliRunner()


def _strict(text: str):
    """Parse as a strict reader (jq, JavaScript) does: NaN/Infinity are not JSON."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_dumps_writes_null_for_non_finite_values():
    value = {"loss": [0.5, math.nan, math.inf], "best": {"val": -math.inf}, "n": 3}
    assert _strict(jsonio.dumps(value)) == {"loss": [0.5, None, None], "best": {"val": None}, "n": 3}
    import numpy as np

    assert _strict(jsonio.dumps({"x": np.float32("nan"), "y": np.float64(2.0)})) == {"x": None, "y": 2.0}


def _run_folder(tmp_path, history):
    run = tmp_path / "runs" / "r" / "20260101-000000"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "r", "training": {"epochs": 2}}))
    (run / "history.json").write_text(history if isinstance(history, str) else json.dumps(history))
    return run


def test_readers_take_null_as_nan(tmp_path):
    run = _run_folder(tmp_path, {"loss": [1.0, None], "val_loss": [0.9, None], "val_accuracy": [0.5, None]})
    history = read_history(run)
    assert history["loss"][0] == 1.0 and math.isnan(history["loss"][1])
    res = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--json"])
    assert res.exit_code == 0, res.output
    assert _strict(res.output)[0]["best_val"] == ["val_accuracy", 0.5]
    other = _run_folder(tmp_path / "b", {"loss": [1.0, 0.8], "val_loss": [0.9, 0.7], "val_accuracy": [0.5, 0.6]})
    res = runner.invoke(app, ["compare", str(run), str(other)])
    assert res.exit_code == 0, res.output
    assert "nan | 0.8000" in res.output


@pytest.mark.parametrize("text", ['["loss", 1]', '{"loss": ["a", "b"]}', '{"loss": 1.0}', "{not json"])
def test_a_damaged_history_is_a_clear_error(tmp_path, text):
    run = _run_folder(tmp_path, text)
    with pytest.raises(CheckpointError, match="history"):
        read_history(run)
    for command in (["compare", str(run), str(run)], ["plot", str(run)]):
        res = runner.invoke(app, command)
        assert res.exit_code == 1 and "history.json" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["runs", str(tmp_path / "runs")])
    assert res.exit_code == 0  # listed all the same


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_diverging_run_writes_strict_json_that_every_command_reads(tmp_path):
    from dlrun import api

    cfg = {
        "name": "diverge",
        "data": {"dataset": "synthetic", "samples": 200, "features": 8, "task": "regression", "validation_split": 0.25},
        "model": {"layers": [{"Dense": {"units": 1}}]},
        "loss": "mse",
        "optimizer": {"type": "sgd", "learning_rate": 1.0e30},
        "metrics": ["mae"],
        "training": {"epochs": 2},
    }
    result = api.train(cfg, runs_dir=tmp_path / "runs")
    assert not all(math.isfinite(v) for v in result.history["loss"])
    for name in ("history.json", "metrics.json", "manifest.json"):
        _strict((result.run_dir / name).read_text())
    assert None in _strict((result.run_dir / "history.json").read_text())["loss"]
    res = runner.invoke(app, ["runs", str(tmp_path / "runs"), "--json"])
    assert res.exit_code == 0, res.output
    _strict(res.output)
    assert runner.invoke(app, ["compare", str(result.run_dir), str(result.run_dir)]).exit_code == 0
    resumed = api.resume(result.run_dir)  # finished: completes from last.npz and history.json again
    assert len(resumed.history["loss"]) == 2
