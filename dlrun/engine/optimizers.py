"""Keras 3 optimizers with Keras's exact update rules and defaults.

Every optimizer updates one flat parameter buffer in place (the model keeps all trainable weights
as views of it), so a step is a dozen whole-array operations however many layers there are.
Hyper-parameters stay Python floats (no float64 creep); bias corrections are computed on the host,
in the weights' dtype as Keras computes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlrun.checks import FRACTION, NON_NEGATIVE, POSITIVE, checked, declare, nullable
from dlrun.engine import compiled
from dlrun.engine.backend import xp_of
from dlrun.engine.threads import parallel, workers
from dlrun.registry import Registry, build_from_spec

OPTIMIZERS: Registry[type[Optimizer]] = Registry("optimizer")
#: Parameters updated per piece when the CPU workers run: the piece's slots stay in cache across
#: the update's dozen passes, and the pieces are shared among the workers.
UPDATE_PIECE = 1 << 15
#: Every FLUSH_EVERY steps, slot values below 2**-100 in magnitude are set to zero
#: (`flush_subnormals`). The margin above float32's subnormals (below 2**-126) covers the steps in
#: between: a value decaying by a factor of 0.32 or more per step (beta_1, momentum, rho) cannot get
#: from 2**-100 to 2**-126 in 16 steps, nor can the update's intermediates (a tenth of a momentum).
#: So no slot is ever subnormal, for 3/16 of a pass per slot and step.
FLUSH_EVERY = 16
#: Per float dtype: the integer type of its bits, the mask of its exponent bits, the bits of 2**-100.
_FLUSH = {
    np.dtype(np.float32): (np.int32, 0x7F800000, (127 - 100) << 23),
    np.dtype(np.float64): (np.int64, 0x7FF0000000000000, (1023 - 100) << 52),
}


def flush_subnormals(x: Any, scratch: Any) -> None:
    """Set the values of the CPU array `x` below 2**-100 in magnitude, subnormals among them, to
    zero, in place (`scratch`: same shape and dtype).

    An optimizer slot whose weight gets no gradient (a dead ReLU's weights, a path the loss does not
    reach) decays geometrically, Adam's momentum by beta_1 every step, into the subnormal range
    within a few hundred steps, and x86 CPUs compute on subnormals through microcode assists, many
    times slower. Measured on a Xeon: Adam over the seed MLP's 79,510 weights took 0.23 ms per step,
    then 1.0 ms once half its momenta were subnormal, which made the MLP's epoch slower than
    PyTorch's. TensorFlow sets the CPU's flush-to-zero mode for this; NumPy cannot, so the slots are
    flushed here with integer operations on their bits (which take no assist). A moment below
    2**-100 moves its weight by under lr * 2**-100 / epsilon (1e-26 for Adam's defaults): flushing
    it changes no float32 weight.
    """
    kind = _FLUSH.get(x.dtype)
    if kind is None or not isinstance(x, np.ndarray):  # GPUs compute on subnormals at full speed
        return
    int_type, exponent, smallest = kind
    bits = x.view(int_type)
    fused = compiled.kernels()
    if fused is not None and bits.ndim == 1:  # one pass instead of three (37 -> 8 us on 79,510 values)
        fused.flush_below(bits, exponent, smallest)
        return
    flag = scratch.view(int_type)
    np.bitwise_and(bits, exponent, out=flag)  # the exponent alone: below `smallest` iff |x| < 2**-100
    np.greater_equal(flag, smallest, out=flag)
    np.multiply(bits, flag, out=bits)


class Optimizer:
    """Base: learning rate, weight decay and gradient clipping shared by all optimizers."""

    keras_name = ""
    slot_names: tuple[str, ...] = ()
    bounds = declare(
        learning_rate=POSITIVE,
        weight_decay=nullable(NON_NEGATIVE),
        clipnorm=nullable(POSITIVE),
        clipvalue=nullable(POSITIVE),
        global_clipnorm=nullable(POSITIVE),
    )

    def __init__(
        self,
        learning_rate: float = 0.001,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
    ) -> None:
        self.learning_rate = checked(self, "learning_rate", learning_rate)
        self.weight_decay = checked(self, "weight_decay", weight_decay)
        self.clipnorm = checked(self, "clipnorm", clipnorm)
        self.clipvalue = checked(self, "clipvalue", clipvalue)
        self.global_clipnorm = checked(self, "global_clipnorm", global_clipnorm)
        if sum(x is not None for x in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError("only one of clipnorm, clipvalue and global_clipnorm can be set")
        self.iterations = 0
        self.slots: dict[str, Any] = {}
        self._segments: list[slice] = []

    # -- state ---------------------------------------------------------------------------------------
    def build(self, params: Any, segments: list[slice]) -> None:
        """Allocate the slot buffers (moments, ...) like the flat parameter buffer."""
        xp = xp_of(params)
        self._segments = segments
        self.slots = {name: xp.full_like(params, self._slot_init(name)) for name in self.slot_names}
        self._tmp = xp.empty_like(params)

    def _slot_init(self, name: str) -> float:
        return 0.0

    def state_arrays(self) -> dict[str, Any]:
        return dict(self.slots)

    def load_state(self, iterations: int, arrays: dict[str, Any], learning_rate: float | None = None) -> None:
        self.iterations = int(iterations)
        for name, value in arrays.items():
            self.slots[name][...] = value
        if learning_rate is not None:
            self.learning_rate = float(learning_rate)

    def get_config(self) -> dict[str, Any]:
        cfg = {"learning_rate": self.learning_rate}
        for key in ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm"):
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key)
        return cfg

    # -- the step ------------------------------------------------------------------------------------
    def apply(self, params: Any, grads: Any) -> None:
        """One update of `params` in place from `grads` (which may be modified by clipping)."""
        self._clip(grads)
        self.iterations += 1
        decay = 1 - self.learning_rate * self.weight_decay if self.weight_decay else None
        flush = self.iterations % FLUSH_EVERY == 0  # by the step count: the same after a resume

        def update(first: int, last: int, worker: int) -> None:
            part = slice(first, last)
            w = params[part]
            if decay is not None:
                w *= decay
            slots = {k: s[part] for k, s in self.slots.items()}
            self._update(w, grads[part], slots, self._tmp[part], self.learning_rate)
            if flush:
                for slot in slots.values():
                    flush_subnormals(slot, self._tmp[part])

        # Element-wise, so updating piece by piece gives exactly the whole-buffer result.
        xp, n = xp_of(params), params.shape[0]
        if xp.__name__ == "numpy" and workers() > 1 and n > 4 * UPDATE_PIECE:
            parallel(xp, n, update, step=UPDATE_PIECE)
        else:  # a small model's update takes microseconds: no split, no pool
            update(0, n, 0)

    def _update(self, w: Any, g: Any, slots: dict[str, Any], tmp: Any, lr: float) -> None:
        """Update the parameters `w` in place from gradients `g`; `slots` are the optimizer's
        state over the same elements, `tmp` scratch space of the same size."""
        raise NotImplementedError

    def _clip(self, g: Any) -> None:
        xp = xp_of(g)
        if self.clipvalue is not None:
            xp.clip(g, -self.clipvalue, self.clipvalue, out=g)
        elif self.global_clipnorm is not None:
            norm = xp.sqrt((g * g).sum())
            g *= xp.minimum(1, self.global_clipnorm / xp.maximum(norm, 1e-30)).astype(g.dtype)
        elif self.clipnorm is not None:
            # Keras clips each variable's gradient by its own norm.
            for seg in self._segments:
                part = g[seg]
                norm = xp.sqrt((part * part).sum())
                part *= xp.minimum(1, self.clipnorm / xp.maximum(norm, 1e-30)).astype(g.dtype)


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    keras_name = "sgd"
    bounds = declare(momentum=FRACTION)

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False, **kw: Any) -> None:
        super().__init__(learning_rate, **kw)
        self.momentum = checked(self, "momentum", momentum)
        self.nesterov = bool(nesterov)
        self.slot_names = ("momentum",) if self.momentum else ()

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}

    def _update(self, w, g, slots, tmp, lr):
        if not self.momentum:
            g *= lr
            w -= g
            return
        m = slots["momentum"]
        m *= self.momentum
        g *= lr
        m -= g  # m = momentum * m - lr * g
        if self.nesterov:
            w -= g
            w += self.momentum * m  # w += momentum * m - lr * g
        else:
            w += m


@OPTIMIZERS.register("rmsprop")
class RMSprop(Optimizer):
    keras_name = "rmsprop"
    bounds = declare(rho=FRACTION, momentum=FRACTION, epsilon=POSITIVE)

    def __init__(
        self,
        learning_rate: float = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(learning_rate, **kw)
        self.rho = checked(self, "rho", rho)
        self.momentum = checked(self, "momentum", momentum)
        self.epsilon = checked(self, "epsilon", epsilon)
        self.centered = bool(centered)
        self.slot_names = (
            ("velocity",) + (("momentum",) if self.momentum else ()) + (("average_gradient",) if centered else ())
        )

    def get_config(self):
        return {
            **super().get_config(),
            "rho": self.rho,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "centered": self.centered,
        }

    def _update(self, w, g, slots, tmp, lr):
        xp = xp_of(w)
        v = slots["velocity"]
        # v = rho * v + (1 - rho) * g^2, written as v += (g^2 - v) * (1 - rho) to stay in place.
        xp.multiply(g, g, out=tmp)
        tmp -= v
        tmp *= 1 - self.rho
        v += tmp
        if self.centered:
            a = slots["average_gradient"]
            a *= self.rho
            a += (1 - self.rho) * g
            xp.multiply(a, a, out=tmp)
            xp.subtract(v, tmp, out=tmp)
            tmp += self.epsilon
        else:
            xp.add(v, self.epsilon, out=tmp)  # epsilon inside the root, as Keras
        xp.sqrt(tmp, out=tmp)
        xp.divide(g, tmp, out=tmp)
        tmp *= lr
        if self.momentum:
            m = slots["momentum"]
            m *= self.momentum
            m += tmp
            w -= m
        else:
            w -= tmp


@OPTIMIZERS.register("adagrad")
class Adagrad(Optimizer):
    keras_name = "adagrad"
    bounds = declare(initial_accumulator_value=NON_NEGATIVE, epsilon=POSITIVE)

    def __init__(
        self, learning_rate: float = 0.001, initial_accumulator_value: float = 0.1, epsilon: float = 1e-7, **kw: Any
    ) -> None:
        super().__init__(learning_rate, **kw)
        self.initial_accumulator_value = checked(self, "initial_accumulator_value", initial_accumulator_value)
        self.epsilon = checked(self, "epsilon", epsilon)
        self.slot_names = ("accumulator",)

    def _slot_init(self, name):
        return self.initial_accumulator_value

    def get_config(self):
        return {
            **super().get_config(),
            "initial_accumulator_value": self.initial_accumulator_value,
            "epsilon": self.epsilon,
        }

    def _update(self, w, g, slots, tmp, lr):
        xp = xp_of(w)
        acc = slots["accumulator"]
        xp.multiply(g, g, out=tmp)
        acc += tmp
        xp.add(acc, self.epsilon, out=tmp)
        xp.sqrt(tmp, out=tmp)
        xp.divide(g, tmp, out=tmp)
        tmp *= lr
        w -= tmp


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """Adam as Keras: epsilon is added to the *uncorrected* sqrt(v); the bias correction goes into
    the step size (PyTorch adds epsilon after correcting v, so the two differ slightly)."""

    keras_name = "adam"
    bounds = declare(beta_1=FRACTION, beta_2=FRACTION, epsilon=POSITIVE)

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(learning_rate, **kw)
        self.beta_1 = checked(self, "beta_1", beta_1)
        self.beta_2 = checked(self, "beta_2", beta_2)
        self.epsilon = checked(self, "epsilon", epsilon)
        self.amsgrad = bool(amsgrad)
        self.slot_names = ("momentum", "velocity") + (("velocity_hat",) if amsgrad else ())

    def get_config(self):
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "amsgrad": self.amsgrad,
        }

    def build(self, params: Any, segments: list[slice]) -> None:
        super().build(params, segments)
        fused = self._fused(params)
        if fused is not None:  # compiled (or loaded from numba's cache) now, not in the first step
            tiny, zero = np.zeros(1, dtype=params.dtype), params.dtype.type(0)
            fused.adam(tiny, tiny, tiny.copy(), tiny.copy(), zero, zero, zero, zero)

    def _fused(self, w: Any) -> Any:
        """The compiled kernels when they can run this update (NumPy arrays, no AMSGrad), else None."""
        return compiled.kernels() if xp_of(w).__name__ == "numpy" and not self.amsgrad else None

    def _update(self, w, g, slots, tmp, lr):
        xp = xp_of(w)
        # The bias correction in the weights' dtype, as Keras computes it: in float32,
        # 1 - 0.999**1 is 1.3e-5 off the exact 0.001. Exact (float64) corrections make every step
        # differ from Keras's by up to 7e-6, enough for a ReLU to flip on some sample after a few
        # steps and the trajectories to part: the seed MLP's 2-epoch loss then differs by 7e-4
        # (relative) from Keras's, 2e-7 with this (tests/test_keras_parity.py).
        f = w.dtype.type
        t = f(self.iterations)
        alpha = f(lr) * np.sqrt(f(1) - f(self.beta_2) ** t) / (f(1) - f(self.beta_1) ** t)
        m, v = slots["momentum"], slots["velocity"]
        fused = self._fused(w)
        if fused is not None:  # the passes below fused into one loop, the same bits
            fused.adam(w, g, m, v, f(1 - self.beta_1), f(1 - self.beta_2), f(self.epsilon), alpha)
            return
        xp.subtract(g, m, out=tmp)
        tmp *= 1 - self.beta_1
        m += tmp  # m = b1 m + (1 - b1) g
        xp.multiply(g, g, out=tmp)
        tmp -= v
        tmp *= 1 - self.beta_2
        v += tmp  # v = b2 v + (1 - b2) g^2
        if self.amsgrad:
            vhat = slots["velocity_hat"]
            xp.maximum(vhat, v, out=vhat)
            v = vhat
        xp.sqrt(v, out=tmp)
        tmp += self.epsilon
        xp.divide(m, tmp, out=tmp)
        tmp *= alpha
        w -= tmp


@OPTIMIZERS.register("adamw")
class AdamW(Adam):
    """Adam with decoupled weight decay (w -= lr * wd * w before the Adam step); Keras default 0.004."""

    keras_name = "adamw"

    def __init__(
        self,
        learning_rate: float = 0.001,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay=weight_decay, **kw)


def get(identifier: Any) -> Optimizer:
    """An Optimizer from a Keras name or `{type: ..., **args}`."""
    if isinstance(identifier, Optimizer):
        return identifier
    return build_from_spec(OPTIMIZERS, identifier)


def spec(opt: Optimizer) -> dict[str, Any]:
    return {"type": opt.keras_name, **opt.get_config()}
