"""Every broken config in tests/broken_configs/ must give one clean error: exit code 2, the right
YAML line, the expected words, no traceback, and no run folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlrun.cli import app

CORPUS = sorted((Path(__file__).parent / "broken_configs").glob("*.yaml"))
runner = CliRunner()


def expectations(path: Path) -> tuple[int | None, str]:
    text = path.read_text()
    line = re.search(r"^# expect-line: (\S+)$", text, re.M).group(1)
    expect = re.search(r"^# expect: (.+)$", text, re.M).group(1)
    return (None if line == "none" else int(line)), expect


def test_corpus_is_large():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_broken_config_fails_cleanly(path, tmp_path):
    line, expect = expectations(path)
    runs = tmp_path / "runs"
    res = runner.invoke(app, ["train", str(path), "--runs-dir", str(runs)])
    out = res.output
    assert res.exit_code == 2, out
    assert ("Traceback" not in out and res.exception is None) or isinstance(res.exception, SystemExit)
    assert expect in out, out
    if line is not None:
        assert f"{path}:{line}:" in out, out
    else:
        assert f"{path}:" in out, out
    assert not runs.exists()
    # `validate` agrees with `train`.
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 2


def test_one_broken_config_as_a_real_process(tmp_path):
    path = CORPUS[0]
    proc = subprocess.run(
        [sys.executable, "-m", "dlrun", "train", str(path), "--runs-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) <= 3
