"""Keras losses, each returning the batch-mean value and its gradient with respect to the prediction.

Cross-entropies fuse with a final softmax/sigmoid: the training loop then hands them the logits
(`from_logits=True`), which is both stabler and what Keras's TensorFlow backend does when a
probability output carries its logits. Values stay on the device: no host round-trip here.
"""

from __future__ import annotations

from typing import Any

from dlrun.checks import BOOL, checked, declare
from dlrun.engine.activations import Sigmoid
from dlrun.engine.backend import xp_of
from dlrun.registry import Registry, build_from_spec

LOSSES: Registry[type[Loss]] = Registry("loss")
EPSILON = 1e-7


class Loss:
    """`value(pred, target)` and `value_and_grad(pred, target)`; reduction is the batch mean."""

    keras_name = ""
    #: The final activation this loss absorbs when from_logits is False (softmax, sigmoid), or None.
    fuses_with: str | None = None
    #: What "accuracy" means under this loss: sparse, categorical or binary.
    accuracy_kind = "binary"
    #: Whether targets are integer class ids (one per sample).
    sparse_targets = False

    bounds = declare(from_logits=BOOL)

    def __init__(self, from_logits: bool = False) -> None:
        self.from_logits = checked(self, "from_logits", from_logits)

    def value(self, pred: Any, target: Any) -> Any:
        return self.value_and_grad(pred, target)[0]

    def value_and_grad(self, pred: Any, target: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def value_grad_and_probabilities(self, pred: Any, target: Any) -> tuple[Any, Any, Any]:
        """`value_and_grad`, plus the probabilities a loss on logits computed from them on the way
        (the same bits as the output activation's forward), so metrics need not recompute them;
        None when it computed none."""
        return (*self.value_and_grad(pred, target), None)

    def with_logits(self) -> Loss:
        """This loss taking logits, for fusing with the output activation."""
        clone = type(self)(**{**self.get_config(), "from_logits": True})
        return clone

    def get_config(self) -> dict[str, Any]:
        return {"from_logits": self.from_logits}

    def spec(self) -> Any:
        cfg = self.get_config()
        return {"type": self.keras_name, **cfg} if cfg != type(self)().get_config() else self.keras_name


def _as_pred_shape(target: Any, pred: Any) -> Any:
    """Targets of shape (N,) against predictions (N, 1) are reshaped, as Keras squeezes/expands."""
    if target.shape != pred.shape and target.size == pred.size:
        target = target.reshape(pred.shape)
    return target.astype(pred.dtype, copy=False)


def _log_softmax(z: Any) -> tuple[Any, Any]:
    xp = xp_of(z)
    shifted = z - z.max(axis=-1, keepdims=True)
    e = xp.exp(shifted)
    s = e.sum(axis=-1, keepdims=True)
    return shifted - xp.log(s), e / s


class _CrossEntropy(Loss):
    fuses_with = "softmax"

    def _one_hot_like(self, target: Any, pred: Any) -> Any:
        return target.astype(pred.dtype, copy=False)

    def value_and_grad(self, pred, target):
        return self.value_grad_and_probabilities(pred, target)[:2]

    def value_grad_and_probabilities(self, pred, target):
        xp = xp_of(pred)
        n = pred.shape[0]
        y = self._one_hot_like(target, pred)
        if self.from_logits:
            logp, p = _log_softmax(pred)
            loss = -(y * logp).sum() / n
            return loss, (p - y) / n, p
        # Keras: renormalise to sum 1, clip to [eps, 1 - eps], then -sum(y log p).
        s = pred.sum(axis=-1, keepdims=True)
        q = pred / s
        qc = xp.clip(q, EPSILON, 1 - EPSILON)
        loss = -(y * xp.log(qc)).sum() / n
        dq = -y / qc * ((q > EPSILON) & (q < 1 - EPSILON)) / n
        grad = (dq - (dq * q).sum(axis=-1, keepdims=True)) / s
        return loss, grad, None


@LOSSES.register("categorical_crossentropy", "categoricalcrossentropy", "cce")
class CategoricalCrossentropy(_CrossEntropy):
    keras_name = "categorical_crossentropy"
    accuracy_kind = "categorical"


@LOSSES.register("sparse_categorical_crossentropy", "scce")
class SparseCategoricalCrossentropy(_CrossEntropy):
    keras_name = "sparse_categorical_crossentropy"
    accuracy_kind = "sparse"
    sparse_targets = True
    _eye: tuple[Any, Any] | None = None  # (namespace, classes, dtype) and that identity matrix

    def _one_hot_like(self, target, pred):
        xp = xp_of(pred)
        key = (xp.__name__, pred.shape[-1], pred.dtype.str)
        if self._eye is None or self._eye[0] != key:  # rows of the identity, picked per label
            self._eye = (key, xp.eye(pred.shape[-1], dtype=pred.dtype))
        return self._eye[1].take(target.reshape(-1).astype(xp.int64, copy=False), axis=0)


@LOSSES.register("binary_crossentropy", "bce")
class BinaryCrossentropy(Loss):
    keras_name = "binary_crossentropy"
    fuses_with = "sigmoid"

    def value_and_grad(self, pred, target):
        return self.value_grad_and_probabilities(pred, target)[:2]

    def value_grad_and_probabilities(self, pred, target):
        xp = xp_of(pred)
        y = _as_pred_shape(target, pred)
        # Mean over the last axis, then over the batch: the same as the mean of all elements.
        count = pred.size
        if self.from_logits:
            loss = (xp.maximum(pred, 0) - pred * y + xp.log1p(xp.exp(-xp.abs(pred)))).sum() / count
            p = Sigmoid().forward(pred)
            return loss, (p - y) / count, p
        pc = xp.clip(pred, EPSILON, 1 - EPSILON)
        loss = -(y * xp.log(pc) + (1 - y) * xp.log(1 - pc)).sum() / count
        inside = (pred > EPSILON) & (pred < 1 - EPSILON)
        grad = (pc - y) / (pc * (1 - pc)) * inside / count
        return loss, grad, None


class _Regression(Loss):
    """Regression losses take no from_logits (kept out of their config, as Keras)."""

    def __init__(self) -> None:
        super().__init__(False)

    def get_config(self) -> dict[str, Any]:
        return {}

    def with_logits(self) -> Loss:
        raise TypeError(f"{self.keras_name} does not take logits")


@LOSSES.register("mean_squared_error", "mse")
class MeanSquaredError(_Regression):
    keras_name = "mean_squared_error"

    def value_and_grad(self, pred, target):
        diff = pred - _as_pred_shape(target, pred)
        return (diff * diff).sum() / pred.size, diff * (2 / pred.size)


@LOSSES.register("mean_absolute_error", "mae")
class MeanAbsoluteError(_Regression):
    keras_name = "mean_absolute_error"

    def value_and_grad(self, pred, target):
        xp = xp_of(pred)
        diff = pred - _as_pred_shape(target, pred)
        return xp.abs(diff).sum() / pred.size, xp.sign(diff) * (1 / pred.size)


@LOSSES.register("mean_absolute_percentage_error", "mape")
class MeanAbsolutePercentageError(_Regression):
    keras_name = "mean_absolute_percentage_error"

    def value_and_grad(self, pred, target):
        xp = xp_of(pred)
        y = _as_pred_shape(target, pred)
        diff = pred - y
        scale = (100 / pred.size) / xp.maximum(xp.abs(y), EPSILON)
        return (xp.abs(diff) * scale).sum(), xp.sign(diff) * scale


def get(identifier: Any) -> Loss:
    """A Loss from a Keras name/alias or `{type: ..., from_logits: ...}`."""
    if isinstance(identifier, Loss):
        return identifier
    return build_from_spec(LOSSES, identifier)
