"""A checkpoint alone, scored on its dataset or run on new inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlrun.api import memory
from dlrun.api.setup import Setup, config_from_checkpoint, prepare
from dlrun.data.dataset import input_normalization, known_class_names, load_dataset
from dlrun.data.inputs import load_inputs
from dlrun.data.registry import DATASETS
from dlrun.engine.random import streams
from dlrun.engine.threads import cpu_threads
from dlrun.errors import CheckpointError, UsageError
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.training.evaluation import Evaluator, confusion_matrix, per_class_accuracy, predict_outputs


def evaluate(
    checkpoint: str | Path, *, split: str = "test", device: str | None = "cpu", data_path: str | None = None
) -> dict[str, float]:
    """Load a checkpoint alone, rebuild its model, and score it (loss and metrics) on a split of its dataset."""
    return evaluate_report(checkpoint, split=split, device=device, data_path=data_path, details=False)["scores"]


def _checkpoint_file(path: Path) -> Path:
    """A checkpoint file, or a run folder standing for its best checkpoint (else its last)."""
    if path.is_dir():
        for name in ("best.npz", "last.npz"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise CheckpointError(
            f"{path} is a folder without checkpoints/best.npz or checkpoints/last.npz",
            hint="pass a checkpoint file, or a run folder whose first epoch has ended",
        )
    return path


def _load_for_inference(
    checkpoint: str | Path, device: str | None, data_path: str | None = None, *, with_data: bool = True
) -> tuple[Setup, Path]:
    """The checkpoint's model with its weights, once the memory that takes (and, `with_data`, its
    dataset's, when generated) is known to fit."""
    path = _checkpoint_file(Path(checkpoint))
    ckpt = ckpt_mod.load(path)
    if data_path is not None:  # --data-path: the checkpoint's config, read from another folder
        dataset = ckpt.config.get("data", {}).get("dataset")
        if dataset in DATASETS.names() and "path" not in DATASETS.get(dataset).keys:
            raise UsageError(f"--data-path does not apply to the {dataset} dataset: it reads no files")
        ckpt.config = {**ckpt.config, "data": {**ckpt.config.get("data", {}), "path": data_path}}
    setup = prepare(config_from_checkpoint(path, ckpt), device=device)
    need = memory.inference_need(setup.model, setup.config.resolved["data"] if with_data else None)
    action = "evaluating this checkpoint" if with_data else "predicting with this checkpoint"
    memory.check(need, what=action, file=str(path), backend=setup.backend)
    setup.model.allocate()
    try:
        setup.model.set_weights(ckpt.weights)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return setup, path


def evaluate_report(
    checkpoint: str | Path,
    *,
    split: str = "test",
    device: str | None = "cpu",
    data_path: str | None = None,
    details: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Scores plus, for classifiers (when `details`), per-class accuracy and the confusion matrix.
    `threads`: CPU threads to compute on (default as for training; the same bits whatever the count)."""
    with cpu_threads(threads):
        return _evaluate_report(checkpoint, split, device, data_path, details)


def _evaluate_report(
    checkpoint: str | Path, split: str, device: str | None, data_path: str | None, details: bool
) -> dict[str, Any]:
    setup, _ = _load_for_inference(checkpoint, device, data_path)
    cfg = setup.config
    data = load_dataset(cfg.resolved["data"], cfg.resolved["seed"], split_rng=streams(cfg.resolved["seed"]).split)
    part = data.split(split)
    scores = Evaluator(setup.model, setup.loss, setup.metrics, data).evaluate(part)
    report: dict[str, Any] = {"split": split, "samples": len(part), "scores": scores}
    classes = setup.model.output_node.output_shape[-1]
    if details and data.num_classes and setup.loss.accuracy_kind in ("sparse", "categorical") and classes > 1:
        probs = predict_outputs(setup.model, part.x, data.normalization)
        matrix = confusion_matrix(probs.argmax(axis=-1), part.y.reshape(-1), classes)
        names = data.class_names or [str(i) for i in range(classes)]
        report.update(
            class_names=names,
            confusion=matrix.tolist(),
            per_class_accuracy=dict(zip(names, per_class_accuracy(matrix))),
        )
    return report


def predict(
    checkpoint: str | Path, inputs: str | Path, *, top_k: int = 3, device: str | None = "cpu"
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for every input sample."""
    setup, _ = _load_for_inference(checkpoint, device, with_data=False)
    x, _ = load_inputs(inputs, next(iter(setup.model.inputs.values())))
    normalization = input_normalization(setup.config.resolved["data"], x.dtype)  # as in training
    names = known_class_names(setup.config.resolved["data"])
    probs = predict_outputs(setup.model, x, normalization).reshape(len(x), -1)
    if probs.shape[1] == 1:  # a sigmoid output: two classes
        probs = np.concatenate([1 - probs, probs], axis=1)
    names = names if names and len(names) == probs.shape[1] else [str(i) for i in range(probs.shape[1])]
    order = np.argsort(-probs, axis=1)[:, :top_k]
    return [[(names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]
