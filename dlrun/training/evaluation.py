"""Scoring a model without training it: loss and metrics over a split, outputs for new inputs, and
for classifiers per-class accuracy and the confusion matrix.

Nothing here holds optimizer state, so a checkpoint can be scored on its own; the training loop
uses the same Evaluator for its validation pass and for how its loss reads the model's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from dlrun.data.dataset import Batches, Dataset, Split
from dlrun.engine.backend import Backend
from dlrun.engine.losses import Loss
from dlrun.engine.metrics import Metric
from dlrun.graph.model import Model
from dlrun.parallel.communicator import Communicator

#: The largest batch inference runs: no gradients are kept, so a big batch costs little memory.
INFERENCE_BATCH = 1024
#: On the CPU a smaller batch is faster once a layer's output outgrows the cache: each pass then
#: streams from memory, and every fresh output array page-faults. Inference batches keep the widest
#: layer output within this many values (16 MB in float32). Measured on a 2-core Xeon: the seed CNN
#: (28x28x32 outputs) scores 0.75 ms per image in batches of 128 and 1.14 ms in batches of 1024,
#: LeNet-5 is fastest at 256-512, the MLP at 1024.
CPU_INFERENCE_VALUES = 1 << 22


def inference_batch(model: Model) -> int:
    """The batch validation, evaluation and prediction use for `model`: INFERENCE_BATCH on a GPU;
    on the CPU the largest power of two up to it whose widest layer output (or input) stays within
    CPU_INFERENCE_VALUES values. The same for a model on every machine: it depends on shapes alone."""
    if model.backend.xp.__name__ != "numpy":
        return INFERENCE_BATCH
    widest = max([model.input_size(), *(math.prod(node.output_shape) for node in model.nodes)])
    batch = INFERENCE_BATCH
    while batch > 1 and batch * widest > CPU_INFERENCE_VALUES:
        batch //= 2
    return batch


def loss_on_logits(model: Model, loss: Loss) -> Loss | None:
    """`loss` taking the model's logits when it absorbs the output's final activation (a cross-entropy
    after softmax/sigmoid: stabler, and what Keras's TensorFlow backend does), else None."""
    if loss.from_logits or loss.fuses_with is None or model.output_activation != loss.fuses_with:
        return None
    return loss.with_logits()


def target_transform(model: Model, loss: Loss) -> Callable[[Any], Any] | None:
    """What label batches become for `loss`: one-hot rows for categorical_crossentropy, class ids
    as they are for the sparse losses, the model's float dtype otherwise."""
    xp, dtype = model.backend.xp, model.backend.dtype
    if loss.keras_name == "categorical_crossentropy":
        eye = xp.eye(model.output_node.output_shape[-1], dtype=dtype)
        return lambda y: eye[y.reshape(-1).astype(xp.int64)]
    if loss.sparse_targets:
        return None
    return lambda y: y.astype(dtype, copy=False)


def means(backend: Backend, sums: Any, count: int, names: list[str]) -> dict[str, float]:
    """Per-sample means of device sums, by name (a host sync: once per epoch or display refresh).

    Over no samples a mean is undefined: NaN (written as null in JSON), never a ZeroDivisionError.
    """
    host = backend.to_host(sums)
    return {name: float(v) / count if count > 0 else float("nan") for name, v in zip(names, host)}


class Evaluator:
    """Loss (with regularization, as Keras reports it) and metrics of a model over splits of a
    dataset, in inference mode and inference batches.

    The loss reads the logits when it absorbs the output activation (`fused`), the metrics always
    the probabilities; the training step reads the output the same way.

    With a communicator of several ranks, each scores a contiguous part of the split and the sums
    are added up over the ranks before dividing by the split's size (never a mean of means).
    """

    def __init__(
        self,
        model: Model,
        loss: Loss,
        metrics: list[Metric],
        data: Dataset,
        batch_size: int | None = None,
        comm: Communicator | None = None,
    ) -> None:
        self.model, self.metrics, self.data = model, metrics, data
        self.batch_size = inference_batch(model) if batch_size is None else batch_size
        self.comm = comm or Communicator()
        fused = loss_on_logits(model, loss)
        self.fused = fused is not None
        #: The loss as applied to `output(...)`.
        self.loss = fused or loss
        self.targets = target_transform(model, loss)
        self.names = ["loss", *[m.name for m in metrics]]

    def output(self, x: Any, training: bool) -> Any:
        """The model's output as the loss reads it: the logits when `fused`."""
        return self.model.forward(x, training, logits=self.fused)

    def add_metric_sums(self, sums: Any, out: Any, y: Any, probs: Any = None) -> None:
        """Add each metric's batch sum, on probabilities, into `sums[1:]` (device scalars).
        `probs`: the probabilities of `out` if the loss computed them already."""
        if not self.metrics:
            return
        if probs is None:
            probs = self.model.activate_output(out) if self.fused else out
        for i, m in enumerate(self.metrics, start=1):
            sums[i] += m.batch_sum(probs, y)

    def evaluate(self, split: Split) -> dict[str, float]:
        backend = self.model.backend
        xp = backend.xp
        sums = xp.zeros(len(self.names), dtype=xp.float64)
        n, rank, ranks = len(split), self.comm.rank, self.comm.size
        part = split.take(slice(n * rank // ranks, n * (rank + 1) // ranks))
        for xb, yb in self.data.batches(part, self.batch_size, backend, self.targets).epoch():
            out = self.output(xb, training=False)
            loss, _, probs = self.loss.value_grad_and_probabilities(out, yb)
            sums[0] += loss * xb.shape[0]
            self.add_metric_sums(sums, out, yb, probs)
        sums = self.comm.allreduce_stats(sums)
        logs = means(backend, sums, len(split), self.names)
        reg = self.model.regularization(add_grads=False)
        if not isinstance(reg, float):
            logs["loss"] += float(backend.to_host(reg))
        return logs


def predict_outputs(
    model: Model, x: np.ndarray, normalization: Any = None, batch_size: int | None = None
) -> np.ndarray:
    """The model's outputs (a classifier's probabilities) for host inputs, in inference batches, on the host."""
    batch_size = inference_batch(model) if batch_size is None else batch_size
    batches = Batches(Split(x, np.zeros(len(x), dtype=np.int64)), batch_size, model.backend, normalization)
    outs = [model.backend.to_host(model.forward(xb)) for xb, _ in batches.epoch()]
    return np.concatenate(outs) if outs else np.zeros((0, *model.output_node.output_shape), np.float32)


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    out = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(out, (labels.astype(np.int64), predicted.astype(np.int64)), 1)
    return out


def per_class_accuracy(matrix: np.ndarray) -> list[float]:
    totals = matrix.sum(axis=1)
    return [float(matrix[i, i] / totals[i]) if totals[i] else float("nan") for i in range(len(matrix))]
