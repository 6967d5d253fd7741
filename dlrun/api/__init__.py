"""The library API the CLI is a thin shell over: load, summarize, validate, train, resume, evaluate,
predict, export, and read run folders back.

Nothing here prints; progress goes to a listener the caller provides, errors are DlrunError.
"""

from __future__ import annotations

from dlrun.api.datasets import dataset, datasets, fetch_dataset
from dlrun.api.exporting import ExportResult, export
from dlrun.api.importing import ImportResult, import_model
from dlrun.api.inference import evaluate, evaluate_report, predict
from dlrun.api.runfolders import load_run, plot, runs, tracking_hints
from dlrun.api.schema import json_schema
from dlrun.api.setup import Setup, as_config, config_from_checkpoint, graph, prepare, summary, validate
from dlrun.api.sweep import SweepListener, SweepResult, check_sweep, resume_sweep, sweep, sweep_schema
from dlrun.api.training import RunResult, resume, train
from dlrun.engine.metrics import direction
from dlrun.runs.compare import config_diff, yaml_text
from dlrun.training.loop import SilentListener

__all__ = [
    "ExportResult",
    "ImportResult",
    "RunResult",
    "Setup",
    "SilentListener",
    "SweepListener",
    "SweepResult",
    "as_config",
    "check_sweep",
    "config_diff",
    "config_from_checkpoint",
    "dataset",
    "datasets",
    "direction",
    "evaluate",
    "evaluate_report",
    "export",
    "fetch_dataset",
    "graph",
    "import_model",
    "json_schema",
    "load_run",
    "plot",
    "predict",
    "prepare",
    "resume",
    "resume_sweep",
    "runs",
    "summary",
    "sweep",
    "sweep_schema",
    "tracking_hints",
    "train",
    "validate",
    "yaml_text",
]
