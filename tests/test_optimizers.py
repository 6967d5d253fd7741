"""Optimizers: three steps against Keras's update rules written out by hand, defaults, clipping, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dlrun.engine import compiled, optimizers
from dlrun.engine.optimizers import SGD, Adagrad, Adam, AdamW, RMSprop

W0 = np.array([0.5, -1.2, 2.0, 0.0, -0.3, 1.1])
# Three fixed gradients of shrinking size (so AMSGrad's running max differs from plain Adam).
GRADS = [
    np.array([0.4, -1.0, 0.25, 2.0, -0.6, 0.1]),
    np.array([-0.1, 0.05, 0.2, -0.3, 0.15, 0.02]),
    np.array([0.03, -0.02, -0.05, 0.1, 0.01, -0.04]),
]


# -- Keras's rules, by hand (float64) ---------------------------------------------------------------------
def ref_sgd(w, grads, lr=0.01, momentum=0.0, nesterov=False, weight_decay=None):
    w, v = w.copy(), np.zeros_like(w)
    for g in grads:
        if weight_decay:
            w = w - lr * weight_decay * w
        v = momentum * v - lr * g
        w = w + (momentum * v - lr * g if nesterov else v)
    return w


def ref_rmsprop(w, grads, lr=1e-3, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):
    w, v, a, m = w.copy(), np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for g in grads:
        v = rho * v + (1 - rho) * g**2
        if centered:
            a = rho * a + (1 - rho) * g
            denom = v - a**2 + epsilon
        else:
            denom = v + epsilon  # epsilon inside the root
        inc = lr * g / np.sqrt(denom)
        if momentum:
            m = momentum * m + inc
            w = w - m
        else:
            w = w - inc
    return w


def ref_adagrad(w, grads, lr=1e-3, initial_accumulator_value=0.1, epsilon=1e-7):
    w, acc = w.copy(), np.full_like(w, initial_accumulator_value)
    for g in grads:
        acc = acc + g**2
        w = w - lr * g / np.sqrt(acc + epsilon)
    return w


def ref_adam(w, grads, lr=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, weight_decay=None):
    w, m, v, vhat = w.copy(), np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        if weight_decay:
            w = w - lr * weight_decay * w  # decoupled decay before the Adam step
        alpha = lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        if amsgrad:
            vhat = np.maximum(vhat, v)
            denom = np.sqrt(vhat) + epsilon
        else:
            denom = np.sqrt(v) + epsilon  # epsilon on the *uncorrected* sqrt(v)
        w = w - alpha * m / denom
    return w


def run(opt, w0=W0, grads=GRADS, dtype=np.float64, segments=None):
    params = w0.astype(dtype)
    opt.build(params, segments or [slice(0, params.size)])
    for g in grads:
        opt.apply(params, g.astype(dtype).copy())
    return params


CASES = {
    "sgd": (lambda: SGD(), lambda: ref_sgd(W0, GRADS)),
    "sgd_lr": (lambda: SGD(learning_rate=0.3), lambda: ref_sgd(W0, GRADS, lr=0.3)),
    "sgd_momentum": (lambda: SGD(0.1, momentum=0.9), lambda: ref_sgd(W0, GRADS, 0.1, 0.9)),
    "sgd_nesterov": (lambda: SGD(0.1, momentum=0.9, nesterov=True), lambda: ref_sgd(W0, GRADS, 0.1, 0.9, True)),
    "sgd_weight_decay": (lambda: SGD(0.1, weight_decay=0.5), lambda: ref_sgd(W0, GRADS, 0.1, weight_decay=0.5)),
    "rmsprop": (lambda: RMSprop(), lambda: ref_rmsprop(W0, GRADS)),
    "rmsprop_big_eps": (lambda: RMSprop(0.01, epsilon=0.05), lambda: ref_rmsprop(W0, GRADS, 0.01, epsilon=0.05)),
    "rmsprop_momentum": (lambda: RMSprop(0.01, momentum=0.8), lambda: ref_rmsprop(W0, GRADS, 0.01, momentum=0.8)),
    "rmsprop_centered": (
        lambda: RMSprop(0.01, rho=0.8, centered=True),
        lambda: ref_rmsprop(W0, GRADS, 0.01, rho=0.8, centered=True),
    ),
    "rmsprop_centered_momentum": (
        lambda: RMSprop(0.01, momentum=0.5, centered=True),
        lambda: ref_rmsprop(W0, GRADS, 0.01, momentum=0.5, centered=True),
    ),
    "adagrad": (lambda: Adagrad(), lambda: ref_adagrad(W0, GRADS)),
    "adagrad_custom": (
        lambda: Adagrad(0.5, initial_accumulator_value=0.0, epsilon=1e-3),
        lambda: ref_adagrad(W0, GRADS, 0.5, 0.0, 1e-3),
    ),
    "adam": (lambda: Adam(), lambda: ref_adam(W0, GRADS)),
    "adam_custom": (lambda: Adam(0.05, beta_1=0.5, beta_2=0.8), lambda: ref_adam(W0, GRADS, 0.05, 0.5, 0.8)),
    "adam_big_eps": (lambda: Adam(0.05, epsilon=0.1), lambda: ref_adam(W0, GRADS, 0.05, epsilon=0.1)),
    "adam_amsgrad": (
        lambda: Adam(0.05, beta_2=0.9, amsgrad=True),
        lambda: ref_adam(W0, GRADS, 0.05, beta_2=0.9, amsgrad=True),
    ),
    "adamw": (lambda: AdamW(), lambda: ref_adam(W0, GRADS, weight_decay=0.004)),
    "adamw_custom": (
        lambda: AdamW(0.05, weight_decay=0.3, amsgrad=True),
        lambda: ref_adam(W0, GRADS, 0.05, weight_decay=0.3, amsgrad=True),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_three_steps_match_keras_rule_float64(case):
    make, ref = CASES[case]
    opt = make()
    w = run(opt)
    expected = ref()
    assert w.dtype == np.float64
    assert not np.allclose(expected, W0)  # the reference moved the weights
    np.testing.assert_allclose(w, expected, rtol=1e-12, atol=1e-15)
    assert opt.iterations == 3


@pytest.mark.parametrize("case", list(CASES))
def test_three_steps_float32_stay_float32(case):
    make, ref = CASES[case]
    opt = make()
    w = run(opt, dtype=np.float32)
    assert w.dtype == np.float32
    assert all(s.dtype == np.float32 for s in opt.slots.values())
    np.testing.assert_allclose(w, ref(), rtol=2e-5, atol=2e-6)


def test_rules_are_distinguishable():
    """The hand references differ where Keras's placement matters, so the tests above can fail."""
    # Adam: epsilon on the uncorrected sqrt(v) vs PyTorch's sqrt(v_hat) + eps.
    w = W0.copy()
    m = v = 0.0
    lr, eps = 0.05, 0.1
    for t, g in enumerate(GRADS, 1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g**2
        w = w - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + eps)
    assert not np.allclose(w, ref_adam(W0, GRADS, lr, epsilon=eps), rtol=1e-6)
    # AMSGrad and Nesterov change the result for these gradients.
    assert not np.allclose(ref_adam(W0, GRADS, 0.05, beta_2=0.9, amsgrad=True), ref_adam(W0, GRADS, 0.05, beta_2=0.9))
    assert not np.allclose(ref_sgd(W0, GRADS, 0.1, 0.9, True), ref_sgd(W0, GRADS, 0.1, 0.9))
    # RMSprop epsilon inside vs outside the root.
    outside = W0.copy()
    vv = 0.0
    for g in GRADS:
        vv = 0.9 * vv + 0.1 * g**2
        outside = outside - 0.01 * g / (np.sqrt(vv) + 0.05)
    assert not np.allclose(outside, ref_rmsprop(W0, GRADS, 0.01, epsilon=0.05), rtol=1e-6)


def test_adam_first_step_closed_form():
    # Step 1: alpha = lr * sqrt(1 - b2) / (1 - b1), m = (1 - b1) g, sqrt(v) = sqrt(1 - b2) |g|, so the step is
    # lr * sign(g) * s / (s + eps) with s = sqrt(1 - b2) |g|: about lr * sign(g), epsilon on the uncorrected root.
    g = GRADS[0]
    w = run(Adam(0.01), grads=[g])
    s = math.sqrt(0.001) * np.abs(g)
    np.testing.assert_allclose(W0 - w, 0.01 * np.sign(g) * s / (s + 1e-7), rtol=1e-12)
    np.testing.assert_allclose(W0 - w, 0.01 * np.sign(g), rtol=1e-4)


# -- defaults ----------------------------------------------------------------------------------------------
def test_defaults_equal_keras():
    s = SGD()
    assert (s.learning_rate, s.momentum, s.nesterov) == (0.01, 0.0, False)
    r = RMSprop()
    assert (r.learning_rate, r.rho, r.momentum, r.epsilon, r.centered) == (1e-3, 0.9, 0.0, 1e-7, False)
    a = Adagrad()
    assert (a.learning_rate, a.initial_accumulator_value, a.epsilon) == (1e-3, 0.1, 1e-7)
    ad = Adam()
    assert (ad.learning_rate, ad.beta_1, ad.beta_2, ad.epsilon, ad.amsgrad) == (1e-3, 0.9, 0.999, 1e-7, False)
    aw = AdamW()
    assert (aw.learning_rate, aw.weight_decay, aw.beta_1, aw.beta_2, aw.epsilon, aw.amsgrad) == (
        1e-3,
        0.004,
        0.9,
        0.999,
        1e-7,
        False,
    )
    for opt in (s, r, a, ad):
        assert opt.weight_decay is None
        assert (opt.clipnorm, opt.clipvalue, opt.global_clipnorm) == (None, None, None)
        assert opt.iterations == 0


def test_adagrad_accumulator_starts_at_0_1():
    opt = Adagrad()
    opt.build(W0.copy(), [slice(0, 6)])
    np.testing.assert_array_equal(opt.slots["accumulator"], 0.1)


@pytest.mark.parametrize(
    "name,cls",
    [
        ("sgd", SGD),
        ("SGD", SGD),
        ("adam", Adam),
        ("Adam", Adam),
        ("adamw", AdamW),
        ("AdamW", AdamW),
        ("rmsprop", RMSprop),
        ("RMSprop", RMSprop),
        ("adagrad", Adagrad),
    ],
)
def test_lookup_by_name(name, cls):
    assert type(optimizers.get(name)) is cls


def test_spec_round_trip():
    opt = optimizers.get({"type": "adam", "learning_rate": 0.01, "beta_1": 0.8, "clipnorm": 1.0})
    assert isinstance(opt, Adam) and opt.learning_rate == 0.01 and opt.beta_1 == 0.8 and opt.clipnorm == 1.0
    again = optimizers.get(optimizers.spec(opt))
    assert type(again) is Adam and again.get_config() == opt.get_config()
    with pytest.raises(TypeError, match="beta1"):
        optimizers.get({"type": "adam", "beta1": 0.9})


# -- clipping ----------------------------------------------------------------------------------------------
def test_clipvalue_clips_each_element():
    g = np.array([3.0, -0.2, -5.0, 0.4])
    w = run(SGD(1.0, clipvalue=0.5), w0=np.zeros(4), grads=[g])
    np.testing.assert_allclose(w, -np.array([0.5, -0.2, -0.5, 0.4]))


def test_clipnorm_clips_each_variable_by_its_own_norm():
    g = np.array([3.0, 4.0, 0.0, 0.3, 0.4, 0.0])  # norms 5 and 0.5
    w = run(SGD(1.0, clipnorm=1.0), w0=np.zeros(6), grads=[g], segments=[slice(0, 3), slice(3, 6)])
    np.testing.assert_allclose(w, -np.array([0.6, 0.8, 0.0, 0.3, 0.4, 0.0]), rtol=1e-12)


def test_global_clipnorm_clips_by_the_norm_of_everything():
    g = np.array([3.0, 4.0, 0.0, 0.0, 0.0, 12.0])  # global norm 13
    w = run(SGD(1.0, global_clipnorm=1.3), w0=np.zeros(6), grads=[g], segments=[slice(0, 3), slice(3, 6)])
    np.testing.assert_allclose(w, -g / 10, rtol=1e-12)
    small = np.array([0.1, 0.2, 0.0, 0.0, 0.0, 0.2])
    w = run(SGD(1.0, global_clipnorm=1.3), w0=np.zeros(6), grads=[small], segments=[slice(0, 3), slice(3, 6)])
    np.testing.assert_allclose(w, -small, rtol=1e-12)


def test_clipping_happens_before_the_adam_update():
    g = np.array([30.0, 40.0])
    clipped = run(Adam(0.1, global_clipnorm=5.0), w0=np.ones(2), grads=[g, g])
    np.testing.assert_allclose(clipped, ref_adam(np.ones(2), [g / 10, g / 10], 0.1), rtol=1e-12)


def test_clipping_in_float32():
    g = np.array([3.0, 4.0], dtype=np.float32)
    w = run(SGD(1.0, clipnorm=1.0), w0=np.zeros(2), grads=[g], dtype=np.float32)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [-0.6, -0.8], rtol=1e-6)


def test_only_one_clipping_option():
    with pytest.raises(ValueError, match="only one"):
        SGD(clipnorm=1.0, clipvalue=1.0)


# -- validation --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "factory,needle",
    [
        (lambda: SGD(learning_rate=-1), "learning_rate=-1"),
        (lambda: Adam(learning_rate=0), "learning_rate=0"),
        (lambda: Adam(learning_rate="0.1"), "learning_rate='0.1'"),
        (lambda: Adam(beta_1=1.5), "beta_1=1.5"),
        (lambda: Adam(beta_2=-0.1), "beta_2=-0.1"),
        (lambda: Adam(epsilon=0), "epsilon=0"),
        (lambda: SGD(momentum=-0.5), "momentum=-0.5"),
        (lambda: RMSprop(rho=1.0), "rho=1.0"),
        (lambda: Adagrad(initial_accumulator_value=-1), "initial_accumulator_value=-1"),
        (lambda: AdamW(weight_decay=-0.1), "weight_decay=-0.1"),
        (lambda: SGD(clipnorm=0), "clipnorm=0"),
        (lambda: SGD(clipvalue=-1.0), "clipvalue=-1.0"),
    ],
)
def test_invalid_arguments_raise_value_error_quoting_the_value(factory, needle):
    with pytest.raises(ValueError) as err:
        factory()
    assert needle in str(err.value)


@pytest.mark.parametrize("case", list(CASES))
def test_big_buffers_updated_in_pieces_match_one_whole_update(case, monkeypatch):
    """With the CPU workers running, large buffers are updated piece by piece over the workers:
    the result must be bit-identical to one whole-buffer update."""
    make, _ = CASES[case]
    rng = np.random.default_rng(0)
    n = 4 * optimizers.UPDATE_PIECE + 12345
    w0 = rng.normal(size=n).astype(np.float32)
    grads = [rng.normal(size=n).astype(np.float32) for _ in range(3)]

    def train(pieces: bool) -> tuple[np.ndarray, dict]:
        monkeypatch.setattr(optimizers, "workers", lambda: 2 if pieces else 1)
        opt, w = make(), w0.copy()
        opt.build(w, [slice(0, n)])
        for g in grads:
            opt.apply(w, g.copy())
        return w, opt.slots

    (whole, whole_slots), (pieced, pieced_slots) = train(False), train(True)
    np.testing.assert_array_equal(pieced, whole)
    for name in whole_slots:
        np.testing.assert_array_equal(pieced_slots[name], whole_slots[name])


@pytest.mark.parametrize("numba", [False, True], ids=["numpy", "numba"])
def test_flush_subnormals_zeroes_what_is_below_2_to_the_minus_100(numba, monkeypatch):
    if numba:
        pytest.importorskip("dlrun.engine.numba_kernels")
    else:
        monkeypatch.setattr(compiled, "kernels", lambda: None)
    flush_subnormals = optimizers.flush_subnormals
    for dtype in (np.float32, np.float64):
        x = np.array([1e-39, -1e-40, 2.0**-101, -(2.0**-100), 1e-29, -3.0, 0.0, np.inf, -np.inf], dtype)
        flush_subnormals(x, np.empty_like(x))
        expected = np.array([0, 0, 0, -(2.0**-100), 1e-29, -3.0, 0, np.inf, -np.inf], dtype)
        np.testing.assert_array_equal(x, expected)
        y = np.array([np.nan], dtype)
        flush_subnormals(y, np.empty_like(y))
        assert np.isnan(y[0])


@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop", "adamw"])
def test_slots_of_weights_without_gradient_never_turn_subnormal_and_weights_are_unchanged(name, monkeypatch):
    """Half the weights get no gradient (dead ReLUs): their slots decay towards 0. Flushed every
    FLUSH_EVERY steps they never reach the subnormal range (slow on x86), and the weights come out
    bit-identical to an optimizer that never flushes."""

    def run(flush_every: int) -> tuple[np.ndarray, int]:
        monkeypatch.setattr(optimizers, "FLUSH_EVERY", flush_every)
        spec = {"type": name, "momentum": 0.9} if name == "sgd" else name
        opt = optimizers.get(spec)
        rng = np.random.default_rng(0)
        w = rng.standard_normal(4096).astype(np.float32)
        opt.build(w, [slice(0, 4096)])
        worst = 0
        for step in range(900):
            g = (rng.standard_normal(4096) * 1e-2).astype(np.float32)
            if step >= 20:
                g[:2048] = 0
            opt.apply(w, g)
            for s in opt.slots.values():
                worst = max(worst, int(np.count_nonzero((s != 0) & (np.abs(s) < np.finfo(np.float32).tiny))))
        return w, worst

    w_flushed, subnormal_flushed = run(16)
    w_plain, subnormal_plain = run(10**9)
    assert subnormal_plain > 0  # the case is real: without flushing, slots do go subnormal
    assert subnormal_flushed == 0
    np.testing.assert_array_equal(w_flushed, w_plain)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_compiled_adam_gives_the_bits_of_the_numpy_passes(name, dtype, monkeypatch):
    """The numba kernel fuses Adam's twelve NumPy passes: a run's weights and moments must not
    depend on whether numba is installed."""
    kernels = pytest.importorskip("dlrun.engine.numba_kernels")
    calls, flushes = [], []

    class Counted:
        def adam(self, *args):
            calls.append(1)
            kernels.adam(*args)

        def flush_below(self, *args):
            flushes.append(1)
            kernels.flush_below(*args)

    def train(fused: object) -> tuple[np.ndarray, dict]:
        monkeypatch.setattr(compiled, "kernels", lambda: fused)
        rng = np.random.default_rng(0)
        opt, w = optimizers.get({"type": name, "learning_rate": 0.01}), rng.normal(size=5000).astype(dtype)
        opt.build(w, [slice(0, 3000), slice(3000, 5000)])
        for _ in range(40):  # past FLUSH_EVERY, so the flushes run on both paths
            opt.apply(w, (rng.normal(size=5000) * 0.1).astype(dtype))
        return w, opt.slots

    (w_numpy, slots_numpy), (w_fused, slots_fused) = train(None), train(Counted())
    assert len(calls) > 40  # the kernel ran (the build's warm-up call and every step)
    assert flushes  # and so did the compiled flush
    np.testing.assert_array_equal(w_fused, w_numpy)
    for slot in slots_numpy:
        np.testing.assert_array_equal(slots_fused[slot], slots_numpy[slot])
