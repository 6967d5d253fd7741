"""Paths a config names are inside the run folder and off the run's own files (dlrun/runs/paths.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dlrun import api
from dlrun.errors import ArgumentError, ConfigError
from dlrun.runs.paths import run_path, run_path_pattern
from dlrun.training.callbacks_builtin import CSVLogger, ModelCheckpoint

CONFIG = """\
name: paths
data: {dataset: synthetic, samples: 64, features: 6, classes: 3, validation_split: 0.25}
model:
  layers:
    - Dense: {units: 3}
loss: {type: sparse_categorical_crossentropy, from_logits: true}
training: {epochs: 1, batch_size: 16}
callbacks:
"""


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("/some/file", "not an absolute path"),
        ("~/x.csv", "not an absolute path"),
        ("../../../../../tmp/x.csv", "`..` is not allowed"),
        ("logs/../../x.csv", "`..` is not allowed"),
        ("history.json", "run's own file history.json"),
        ("Metrics.JSON", "run's own file Metrics.JSON"),
        ("config.yaml", "run's own"),
        ("summary.txt", "run's own"),
        ("manifest.json", "run's own"),
        ("history.png", "run's own"),
        ("checkpoints", "run's own folder checkpoints"),
        ("checkpoints/", "run's own folder checkpoints"),
        ("checkpoints/last.npz", "run's own file checkpoints/last.npz"),
        ("./checkpoints/./best.npz", "run's own file checkpoints/best.npz"),
        ("history.json/x.csv", "run's own file history.json"),
        (".lock", "hidden"),
        ("logs/.x.csv.123.tmp", "hidden"),
        ("a\x00b.csv", "control characters"),
        ("..\\x.csv", "not \\"),
        ("", "non-empty"),
        ("x" * 300 + ".csv", "over 255 bytes"),
    ],
)
def test_paths_that_leave_the_run_folder_or_hit_its_files_are_refused(name, needle):
    with pytest.raises(ArgumentError, match="Received: filename=") as err:
        run_path(name, "filename")
    assert needle in str(err.value) and err.value.name == "filename" and err.value.hint


@pytest.mark.parametrize(
    ("name", "resolved"),
    [("history.csv", "history.csv"), ("logs/./a.csv", "logs/a.csv"), ("checkpoints/mine.csv", "checkpoints/mine.csv")],
)
def test_paths_inside_the_run_folder_are_normalised(name, resolved):
    assert run_path(name, "filename") == resolved


@pytest.mark.parametrize(
    "pattern",
    [
        "{epoch.__class__.__mro__}.npz",
        "{epoch[0]}.npz",
        "{epoch!r}.npz",
        "{epoch!s:>5}.npz",
        "{epoch:/>9}.npz",
        "{epoch:.<9}.npz",
        "{epoch:c}.npz",
        "{}.npz",
        "{0}.npz",
        "{epoch:{width}}.npz",
    ],
)
def test_pattern_fields_are_plain_names_with_plain_formats(pattern):
    with pytest.raises(ArgumentError, match="not a plain name and format"):
        run_path_pattern(pattern, "filepath")
    with pytest.raises(ValueError, match="not a plain name and format"):
        ModelCheckpoint(pattern)


def test_documented_patterns_are_accepted():
    for pattern in (
        "checkpoints/epoch{epoch:03d}-{val_loss:.4f}.npz",
        "b/{epoch}-{batch}-{loss:+.2e}.npz",
        "{epoch:,}.npz",
    ):
        assert run_path_pattern(pattern, "filepath")[0] == pattern
    assert run_path_pattern("ck/e{epoch:02d}-{val_loss:.2f}.npz", "filepath")[1] == ["epoch", "val_loss"]


def test_patterns_that_leave_the_run_folder_quote_the_pattern():
    with pytest.raises(ArgumentError, match=r"absolute path. Received: filepath='/tmp/x\{epoch\}.npz'"):
        ModelCheckpoint("/tmp/x{epoch}.npz")
    with pytest.raises(ArgumentError, match="`..`"):
        ModelCheckpoint("../{epoch}/x.npz")
    with pytest.raises(ArgumentError, match="run's own file metrics.json"):
        ModelCheckpoint("metrics.json/{epoch}.npz")
    with pytest.raises(ValueError, match="not an absolute path"):
        CSVLogger("/etc/passwd")


ENTRIES = {
    "absolute": ("- CSVLogger: {filename: /some/file}", "not an absolute path"),
    "climbs": ("- CSVLogger: {filename: ../../../../../tmp/x.csv}", "`..`"),
    "checkpoint climbs": ("- ModelCheckpoint: {filepath: '../../x{epoch}.npz'}", "`..`"),
    "checkpoint absolute": ("- ModelCheckpoint: {filepath: /tmp/x.npz}", "absolute"),
    "history": ("- CSVLogger: {filename: history.json}", "run's own file history.json"),
    "last": ("- CSVLogger: {filename: checkpoints/last.npz}", "run's own file checkpoints/last.npz"),
    "checkpoints folder": ("- CSVLogger: {filename: checkpoints}", "run's own folder checkpoints"),
    "checkpoint best": ("- ModelCheckpoint: {filepath: checkpoints/best.npz}", "run's own checkpoints"),
    "attribute": ("- ModelCheckpoint: {filepath: '{epoch.__class__.__mro__}.npz'}", "not a plain name"),
    "two loggers": ("- CSVLogger: {filename: a.csv}\n  - CSVLogger: {filename: a.csv}", "clashes with"),
    "file as folder": (
        "- CSVLogger: {filename: ck}\n  - ModelCheckpoint: {filepath: 'ck/{epoch}.npz'}",
        "clashes with",
    ),
}


@pytest.mark.parametrize(("entry", "needle"), ENTRIES.values(), ids=ENTRIES.keys())
def test_validate_refuses_them_at_the_arguments_line(tmp_path, entry, needle):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + "  " + entry + "\n")
    with pytest.raises(ConfigError) as err:
        api.validate(path)
    assert needle in str(err.value) and err.value.line == CONFIG.count("\n") + 1 + entry.count("\n")
    assert err.value.hint or "choose another name" in err.value.message


def test_dlrun_validate_exits_2_for_a_path_train_would_refuse(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + "  - CSVLogger: {filename: checkpoints}\n")
    proc = subprocess.run([sys.executable, "-m", "dlrun", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "checkpoints" in proc.stderr + proc.stdout


def test_a_refused_path_is_never_written(tmp_path):
    victim = tmp_path / "victim.csv"
    victim.write_text("precious\n")
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + f"  - CSVLogger: {{filename: {victim}}}\n")
    with pytest.raises(ConfigError):
        api.train(path, runs_dir=tmp_path / "runs")
    assert victim.read_text() == "precious\n"


def test_paths_inside_the_run_folder_are_written_there(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        CONFIG
        + "  - CSVLogger: {filename: logs/h.csv}\n  - ModelCheckpoint: {filepath: 'checkpoints/e{epoch:02d}.npz'}\n"
    )
    result = api.train(path, runs_dir=tmp_path / "runs")
    assert (result.run_dir / "logs" / "h.csv").is_file() and (result.run_dir / "checkpoints" / "e01.npz").is_file()


@pytest.mark.parametrize("pattern", ["x{epoch:09999d}.npz", "x{epoch:0300d}.npz", "x{val_loss:0300.4f}.npz"])
def test_a_pattern_too_long_once_filled_in_is_refused_before_training(pattern):
    """`{epoch:09999d}` passed validate and failed after the first epoch: it is checked filled in."""
    with pytest.raises(ArgumentError, match="characters long|over 255 bytes"):
        run_path_pattern(pattern, "filepath")
