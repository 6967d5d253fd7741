"""Do the model, the loss and the dataset's targets fit together? Checked before training starts
(otherwise the first batch fails deep inside the loss with a shape error)."""

from __future__ import annotations

from dlrun.config.schema import Config
from dlrun.data.dataset import Dataset, Targets
from dlrun.engine.losses import BinaryCrossentropy, CategoricalCrossentropy, Loss, SparseCategoricalCrossentropy
from dlrun.graph.model import Model


def check_data_fits(cfg: Config, model: Model, data: Dataset) -> None:
    check_input_shape(cfg, model, data.name, data.input_shape)


def check_input_shape(cfg: Config, model: Model, dataset: str, shape: tuple[int, ...]) -> None:
    """The model's input shape must be the dataset's sample shape (known statically for validate)."""
    expected = next(iter(model.inputs.values()))
    if tuple(expected) != tuple(shape):
        raise cfg.error(
            f"the model expects inputs of shape {list(expected)} but {dataset} provides {list(shape)}",
            cfg.raw.get("model"),
            "input_shape",
            "model.input_shape",
            hint="remove model.input_shape to take the dataset's, or add a Reshape layer",
        )


def check_targets(cfg: Config, model: Model, loss_fn: Loss, dataset: str, targets: Targets) -> None:
    """The model's output units, the loss and the dataset's targets must agree."""
    loss = loss_fn.keras_name
    out = model.output_node.output_shape
    units = out[-1] if out else 1
    classes = targets.classes
    if classes and classes > 1 and units not in (1, classes):
        raise cfg.error(
            f"the model outputs {units} values per sample but {dataset} has {classes} classes",
            cfg.raw.get("model"),
            "layers",
            "model.layers",
            hint=f"make the last layer Dense with units: {classes}",
        )
    categorical = isinstance(loss_fn, (CategoricalCrossentropy, SparseCategoricalCrossentropy))
    binary = isinstance(loss_fn, BinaryCrossentropy)
    problem = hint = None
    if categorical and classes is None:
        problem = f"{loss} needs class labels, but {dataset} holds regression targets"
        hint = "use loss: mean_squared_error (or set data.task: classification)"
    elif categorical and units < 2:
        problem = f"{loss} needs one output per class ({classes}), but the model outputs {units} value per sample"
        hint = (
            f"end the model with Dense: {{units: {classes}, activation: softmax}}, or use loss: "
            "binary_crossentropy for two classes with one sigmoid output"
        )
    elif binary and classes is not None and classes > 2:
        problem = f"binary_crossentropy is for two classes (0 and 1), but {dataset} has {classes} classes"
        hint = "use loss: sparse_categorical_crossentropy"
    elif binary and classes is not None and units != 1:
        problem = f"binary_crossentropy with 0/1 labels needs one output per sample, but the model outputs {units}"
        hint = "end the model with Dense: {units: 1, activation: sigmoid}"
    elif not (categorical or binary) and classes is not None and units != 1:
        problem = (
            f"{loss} compares one output with each label, but the model outputs {units} values per "
            f"sample and {dataset} holds class labels"
        )
        hint = "for classes use loss: sparse_categorical_crossentropy"
    elif classes is None and targets.per_sample != units:
        problem = f"{dataset} has {targets.per_sample} targets per sample, but the model outputs {units}"
        hint = f"make the last layer Dense with units: {targets.per_sample}"
    if problem:
        raise cfg.error(problem, cfg.raw, "loss", "loss", hint=hint)
