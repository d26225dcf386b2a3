"""Update rules and lr policies against hand-computed references (DESIGN.md section 2)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dlsoft.blob import Blob
from dlsoft.netdef.io import parse_solver_text
from dlsoft.solver import SOLVERS, Solver
from dlsoft.solver.lr_policy import LearningRate

TINY_NET = """
net_param {
  name: "tiny"
  layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
  layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
          param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
          inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                                bias_filler { type: "constant" value: 0.3 } } }
}
"""


def solver_param(text: str):
    return parse_solver_text(text)


# ----------------------------------------------------------------------------- lr policies

def rate_at(text: str, iteration: int) -> float:
    return LearningRate(solver_param(text))(iteration)


@pytest.mark.parametrize("text, reference", [
    ('lr_policy: "fixed" base_lr: 0.1', lambda i: 0.1),
    ('lr_policy: "step" base_lr: 0.1 gamma: 0.5 stepsize: 3', lambda i: 0.1 * 0.5 ** (i // 3)),
    ('lr_policy: "exp" base_lr: 0.1 gamma: 0.9', lambda i: 0.1 * 0.9 ** i),
    ('lr_policy: "inv" base_lr: 0.01 gamma: 0.0001 power: 0.75', lambda i: 0.01 * (1 + 0.0001 * i) ** -0.75),
    ('lr_policy: "poly" base_lr: 0.1 power: 2 max_iter: 10', lambda i: 0.1 * (1 - i / 10) ** 2),
    ('lr_policy: "sigmoid" base_lr: 0.1 gamma: -0.5 stepsize: 4',
     lambda i: 0.1 / (1 + math.exp(0.5 * (i - 4)))),
])
def test_lr_policy_matches_closed_form(text, reference):
    for i in (0, 1, 2, 3, 4, 5, 7, 9):
        assert rate_at(text, i) == pytest.approx(reference(i), rel=1e-6), i


def test_lr_policy_hand_values():
    assert rate_at('lr_policy: "step" base_lr: 0.01 gamma: 0.1 stepsize: 100', 250) == pytest.approx(1e-4, rel=1e-6)
    # LeNet's inv schedule at iteration 10000: 0.01 * (1 + 1) ** -0.75
    assert rate_at('lr_policy: "inv" base_lr: 0.01 gamma: 0.0001 power: 0.75', 10000) == pytest.approx(
        0.01 * 2 ** -0.75, rel=1e-6)
    assert rate_at('lr_policy: "poly" base_lr: 0.4 power: 1 max_iter: 4', 3) == pytest.approx(0.1, rel=1e-6)


def test_multistep_advances_one_step_per_call_and_peek_does_not():
    policy = LearningRate(solver_param('lr_policy: "multistep" base_lr: 1 gamma: 0.1 stepvalue: 2 stepvalue: 4'))
    rates = [policy(i) for i in range(6)]
    assert rates == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert policy.current_step == 2
    fresh = LearningRate(policy.param)
    assert fresh.peek(5) == pytest.approx(0.1)  # at most one step per call, as Caffe
    assert fresh.current_step == 0


# ----------------------------------------------------------------------------- update rules on plain blobs

def reference_updates(kind: str, p, grads: list[np.ndarray], lr: float) -> list[np.ndarray]:
    """The DESIGN.md formulas in float64: the update subtracted at each iteration."""
    m, v = np.zeros_like(grads[0]), np.zeros_like(grads[0])
    out = []
    for it, g in enumerate(grads):
        if kind == "SGD":
            m = p.momentum * m + lr * g
            u = m
        elif kind == "Nesterov":
            new = p.momentum * m + lr * g
            u = (1 + p.momentum) * new - p.momentum * m
            m = new
        elif kind == "AdaGrad":
            m = m + g * g
            u = lr * g / (np.sqrt(m) + p.delta)
        elif kind == "RMSProp":
            m = p.rms_decay * m + (1 - p.rms_decay) * g * g
            u = lr * g / (np.sqrt(m) + p.delta)
        elif kind == "AdaDelta":
            m = p.momentum * m + (1 - p.momentum) * g * g
            step = g * np.sqrt((v + p.delta) / (m + p.delta))
            v = p.momentum * v + (1 - p.momentum) * step * step
            u = lr * step
        elif kind == "Adam":
            t = it + 1
            m = p.momentum * m + (1 - p.momentum) * g
            v = p.momentum2 * v + (1 - p.momentum2) * g * g
            u = lr * math.sqrt(1 - p.momentum2 ** t) / (1 - p.momentum ** t) * m / (np.sqrt(v) + p.delta)
        out.append(u)
    return out


RULE_SETTINGS = {
    "SGD": "momentum: 0.9",
    "Nesterov": "momentum: 0.8",
    "AdaGrad": "delta: 1e-6",
    "RMSProp": "rms_decay: 0.95 delta: 1e-6",
    "AdaDelta": "momentum: 0.9 delta: 1e-6",
    "Adam": "momentum: 0.9 momentum2: 0.99 delta: 1e-8",
}


@pytest.mark.parametrize("kind", sorted(RULE_SETTINGS))
def test_update_rule_matches_formula_over_several_iterations(kind):
    p = solver_param(f'type: "{kind}" {RULE_SETTINGS[kind]}')
    rng = np.random.default_rng(3)
    blob = Blob((3, 4))
    rule = SOLVERS[kind](p, [blob])
    assert len(rule.history) == (2 if kind in ("AdaDelta", "Adam") else 1)
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    expected = reference_updates(kind, p, grads, lr=0.05)
    for it, (g, u) in enumerate(zip(grads, expected)):
        blob.diff[...] = g
        rule.compute(0, 0.05, it)
        np.testing.assert_allclose(blob.diff, u, rtol=2e-5, atol=1e-7, err_msg=f"{kind} iteration {it}")


def test_sgd_momentum_hand_values():
    """g = 1 every step, lr 0.1, momentum 0.9: updates 0.1, 0.19, 0.271."""
    blob = Blob((1,))
    rule = SOLVERS["SGD"](solver_param("momentum: 0.9"), [blob])
    for it, expected in enumerate([0.1, 0.19, 0.271]):
        blob.diff[...] = 1
        rule.compute(0, 0.1, it)
        assert float(blob.diff[0]) == pytest.approx(expected, rel=1e-6)


def test_adam_first_step_hand_value():
    """At t=1 the bias corrections make Adam's step lr * g/|g| (for |g| >> eps)."""
    blob = Blob((2,))
    rule = SOLVERS["Adam"](solver_param("momentum: 0.9 momentum2: 0.999"), [blob])
    blob.diff[...] = [0.5, -2.0]
    rule.compute(0, 0.01, 0)
    np.testing.assert_allclose(blob.diff, [0.01, -0.01], rtol=1e-5)


def test_adagrad_hand_values():
    blob = Blob((1,))
    rule = SOLVERS["AdaGrad"](solver_param("delta: 0"), [blob])
    blob.diff[...] = 3.0
    rule.compute(0, 0.1, 0)
    assert float(blob.diff[0]) == pytest.approx(0.1)  # 0.1 * 3 / sqrt(9)
    blob.diff[...] = 4.0
    rule.compute(0, 0.1, 1)
    assert float(blob.diff[0]) == pytest.approx(0.1 * 4 / 5)  # h = 9 + 16


# ----------------------------------------------------------------------------- the whole update on a net

def make_solver(extra: str) -> Solver:
    return Solver(solver_param(TINY_NET + 'lr_policy: "fixed" base_lr: 0.1 random_seed: 1 ' + extra),
                  metrics=False)


def test_apply_update_lr_mult_decay_mult_l2():
    solver = make_solver("momentum: 0 weight_decay: 0.01")
    weight, bias = solver.net.params["ip"]
    w0, b0 = weight.data.copy(), bias.data.copy()
    gw, gb = np.full(weight.shape, 0.5, np.float32), np.full(bias.shape, -1.0, np.float32)
    weight.diff[...], bias.diff[...] = gw, gb
    solver.apply_update()
    np.testing.assert_allclose(weight.data, w0 - 0.1 * (gw + 0.01 * w0), rtol=1e-6)
    np.testing.assert_allclose(bias.data, b0 - 0.2 * gb, rtol=1e-6)  # lr_mult 2, decay_mult 0
    np.testing.assert_allclose(weight.diff, 0.1 * (gw + 0.01 * w0), rtol=1e-6)  # the update, as Caffe leaves it


def test_apply_update_l1_regularization():
    solver = make_solver('momentum: 0 weight_decay: 0.5 regularization_type: "L1"')
    weight = solver.net.params["ip"][0]
    w0 = weight.data.copy()
    weight.diff[...] = 0
    solver.apply_update()
    np.testing.assert_allclose(weight.data, w0 - 0.1 * 0.5 * np.sign(w0), rtol=1e-6)


def test_clip_gradients_scales_by_global_norm():
    solver = make_solver("momentum: 0 clip_gradients: 1")
    weight, bias = solver.net.params["ip"]
    w0, b0 = weight.data.copy(), bias.data.copy()
    weight.diff[...] = 0
    weight.diff[0, 0] = 3.0
    bias.diff[...] = [4.0, 0.0]  # global norm 5 -> scale 0.2
    solver.apply_update()
    assert float(w0[0, 0] - weight.data[0, 0]) == pytest.approx(0.1 * 0.6, rel=1e-5)
    assert float(b0[0] - bias.data[0]) == pytest.approx(0.2 * 0.8, rel=1e-5)


def test_clip_gradients_leaves_small_gradients():
    solver = make_solver("momentum: 0 clip_gradients: 10")
    bias = solver.net.params["ip"][1]
    b0 = bias.data.copy()
    solver.net.params["ip"][0].diff[...] = 0
    bias.diff[...] = [3.0, 4.0]
    solver.apply_update()
    np.testing.assert_allclose(b0 - bias.data, 0.2 * np.array([3.0, 4.0]), rtol=1e-6)


def test_iter_size_divides_after_clipping():
    """Caffe clips the accumulated diff, then divides by iter_size."""
    solver = make_solver("momentum: 0 iter_size: 4 clip_gradients: 2")
    weight, bias = solver.net.params["ip"]
    b0 = bias.data.copy()
    weight.diff[...] = 0
    bias.diff[...] = [8.0, 0.0]  # norm 8 -> clipped to 2 -> / 4 -> 0.5
    solver.apply_update()
    assert float(b0[0] - bias.data[0]) == pytest.approx(0.2 * 0.5, rel=1e-6)


def test_history_buffers_are_reused():
    solver = make_solver("momentum: 0.9")
    history_ids = [id(h) for h in solver.history]
    for _ in range(3):
        for blob in solver.net.learnable_params:
            blob.diff[...] = 1
        solver.apply_update()
    assert [id(h) for h in solver.history] == history_ids
