"""Metrics that accumulate on the device: each batch adds to a (sum, count) pair of device scalars,
read back once per epoch or per progress refresh, never per batch."""

from __future__ import annotations

from typing import Any

from dlrun.engine import losses as losses_mod
from dlrun.errors import short
from dlrun.registry import Registry

METRICS: Registry[Any] = Registry("metric")


class Metric:
    """`batch_sum(pred, target)` -> device scalar summed over samples; the mean is sum / count."""

    name = ""

    def batch_sum(self, pred: Any, target: Any) -> Any:
        raise NotImplementedError


class SparseCategoricalAccuracy(Metric):
    name = "accuracy"

    def batch_sum(self, pred, target):
        return (pred.argmax(axis=-1) == target.reshape(-1)).sum()


class CategoricalAccuracy(Metric):
    name = "accuracy"

    def batch_sum(self, pred, target):
        return (pred.argmax(axis=-1) == target.argmax(axis=-1)).sum()


class BinaryAccuracy(Metric):
    """Threshold 0.5 on probabilities (0 on logits); the mean over outputs, summed over samples."""

    name = "accuracy"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def batch_sum(self, pred, target):
        target = target.reshape(pred.shape)
        per_sample = ((pred > self.threshold) == (target > 0.5)).mean(axis=tuple(range(1, pred.ndim)) or None)
        return per_sample.sum()


class LossMetric(Metric):
    """A regression loss used as a metric (mae, mse, mape): the batch mean times the batch size."""

    def __init__(self, name: str, loss: losses_mod.Loss) -> None:
        self.name, self.loss = name, loss

    def batch_sum(self, pred, target):
        return self.loss.value(pred, target) * pred.shape[0]


_ACCURACY_BY_KIND = {"sparse": SparseCategoricalAccuracy, "categorical": CategoricalAccuracy, "binary": BinaryAccuracy}

METRICS.add("accuracy", "accuracy", "acc")
METRICS.add("sparse", "sparse_categorical_accuracy")
METRICS.add("categorical", "categorical_accuracy")
METRICS.add("binary", "binary_accuracy")
for _name, _alias in [
    ("mean_squared_error", "mse"),
    ("mean_absolute_error", "mae"),
    ("mean_absolute_percentage_error", "mape"),
]:
    METRICS.add(("loss", _name), _name, _alias)


def get(identifier: str, loss: losses_mod.Loss) -> Metric:
    """A metric by Keras name; "accuracy" resolves from the loss as Keras does."""
    if not isinstance(identifier, str):
        raise ValueError(f"a metric is a name such as 'accuracy'. Received: {short(identifier)}")
    _, what = METRICS.lookup(identifier)
    metric: Metric
    if isinstance(what, tuple):
        metric = LossMetric(identifier, losses_mod.get(what[1]))
    else:
        metric = _ACCURACY_BY_KIND[loss.accuracy_kind if what == "accuracy" else what]()
    metric.name = identifier  # history keys are the names as written, as in Keras
    return metric


def names() -> list[str]:
    return METRICS.names()


def direction(name: str) -> str | None:
    """Which way a history key improves: "min" for losses, "max" for accuracies, None when the name
    does not say (Keras's mode "auto"). `val_` keys follow their training key."""
    base = name.removeprefix("val_")
    if base == "loss":
        return "min"
    try:
        _, what = METRICS.lookup(base)
    except ValueError:
        what = None
    if isinstance(what, tuple):  # a loss used as a metric (mae, mse, ...)
        return "min"
    if what is not None or "acc" in base:
        return "max"
    return None
