"""Learning-rate schedules for LearningRateScheduler: Keras's formulas, counted in epochs.

Each schedule maps the epoch index (from 0, as Keras's LearningRateScheduler passes it) to a learning
rate; Keras's `keras.optimizers.schedules` count optimizer steps instead, so here `decay_steps`,
`warmup_steps` and `boundaries` are numbers of epochs. `initial_learning_rate` defaults to the
optimizer's configured learning rate.
"""

from __future__ import annotations

import math
from typing import Any

from dlrun.checks import BOOL, NUMBER, Bounds, checked, declare, nullable
from dlrun.errors import ArgumentError, short
from dlrun.registry import Registry

SCHEDULES: Registry[type[Schedule]] = Registry("learning-rate schedule")


EPOCHS = Bounds((int,), minimum=0, text="a non-negative integer (epochs)")
POSITIVE_EPOCHS = Bounds((int,), minimum=1, text="a positive integer (epochs)")
RATE = Bounds(NUMBER, exclusive_minimum=0, finite=True)


class Schedule:
    """`schedule(epoch) -> learning rate`; `get_config()` returns the constructor arguments."""

    keras_name = ""
    initial_learning_rate: float | None = None

    def __call__(self, epoch: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        return {"type": self.keras_name, **self.get_config()}


@SCHEDULES.register("piecewise_constant_decay", "piecewise_constant", "piecewise")
class PiecewiseConstantDecay(Schedule):
    """`values[0]` while epoch <= boundaries[0], `values[i]` while boundaries[i-1] < epoch <= boundaries[i],
    `values[-1]` after the last boundary (Keras's rule). A step schedule."""

    keras_name = "piecewise_constant_decay"
    bounds = declare(
        boundaries=Bounds((list,), items=EPOCHS, min_length=1, text="a non-empty list of epochs"),
        values=Bounds((list,), items=RATE),
    )

    def __init__(self, boundaries: list[int], values: list[float]) -> None:
        self.boundaries = list(checked(self, "boundaries", boundaries))
        if any(b2 <= b1 for b1, b2 in zip(self.boundaries, self.boundaries[1:])):
            raise ArgumentError(
                f"boundaries must increase. Received: boundaries={short(boundaries)}", "boundaries", boundaries
            )
        if not isinstance(values, list) or len(values) != len(boundaries) + 1:
            raise ArgumentError(
                f"values must be a list one longer than boundaries ({len(self.boundaries) + 1} "
                f"values). Received: values={short(values)}",
                "values",
                values,
            )
        self.values = [float(v) for v in checked(self, "values", values)]

    def __call__(self, epoch: int) -> float:
        for boundary, value in zip(self.boundaries, self.values):
            if epoch <= boundary:
                return value
        return self.values[-1]

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": list(self.boundaries), "values": list(self.values)}


@SCHEDULES.register("exponential_decay", "exponential")
class ExponentialDecay(Schedule):
    """initial_learning_rate * decay_rate ** (epoch / decay_steps); `staircase` floors the exponent
    (a step decay: multiply by decay_rate every decay_steps epochs)."""

    keras_name = "exponential_decay"
    bounds = declare(
        decay_steps=POSITIVE_EPOCHS,
        decay_rate=RATE,
        initial_learning_rate=nullable(RATE),
        staircase=BOOL,
    )

    def __init__(
        self, decay_steps: int, decay_rate: float, initial_learning_rate: float | None = None, staircase: bool = False
    ) -> None:
        self.decay_steps = checked(self, "decay_steps", decay_steps)
        self.decay_rate = checked(self, "decay_rate", decay_rate)
        self.initial_learning_rate = checked(self, "initial_learning_rate", initial_learning_rate)
        self.staircase = checked(self, "staircase", staircase)

    def __call__(self, epoch: int) -> float:
        p = epoch / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return float(self.initial_learning_rate) * self.decay_rate**p

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
        }


@SCHEDULES.register("cosine_decay", "cosine")
class CosineDecay(Schedule):
    """Keras's CosineDecay: with `warmup_target`, a linear warm-up from initial_learning_rate to
    warmup_target over warmup_steps, then a cosine decay over decay_steps down to alpha * that peak;
    without it, the cosine decay starts at initial_learning_rate. Constant after the decay."""

    keras_name = "cosine_decay"
    bounds = declare(
        decay_steps=POSITIVE_EPOCHS,
        initial_learning_rate=Bounds(NUMBER, minimum=0, finite=True, nullable=True),
        alpha=Bounds(NUMBER, minimum=0, maximum=1, finite=True),
        warmup_target=nullable(RATE),
        warmup_steps=EPOCHS,
    )

    def __init__(
        self,
        decay_steps: int,
        initial_learning_rate: float | None = None,
        alpha: float = 0.0,
        warmup_target: float | None = None,
        warmup_steps: int = 0,
    ) -> None:
        self.decay_steps = checked(self, "decay_steps", decay_steps)
        self.initial_learning_rate = checked(self, "initial_learning_rate", initial_learning_rate)
        self.alpha = checked(self, "alpha", alpha)
        self.warmup_target = checked(self, "warmup_target", warmup_target)
        self.warmup_steps = checked(self, "warmup_steps", warmup_steps)

    def _decay(self, step: float, peak: float) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * step / self.decay_steps))
        return peak * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, epoch: int) -> float:
        initial = float(self.initial_learning_rate)
        if self.warmup_target is None:
            return self._decay(min(epoch, self.decay_steps), initial)
        step = min(epoch, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            return (self.warmup_target - initial) * step / self.warmup_steps + initial
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }
