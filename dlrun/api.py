"""The library API the CLI is a thin shell over: load, summarize, train, evaluate.

Nothing here prints; progress goes to a listener the caller provides, errors are DlrunError.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlrun.config.loader import from_plain
from dlrun.config.overrides import apply_overrides
from dlrun.config.schema import Config, load_config, parse_config
from dlrun.data.dataset import Dataset, dataset_input_shape, load_dataset
from dlrun.data.sources import ProgressFn
from dlrun.engine.backend import CPU, Backend, get_backend
from dlrun.engine.random import streams
from dlrun.errors import CheckpointError, ConfigError
from dlrun.graph.builder import build_model
from dlrun.graph.model import Model
from dlrun.graph.summary import summary_dict, summary_text
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.runs.folder import RunRecorder, new_run_dir, write_config, write_metrics
from dlrun.runs.atomic import write_text
from dlrun.training.loop import SilentListener, Trainer
from dlrun.training.setup import make_loss, make_metrics, make_optimizer


@dataclass
class Setup:
    """Everything a config describes, built and checked, before any data is touched."""

    config: Config
    backend: Backend
    model: Model
    loss: Any
    optimizer: Any
    metrics: list[Any]
    device_note: str | None = None


def as_config(source: str | Path | Config | dict[str, Any], overrides: list[str] | None = None) -> Config:
    """A validated Config from a file path (with `--set` overrides), a plain dict, or a Config."""
    if isinstance(source, Config):
        return source
    if isinstance(source, dict):
        return parse_config(apply_overrides(from_plain(copy.deepcopy(source)), overrides or []), None)
    return load_config(source, overrides)


def prepare(source: str | Path | Config | dict[str, Any], *, device: str | None = None,
            overrides: list[str] | None = None) -> Setup:
    """Parse and validate a config and build the model, loss, optimizer and metrics (no data)."""
    cfg = as_config(source, overrides)
    backend, note = get_backend(device or cfg.resolved["device"])
    model = build_model(cfg, dataset_input_shape(cfg.resolved["data"]), backend=backend)
    loss = make_loss(cfg)
    optimizer = make_optimizer(cfg)
    metrics = make_metrics(cfg, loss)
    return Setup(cfg, backend, model, loss, optimizer, metrics, note)


def summary(source: str | Path) -> tuple[str, dict[str, Any]]:
    """(Keras-style text, JSON-able dict) for a config file or a checkpoint file."""
    path = Path(source)
    if path.suffix == ".npz":
        cfg = config_from_checkpoint(path, ckpt_mod.load(path))
    else:
        cfg = load_config(path)
    model = build_model(cfg, dataset_input_shape(cfg.resolved["data"]), backend=CPU)
    return summary_text(model), summary_dict(model)


def config_from_checkpoint(path: Path, ckpt: ckpt_mod.Checkpoint) -> Config:
    try:
        return parse_config(from_plain(copy.deepcopy(ckpt.config)), str(path))
    except ConfigError as exc:
        raise CheckpointError(f"{path} holds a config this dlrun cannot use: {exc.message}") from None


@dataclass
class RunResult:
    run_dir: Path
    history: dict[str, list[float]]
    metrics: dict[str, float]
    best_epoch: int | None
    device: str


def train(source: str | Path | Config | dict[str, Any], *, runs_dir: str | Path = "runs", listener: Any = None,
          device: str | None = None, download_progress: ProgressFn | None = None,
          overrides: list[str] | None = None) -> RunResult:
    """Train a config end to end and write its run folder; returns where and what it reached."""
    listener = listener or SilentListener()
    setup = prepare(source, device=device, overrides=overrides)
    cfg = setup.config
    if setup.device_note:
        listener.message(setup.device_note)
    rngs = streams(cfg.resolved["seed"])
    # Data errors surface here, before any run folder exists.
    data = load_dataset(cfg.resolved["data"], cfg.resolved["seed"], split_rng=rngs.split, progress=download_progress)
    _check_data_fits(cfg, setup.model, data)
    tcfg = cfg.resolved["training"]
    trainer = Trainer(setup.model, setup.loss, setup.optimizer, setup.metrics, data, batch_size=tcfg["batch_size"],
                      epochs=tcfg["epochs"], shuffle=tcfg["shuffle"], shuffle_rng=rngs.shuffle, listener=listener)
    run_dir = new_run_dir(runs_dir, cfg.name)
    resolved = cfg.resolved
    write_config(run_dir, resolved)
    write_text(run_dir / "summary.txt", summary_text(setup.model, cfg.name))
    recorder = RunRecorder(run_dir, resolved, "val_loss" if data.val is not None else "loss")
    trainer.callbacks.append(recorder)
    history = trainer.fit()
    metrics: dict[str, Any] = {}
    if data.val is not None:
        metrics["val"] = trainer.evaluate(data.val)
    if data.test is not None:
        metrics["test"] = trainer.evaluate(data.test)
    metrics["best_epoch"] = recorder.best_epoch
    metrics["epochs"] = trainer.epoch
    write_metrics(run_dir, metrics)
    return RunResult(run_dir, history, metrics, recorder.best_epoch, setup.backend.describe())


def _check_data_fits(cfg: Config, model: Model, data: Dataset) -> None:
    expected = next(iter(model.inputs.values()))
    if tuple(expected) != tuple(data.input_shape):
        raise cfg.error(f"the model expects inputs of shape {list(expected)} but {data.name} provides "
                        f"{list(data.input_shape)}", cfg.raw.get("model"), "input_shape", "model.input_shape",
                        hint="remove model.input_shape to take the dataset's, or add a Reshape layer")
    classes = model.output_node.output_shape[-1]
    if data.num_classes and data.num_classes > 1 and model.output_node.output_shape and classes not in (1, data.num_classes):
        raise cfg.error(f"the model outputs {classes} values per sample but {data.name} has "
                        f"{data.num_classes} classes", cfg.raw.get("model"), "layers", "model.layers",
                        hint=f"make the last layer Dense with units: {data.num_classes}")


def evaluate(checkpoint: str | Path, *, split: str = "test", device: str | None = "cpu",
             data_path: str | None = None) -> dict[str, float]:
    """Load a checkpoint alone, rebuild its model, and score it on a split of its dataset."""
    path = Path(checkpoint)
    ckpt = ckpt_mod.load(path)
    cfg = config_from_checkpoint(path, ckpt)
    if data_path is not None:
        cfg.resolved["data"]["path"] = data_path
    setup = prepare(cfg, device=device)
    try:
        setup.model.set_weights(ckpt.weights)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    rngs = streams(cfg.resolved["seed"])
    data = load_dataset(cfg.resolved["data"], cfg.resolved["seed"], split_rng=rngs.split)
    trainer = Trainer(setup.model, setup.loss, setup.optimizer, setup.metrics, data)
    return trainer.evaluate(data.split(split))


__all__ = ["prepare", "summary", "train", "evaluate", "RunResult", "Setup"]
