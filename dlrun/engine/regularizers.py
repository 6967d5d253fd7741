"""Keras weight regularizers: a penalty added to the loss and its gradient added to the weight's."""

from __future__ import annotations

from typing import Any

from dlrun.checks import NON_NEGATIVE, checked, declare
from dlrun.engine.backend import xp_of
from dlrun.registry import Registry, build_from_spec

REGULARIZERS: Registry[type[Regularizer]] = Registry("regularizer")


class Regularizer:
    keras_name = ""

    def penalty(self, w: Any) -> Any:
        raise NotImplementedError

    def add_grad(self, w: Any, g: Any) -> None:
        raise NotImplementedError

    def get_config(self) -> dict[str, float]:
        return dict(vars(self))

    def spec(self) -> dict[str, Any]:
        return {"type": self.keras_name, **self.get_config()}


@REGULARIZERS.register("l1_l2")
class L1L2(Regularizer):
    keras_name = "l1_l2"
    bounds = declare(l1=NON_NEGATIVE, l2=NON_NEGATIVE)

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1, self.l2 = checked(self, "l1", l1), checked(self, "l2", l2)

    def penalty(self, w):
        xp = xp_of(w)
        total = 0.0
        if self.l1:
            total = total + self.l1 * xp.abs(w).sum()
        if self.l2:
            total = total + self.l2 * (w * w).sum()
        return total

    def add_grad(self, w, g):
        xp = xp_of(w)
        if self.l1:
            g += self.l1 * xp.sign(w)
        if self.l2:
            g += (2 * self.l2) * w


@REGULARIZERS.register("l1")
class L1(L1L2):
    keras_name = "l1"

    def __init__(self, l1: float = 0.01) -> None:
        super().__init__(l1=l1)

    def get_config(self):
        return {"l1": self.l1}


@REGULARIZERS.register("l2")
class L2(L1L2):
    keras_name = "l2"

    def __init__(self, l2: float = 0.01) -> None:
        super().__init__(l2=l2)

    def get_config(self):
        return {"l2": self.l2}


def get(identifier: Any) -> Regularizer | None:
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    return build_from_spec(REGULARIZERS, identifier)
