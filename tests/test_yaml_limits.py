"""Configs are bounded: alias bombs, deep nesting, huge files and FIFOs are refused with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from dlrun.config.loader import MAX_DEPTH, MAX_NODES, load_yaml_file, load_yaml_text
from dlrun.errors import ConfigError


def _bomb(levels: int) -> str:
    lines = ["name: bomb", "l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    lines.append(f"seed: [{', '.join([f'*l{levels - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_its_line_quickly():
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than") as err:
        load_yaml_text(_bomb(9), "bomb.yaml")
    assert time.perf_counter() - start < 5
    assert err.value.file == "bomb.yaml" and err.value.line is not None and err.value.line <= 10


def test_aliases_that_stay_small_are_accepted():
    tree = load_yaml_text(_bomb(3), "ok.yaml")  # 9**4 = 6,561 values
    assert len(tree["seed"]) == 9


def test_deep_nesting_is_refused_before_it_can_recurse():
    text = "seed: " + "[" * 500 + "]" * 500 + "\n"
    with pytest.raises(ConfigError, match=f"deeper than {MAX_DEPTH}"):
        load_yaml_text(text, "deep.yaml")
    load_yaml_text("seed: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n")


def test_node_limit_counts_plain_values_too():
    text = "metrics: [" + ", ".join(["accuracy"] * (MAX_NODES + 1)) + "]\n"
    with pytest.raises(ConfigError, match="expands to more than"):
        load_yaml_text(text)


def test_huge_and_special_files_are_refused_without_reading_them(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match="configs are limited to"):
        load_yaml_file(big)
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_yaml_file(fifo)  # would block forever if it were opened


def test_cli_exit_2_short_message_no_traceback(tmp_path):
    bad = tmp_path / "bomb.yaml"
    bad.write_text(_bomb(9))
    proc = subprocess.run(
        [sys.executable, "-m", "dlrun", "validate", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "expands to more than" in proc.stderr
    assert len(proc.stderr) < 2000
    deep = tmp_path / "deep.yaml"
    deep.write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dlrun", "validate", str(deep)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "deeper than" in proc.stderr
    assert max(len(line) for line in proc.stderr.splitlines()) < 200  # the snippet is a window
