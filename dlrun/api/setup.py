"""Config -> everything it describes, built and checked before any data is touched; and the
commands that need nothing more: summary, graph, validate."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlrun.config.loader import from_plain
from dlrun.config.overrides import apply_overrides
from dlrun.config.schema import Config, load_config, parse_config
from dlrun.data.dataset import check_data_files, dataset_input_shape, known_targets
from dlrun.engine.backend import Backend, get_backend
from dlrun.errors import CheckpointError, ConfigError, UsageError
from dlrun.graph import summary as summaries
from dlrun.graph.builder import build_model
from dlrun.graph.model import Model
from dlrun.interop.weights_file import load_initial_weights
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.training.setup import make_callbacks, make_loss, make_metrics, make_optimizer
from dlrun.training.targets import check_input_shape, check_targets


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
    callbacks: list[Any] = field(default_factory=list)


def as_config(source: str | Path | Config | dict[str, Any], overrides: list[str] | None = None) -> Config:
    """A validated Config from a file path (with `--set` overrides), a plain dict, or a Config."""
    if isinstance(source, Config):
        return source
    if isinstance(source, dict):
        return parse_config(apply_overrides(from_plain(copy.deepcopy(source)), overrides or []), None)
    return load_config(source, overrides)


def prepare(
    source: str | Path | Config | dict[str, Any], *, device: str | None = None, overrides: list[str] | None = None
) -> Setup:
    """Parse and validate a config and build the model, loss, optimizer and metrics (no data).

    The one place the resolved config is completed: the builders return the parts they spell out
    in full (layers, loss, optimizer, callbacks) and they are put in here. Only the standardisation
    statistics, which loading the data reveals, are added later (api/training.py).
    """
    cfg = as_config(source, overrides)
    backend, note = get_backend(device or cfg.resolved["device"])
    shape = dataset_input_shape(cfg.resolved["data"], needed=not cfg.resolved["model"]["input_shape"])
    model, model_part = build_model(cfg, shape, backend=backend)
    loss, loss_part = make_loss(cfg)
    optimizer, optimizer_part = make_optimizer(cfg)
    metrics = make_metrics(cfg, loss)
    callbacks, callbacks_part = make_callbacks(cfg, metrics, optimizer)
    # In place and in the parsed key order: config.yaml lists the sections as the schema does.
    cfg.resolved.update(model=model_part, loss=loss_part, optimizer=optimizer_part, callbacks=callbacks_part)
    return Setup(cfg, backend, model, loss, optimizer, metrics, note, callbacks)


def summary(source: str | Path, overrides: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """(Keras-style text, JSON-able dict) for a config file or a checkpoint file; no data is read.

    Beyond Keras's table: the optimizer state size and the activation memory of one training batch.
    """
    cfg = _config_or_checkpoint_config(Path(source), overrides)
    setup = prepare(cfg, device="cpu")
    memory = summaries.memory_estimate(setup.model, setup.optimizer, cfg.resolved["training"]["batch_size"])
    text = summaries.summary_text(setup.model) + summaries.memory_text(memory, setup.optimizer.keras_name)
    return text, {**summaries.summary_dict(setup.model), "memory": memory}


def graph(source: str | Path, overrides: list[str] | None = None) -> str:
    """A Graphviz (dot) description of the model graph with shapes."""
    cfg = _config_or_checkpoint_config(Path(source), overrides)
    return summaries.graph_dot(prepare(cfg, device="cpu").model, cfg.name)


def _config_or_checkpoint_config(path: Path, overrides: list[str] | None) -> Config:
    if path.suffix == ".npz":
        if overrides:
            raise UsageError("--set applies to YAML configs, not to checkpoints", hint="pass the run's config.yaml")
        return config_from_checkpoint(path, ckpt_mod.load(path))
    return load_config(path, overrides)


def config_from_checkpoint(path: Path, ckpt: ckpt_mod.Checkpoint) -> Config:
    try:
        return parse_config(from_plain(copy.deepcopy(ckpt.config)), str(path))
    except ConfigError as exc:
        raise CheckpointError(f"{path} holds a config this dlrun cannot use: {exc.message}") from None


def validate(source: str | Path, overrides: list[str] | None = None) -> Setup:
    """Every check `train` runs that needs no data loaded: the config (run name, callbacks and the
    paths they write), the model, and where the dataset tells without loading (fashion_mnist and
    cifar10 always, synthetic from its keys, npz and csv from the file's header) that its sample
    shape is the model's input shape and that output, loss and targets agree; and that `model.weights` fits the model."""
    setup = prepare(source, device="cpu", overrides=overrides)
    cfg = setup.config
    data = cfg.resolved["data"]
    check_data_files(data)  # a named path that lacks the files, a FIFO, an npz's headers
    shape = dataset_input_shape(data)
    if shape is not None:
        check_input_shape(cfg, setup.model, data["dataset"], shape)
    targets = known_targets(data)
    if targets is not None:
        check_targets(cfg, setup.model, setup.loss, data["dataset"], targets)
    if cfg.resolved["model"].get("weights"):  # the file exists and fits the model
        setup.model.allocate()
        load_initial_weights(cfg, setup.model)
    return setup
