"""The library API the CLI is a thin shell over: load, summarize, train, resume, evaluate.

Nothing here prints; progress goes to a listener the caller provides, errors are DlrunError.
"""
from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlrun.config.loader import from_plain
from dlrun.config.overrides import apply_overrides
from dlrun.config.schema import Config, load_config, parse_config
from dlrun.data.dataset import (Dataset, Targets, dataset_input_shape, input_normalization, known_class_names,
                                known_targets, load_dataset)
from dlrun.data.sources import ProgressFn
from dlrun.engine.backend import Backend, get_backend
from dlrun.engine.losses import BinaryCrossentropy, CategoricalCrossentropy, Loss, SparseCategoricalCrossentropy
from dlrun.engine.random import streams
from dlrun.errors import CheckpointError, ConfigError, DlrunError, TrainingInterrupted
from dlrun.graph.builder import build_model
from dlrun.graph.model import Model
from dlrun import reports
from dlrun.graph.summary import summary_dict, summary_text
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.runs import manifest as manifest_mod
from dlrun.runs.folder import RunRecorder, new_run_dir, write_config, write_metrics
from dlrun.runs.atomic import remove_temporaries, write_json, write_text
from dlrun.training.interrupt import graceful_interrupts
from dlrun.training.loop import SilentListener, Trainer
from dlrun.training.setup import make_callbacks, make_loss, make_metrics, make_optimizer


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


def prepare(source: str | Path | Config | dict[str, Any], *, device: str | None = None,
            overrides: list[str] | None = None) -> Setup:
    """Parse and validate a config and build the model, loss, optimizer and metrics (no data)."""
    cfg = as_config(source, overrides)
    backend, note = get_backend(device or cfg.resolved["device"])
    shape = dataset_input_shape(cfg.resolved["data"], needed=not cfg.resolved["model"]["input_shape"])
    model = build_model(cfg, shape, backend=backend)
    loss = make_loss(cfg)
    optimizer = make_optimizer(cfg)
    metrics = make_metrics(cfg, loss)
    callbacks = make_callbacks(cfg, metrics, optimizer)
    return Setup(cfg, backend, model, loss, optimizer, metrics, note, callbacks)


def summary(source: str | Path, overrides: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """(Keras-style text, JSON-able dict) for a config file or a checkpoint file; no data is read.

    Beyond Keras's table: the optimizer state size and the activation memory of one training batch.
    """
    cfg = _config_or_checkpoint_config(Path(source), overrides)
    setup = prepare(cfg, device="cpu")
    memory = reports.memory_estimate(setup.model, setup.optimizer, cfg.resolved["training"]["batch_size"])
    text = summary_text(setup.model) + reports.memory_text(memory, setup.optimizer.keras_name)
    return text, {**summary_dict(setup.model), "memory": memory}


def graph(source: str | Path, overrides: list[str] | None = None) -> str:
    """A Graphviz (dot) description of the model graph with shapes."""
    cfg = _config_or_checkpoint_config(Path(source), overrides)
    return reports.graph_dot(prepare(cfg, device="cpu").model, cfg.name)


def _config_or_checkpoint_config(path: Path, overrides: list[str] | None) -> Config:
    if path.suffix == ".npz":
        return config_from_checkpoint(path, ckpt_mod.load(path))
    return load_config(path, overrides)


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
    #: The model's final weights (host copies), after callbacks such as EarlyStopping's restore.
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def train(source: str | Path | Config | dict[str, Any], *, runs_dir: str | Path = "runs", listener: Any = None,
          device: str | None = None, download_progress: ProgressFn | None = None,
          overrides: list[str] | None = None) -> RunResult:
    """Train a config end to end and write its run folder; returns where and what it reached.

    SIGINT/SIGTERM stop after the current batch with a resumable checkpoint: TrainingInterrupted.
    """
    listener = listener or SilentListener()
    setup = prepare(source, device=device, overrides=overrides)
    cfg = setup.config
    if setup.device_note:
        listener.message(setup.device_note)
    # Data errors surface here, before any run folder exists.
    data, trainer = _make_trainer(setup, listener, download_progress)
    run_dir = new_run_dir(runs_dir, cfg.name)
    resolved = cfg.resolved
    try:
        write_json(run_dir / "history.json", {})  # a run folder always holds a readable history
        write_config(run_dir, resolved)
        write_text(run_dir / "summary.txt", summary_text(setup.model, cfg.name))
        manifest_mod.write(run_dir, manifest_mod.build(
            seed=resolved["seed"], backend=setup.backend, device=setup.backend.describe(), data_cfg=resolved["data"],
            data=data, config_file=cfg.file, overrides=overrides))
    except BaseException:
        # Nothing trained yet: leave no folder that looks like a run.
        shutil.rmtree(run_dir, ignore_errors=True)
        try:
            run_dir.parent.rmdir()  # the config's folder, unless earlier runs are in it
        except OSError:
            pass
        raise
    return _fit_and_finish(setup, data, trainer, run_dir)


def resume(run_dir: str | Path, *, listener: Any = None, device: str | None = None,
           download_progress: ProgressFn | None = None) -> RunResult:
    """Continue a run from `run_dir/checkpoints/last.npz` with the config saved in it, in the same
    folder. The result is bit-identical to a run that was never interrupted (same machine)."""
    listener = listener or SilentListener()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DlrunError(f"no run folder at {run_dir}", hint="pass a run folder such as runs/<name>/<timestamp>")
    path = run_dir / "checkpoints" / "last.npz"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no checkpoint to resume from ({path} is missing)",
                              hint="the run stopped before its first epoch ended: train it again from its config")
    ckpt = ckpt_mod.load(path)
    if not ckpt.resumable:
        raise CheckpointError(f"{path} holds weights only and cannot resume a run")
    setup = prepare(config_from_checkpoint(path, ckpt), device=device)
    if setup.device_note:
        listener.message(setup.device_note)
    data, trainer = _make_trainer(setup, listener, download_progress)
    try:
        trainer.restore(ckpt.weights, ckpt.optimizer, ckpt.meta)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} does not fit its own config: {exc}") from None
    for folder in (run_dir, run_dir / "checkpoints"):
        remove_temporaries(folder)  # left by writes that a kill cut short
    write_json(run_dir / "history.json", trainer.history)  # a kill may have left it one epoch behind
    partial = ckpt.meta.get("partial_epoch")
    manifest_mod.add_resume(run_dir, backend=setup.backend, device=setup.backend.describe(),
                            from_epoch=trainer.epoch, from_batch=partial["batch"] if partial else None)
    if trainer.epoch >= trainer.epochs or trainer.stop_training:
        listener.message(f"Resuming {run_dir}: training had finished after epoch {trainer.epoch}; "
                         "completing the run's results")
    else:
        where = f"epoch {trainer.epoch + 1} of {trainer.epochs}"
        if partial:
            where += f", batch {partial['batch'] + 1}"
        listener.message(f"Resuming {run_dir} at {where}")
    return _fit_and_finish(setup, data, trainer, run_dir)


def _make_trainer(setup: Setup, listener: Any, download_progress: ProgressFn | None) -> tuple[Dataset, Trainer]:
    """Load the data (seeded split) and build the Trainer with the config's callbacks."""
    cfg = setup.config
    rngs = streams(cfg.resolved["seed"])
    data = load_dataset(cfg.resolved["data"], cfg.resolved["seed"], split_rng=rngs.split, progress=download_progress)
    if data.statistics:  # standardisation: into config.yaml and every checkpoint, for evaluate/predict
        cfg.resolved["data"]["statistics"] = data.statistics
    _check_data_fits(cfg, setup.model, data)
    _check_targets(cfg, setup.model, setup.loss, data.name, data.targets)
    tcfg = cfg.resolved["training"]
    trainer = Trainer(setup.model, setup.loss, setup.optimizer, setup.metrics, data, batch_size=tcfg["batch_size"],
                      epochs=tcfg["epochs"], shuffle=tcfg["shuffle"], shuffle_rng=rngs.shuffle,
                      callbacks=list(setup.callbacks), listener=listener, config=cfg.resolved)
    return data, trainer


def _fit_and_finish(setup: Setup, data: Dataset, trainer: Trainer, run_dir: Path) -> RunResult:
    """Train (checkpointing every epoch into `run_dir`), then score and write metrics.json."""
    trainer.run_dir = run_dir
    recorder = RunRecorder(run_dir, setup.config.resolved, "val_loss" if data.val is not None else "loss")
    trainer.callbacks.append(recorder)  # last: its checkpoint holds every other callback's state
    try:
        with graceful_interrupts(trainer):
            history = trainer.fit()
    except TrainingInterrupted as exc:
        exc.message = (f"{exc.message}; the run's state after it is saved in "
                       f"{run_dir / 'checkpoints' / 'last.npz'}")
        exc.args = (exc.message,)
        exc.hint = f"resume with: dlrun train --resume {run_dir}"
        exc.run_dir = run_dir  # type: ignore[attr-defined]
        raise
    metrics: dict[str, Any] = {}
    if data.val is not None:
        metrics["val"] = trainer.evaluate(data.val)
    if data.test is not None:
        metrics["test"] = trainer.evaluate(data.test)
    metrics["best_epoch"] = recorder.best_epoch
    metrics["epochs"] = trainer.epoch
    write_metrics(run_dir, metrics)
    _plot_if_possible(run_dir, history)
    return RunResult(run_dir, history, metrics, recorder.best_epoch, setup.backend.describe(),
                     setup.model.get_weights())


def _plot_if_possible(run_dir: Path, history: dict[str, list[float]]) -> None:
    """history.png beside history.json when matplotlib is installed (an optional extra)."""
    import importlib.util

    if history and importlib.util.find_spec("matplotlib") is not None:
        reports.plot_history({run_dir.name: history}, run_dir / "history.png")


def _check_data_fits(cfg: Config, model: Model, data: Dataset) -> None:
    expected = next(iter(model.inputs.values()))
    if tuple(expected) != tuple(data.input_shape):
        raise cfg.error(f"the model expects inputs of shape {list(expected)} but {data.name} provides "
                        f"{list(data.input_shape)}", cfg.raw.get("model"), "input_shape", "model.input_shape",
                        hint="remove model.input_shape to take the dataset's, or add a Reshape layer")


def _check_targets(cfg: Config, model: Model, loss_fn: Loss, dataset: str, targets: Targets) -> None:
    """The model's output, the loss and the dataset's targets must agree before training starts
    (otherwise the first batch fails deep inside the loss with a shape error)."""
    loss = loss_fn.keras_name
    out = model.output_node.output_shape
    units = out[-1] if out else 1
    classes = targets.classes
    if classes and classes > 1 and units not in (1, classes):
        raise cfg.error(f"the model outputs {units} values per sample but {dataset} has {classes} classes",
                        cfg.raw.get("model"), "layers", "model.layers",
                        hint=f"make the last layer Dense with units: {classes}")
    categorical = isinstance(loss_fn, (CategoricalCrossentropy, SparseCategoricalCrossentropy))
    binary = isinstance(loss_fn, BinaryCrossentropy)
    problem = hint = None
    if categorical and classes is None:
        problem = f"{loss} needs class labels, but {dataset} holds regression targets"
        hint = "use loss: mean_squared_error (or set data.task: classification)"
    elif categorical and units < 2:
        problem = f"{loss} needs one output per class ({classes}), but the model outputs {units} value per sample"
        hint = (f"end the model with Dense: {{units: {classes}, activation: softmax}}, or use loss: "
                "binary_crossentropy for two classes with one sigmoid output")
    elif binary and classes is not None and classes > 2:
        problem = f"binary_crossentropy is for two classes (0 and 1), but {dataset} has {classes} classes"
        hint = "use loss: sparse_categorical_crossentropy"
    elif binary and classes is not None and units != 1:
        problem = f"binary_crossentropy with 0/1 labels needs one output per sample, but the model outputs {units}"
        hint = "end the model with Dense: {units: 1, activation: sigmoid}"
    elif not (categorical or binary) and classes is not None and units != 1:
        problem = (f"{loss} compares one output with each label, but the model outputs {units} values per "
                   f"sample and {dataset} holds class labels")
        hint = "for classes use loss: sparse_categorical_crossentropy"
    elif classes is None and targets.per_sample != units:
        problem = f"{dataset} has {targets.per_sample} targets per sample, but the model outputs {units}"
        hint = f"make the last layer Dense with units: {targets.per_sample}"
    if problem:
        raise cfg.error(problem, cfg.raw, "loss", "loss", hint=hint)


def validate(source: str | Path, overrides: list[str] | None = None) -> Setup:
    """Everything `train` checks before it trains that needs no data: the config, the model, and
    (for datasets whose targets are known without loading them) that output, loss and targets agree."""
    setup = prepare(source, device="cpu", overrides=overrides)
    targets = known_targets(setup.config.resolved["data"])
    if targets is not None:
        _check_targets(setup.config, setup.model, setup.loss, setup.config.resolved["data"]["dataset"], targets)
    return setup


def evaluate(checkpoint: str | Path, *, split: str = "test", device: str | None = "cpu",
             data_path: str | None = None) -> dict[str, float]:
    """Load a checkpoint alone, rebuild its model, and score it (loss and metrics) on a split of its dataset."""
    return evaluate_report(checkpoint, split=split, device=device, data_path=data_path, details=False)["scores"]


# -- reports ---------------------------------------------------------------------------------------
def _checkpoint_file(path: Path) -> Path:
    """A checkpoint file, or a run folder standing for its best checkpoint (else its last)."""
    if path.is_dir():
        for name in ("best.npz", "last.npz"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CheckpointError(f"{path} is a folder without checkpoints/best.npz or checkpoints/last.npz",
                              hint="pass a checkpoint file, or a run folder whose first epoch has ended")
    return path


def _load_for_inference(checkpoint: str | Path, device: str | None, data_path: str | None = None) -> tuple[Setup, Path]:
    path = _checkpoint_file(Path(checkpoint))
    ckpt = ckpt_mod.load(path)
    cfg = config_from_checkpoint(path, ckpt)
    if data_path is not None:
        cfg.resolved["data"]["path"] = data_path
    setup = prepare(cfg, device=device)
    try:
        setup.model.set_weights(ckpt.weights)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return setup, path


def _predict_batches(setup: Setup, x: Any, scale: float | None) -> np.ndarray:
    """Probabilities for host inputs `x`, in inference batches."""
    from dlrun.data.dataset import Batches, Split

    batches = Batches(Split(x, np.zeros(len(x), dtype=np.int64)), 1024, setup.backend, scale)
    outs = [setup.backend.to_host(setup.model.forward(xb, training=False)) for xb, _ in batches.epoch()]
    return np.concatenate(outs) if outs else np.zeros((0, *setup.model.output_node.output_shape), np.float32)


def evaluate_report(checkpoint: str | Path, *, split: str = "test", device: str | None = "cpu",
                    data_path: str | None = None, details: bool = True) -> dict[str, Any]:
    """Scores plus, for classifiers (when `details`), per-class accuracy and the confusion matrix."""
    setup, _ = _load_for_inference(checkpoint, device, data_path)
    cfg = setup.config
    data = load_dataset(cfg.resolved["data"], cfg.resolved["seed"], split_rng=streams(cfg.resolved["seed"]).split)
    part = data.split(split)
    trainer = Trainer(setup.model, setup.loss, setup.optimizer, setup.metrics, data)
    report: dict[str, Any] = {"split": split, "samples": len(part), "scores": trainer.evaluate(part)}
    classes = setup.model.output_node.output_shape[-1]
    if details and data.num_classes and setup.loss.accuracy_kind in ("sparse", "categorical") and classes > 1:
        probs = _predict_batches(setup, part.x, data.scale)
        matrix = reports.confusion_matrix(probs.argmax(axis=-1), part.y.reshape(-1), classes)
        names = data.class_names or [str(i) for i in range(classes)]
        report.update(class_names=names, confusion=matrix.tolist(),
                      per_class_accuracy=dict(zip(names, reports.per_class_accuracy(matrix))))
    return report


def load_inputs(path: str | Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, float | None]:
    """Inputs for `predict`: an .npz (array `x`, or its only array) or an image file (PNG/JPEG, needs Pillow).

    Images are converted to the model's channels and size-checked; uint8 data is scaled to [0, 1].
    """
    from dlrun.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file not found: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                key = "x" if "x" in npz.files else (npz.files[0] if len(npz.files) == 1 else None)
                if key is None:
                    raise DataError(f"{path} holds several arrays ({', '.join(npz.files)}); name the inputs 'x'")
                x = npz[key]
        except ValueError as exc:
            raise DataError(f"{path} cannot be read: {exc}") from None
        if x.shape == input_shape:
            x = x[None]
    else:
        try:
            from PIL import Image
        except ImportError:
            raise DataError("reading images needs Pillow", hint="pip install 'dlrun[plot]' (or pillow)") from None
        try:
            img = Image.open(path)
            img = img.convert("L" if input_shape[-1] == 1 else "RGB")
        except OSError as exc:
            raise DataError(f"{path} is not a readable image ({exc})") from None
        x = np.asarray(img)
        x = x.reshape(1, *x.shape[:2], -1)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise DataError(f"{path} has inputs of shape {list(x.shape[1:])}; the model expects {list(input_shape)}")
    return x, (1 / 255 if x.dtype == np.uint8 else None)


def predict(checkpoint: str | Path, inputs: str | Path, *, top_k: int = 3, device: str | None = "cpu"
            ) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for every input sample."""
    setup, _ = _load_for_inference(checkpoint, device)
    x, _ = load_inputs(inputs, next(iter(setup.model.inputs.values())))
    normalization = input_normalization(setup.config.resolved["data"], x.dtype)  # as in training
    names = known_class_names(setup.config.resolved["data"])
    probs = _predict_batches(setup, x, normalization).reshape(len(x), -1)
    if probs.shape[1] == 1:  # a sigmoid output: two classes
        probs = np.concatenate([1 - probs, probs], axis=1)
    names = names if names and len(names) == probs.shape[1] else [str(i) for i in range(probs.shape[1])]
    order = np.argsort(-probs, axis=1)[:, :top_k]
    return [[(names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


def runs(root: str | Path = "runs") -> list[reports.RunInfo]:
    """The run folders under `root` (or `root` itself when it is one), newest first."""
    if not Path(root).is_dir():
        raise DlrunError(f"{root}: no such folder", hint="pass the folder runs were written to (--runs-dir)")
    return reports.list_runs(Path(root))


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """(resolved config, history) of a run folder."""
    import yaml

    from dlrun.errors import DlrunError

    run_dir = Path(run_dir)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        history = json.loads((run_dir / "history.json").read_text()) if (run_dir / "history.json").is_file() else {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DlrunError(f"{run_dir} is not a readable run folder ({exc})",
                         hint="pass a folder such as runs/<name>/<timestamp>") from None
    return config, history


def plot(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write loss/metric curves of one or more runs to a PNG (default: <run>/history.png)."""
    from dlrun.errors import DlrunError

    histories = {}
    for rd in run_dirs:
        _, history = load_run(rd)
        histories[f"{Path(rd).parent.name}/{Path(rd).name}"] = history
    target = Path(out) if out else Path(run_dirs[0]) / "history.png"
    try:
        return reports.plot_history(histories, target)
    except ImportError:
        raise DlrunError("plotting needs matplotlib", hint="pip install 'dlrun[plot]'") from None
