"""The benchmarks keep working: benchmarks/epoch.py in its smoke mode (no timing claims)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlrun.data.datasets import fashion_mnist

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(fashion_mnist.find(None)[0] is None, reason="real Fashion-MNIST files not installed")
def test_epoch_benchmark_smoke(tmp_path):
    out = tmp_path / "epoch.json"
    missing = str(tmp_path / "no-such-python")  # the other frameworks: skipped with a note
    cmd = [sys.executable, str(ROOT / "benchmarks/epoch.py"), "--smoke", "--models", "mlp32", "cnn128"]
    cmd += ["--torch-python", missing, "--keras-python", missing, "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    for mode in ("idle", "busy"):
        assert set(results[mode]) == {"mlp32", "cnn128"}
        assert all(isinstance(results[mode][m]["dlrun"], float) for m in ("mlp32", "cnn128"))
    parts = results["breakdown"]["cnn128"]["parts"]
    for part in ("forward", "backward", "optimizer", "input pipeline", "validation", "history/checkpoint writes"):
        assert parts[part] >= 0
    assert results["breakdown"]["cnn128"]["epoch"] > 0
    assert any("torch skipped" in note for note in results["notes"])
    assert "Beside one busy process" in proc.stdout and "step loop" in proc.stdout
