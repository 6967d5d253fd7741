"""A checkpoint alone, scored on its dataset or run on new inputs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from dlrun.api import memory
from dlrun.api.setup import Setup, config_from_checkpoint, prepare
from dlrun.atomic import atomic_open
from dlrun.data.dataset import input_normalization, known_class_names, load_dataset
from dlrun.data.inputs import load_inputs
from dlrun.data.registry import DATASETS
from dlrun.engine.random import streams
from dlrun.engine.threads import cpu_threads
from dlrun.errors import CheckpointError, DlrunError, UsageError
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
    checkpoint: str | Path,
    inputs: str | Path,
    *,
    top_k: int = 3,
    device: str | None = "cpu",
    output: str | Path | None = None,
    threads: int | None = None,
) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for every input sample; with `output`, the model's outputs
    for every input are also saved there as one .npy array (N, *output shape). `threads` as for
    `evaluate_report`."""
    target = output_target(output, checkpoint, inputs) if output is not None else None
    setup, path = _load_for_inference(checkpoint, device, with_data=False)
    x, _ = load_inputs(inputs, next(iter(setup.model.inputs.values())))
    normalization = input_normalization(setup.config.resolved["data"], x.dtype)  # as in training
    names = known_class_names(setup.config.resolved["data"])
    with cpu_threads(threads):
        outputs = predict_outputs(setup.model, x, normalization)  # in inference batches
    if target is not None:
        if target.exists() and target.samefile(path):  # a run folder's checkpoint, known only now
            raise UsageError(f"--output {target} is the checkpoint this command reads")
        with written(target, "the outputs") as f:
            np.save(f, outputs)
    probs = outputs.reshape(len(x), -1)
    if probs.shape[1] == 1:  # a sigmoid output: two classes
        probs = np.concatenate([1 - probs, probs], axis=1)
    names = names if names and len(names) == probs.shape[1] else [str(i) for i in range(probs.shape[1])]
    order = np.argsort(-probs, axis=1)[:, :top_k]
    return [[(names[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


def load_model(checkpoint: str | Path, device: str | None = "cpu") -> tuple[Setup, Path]:
    """A checkpoint's (or a run folder's) model with its weights, ready for inference or export, and
    the checkpoint file it came from; no data is loaded."""
    return _load_for_inference(checkpoint, device, with_data=False)


def output_target(path: str | Path, *reads: str | Path) -> Path:
    """A file a command is about to write (replacing an existing one atomically, as every dlrun
    output does), checked first: not a folder, and none of the files the command reads."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{target} is a folder; give the name of a file to write")
    for src in reads:
        src_path = Path(src)
        if src_path.is_file() and target.exists() and target.samefile(src_path):
            raise UsageError(f"{target} is a file this command reads; write the result to another file")
    if target.parent.exists() and not target.parent.is_dir():
        raise DlrunError(f"cannot write {target}: {target.parent} is not a folder")
    return target


@contextmanager
def writing(target: Path, what: str) -> Iterator[None]:
    """An OSError (disk full, no permission) while writing `target` as one DlrunError."""
    try:
        yield
    except OSError as exc:
        raise DlrunError(f"cannot write {what} ({exc.strerror or exc})", path=str(target)) from None


@contextmanager
def written(target: Path, what: str) -> Iterator[IO[bytes]]:
    """A binary file to fill, put in place atomically once complete; on an OSError `target` is left
    as it was (absent, or the previous file)."""
    with writing(target, what), atomic_open(target, "wb") as f:
        yield f
