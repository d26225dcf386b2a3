"""The CPU's fused SGD step gives exactly the numbers of the solver's separate named steps."""
from __future__ import annotations

import numpy as np
import pytest

from dlsoft.netdef.io import parse_net_text
from dlsoft.protos import caffe_pb2
from dlsoft.solver import Solver

NET = """
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 2 dim: 6 dim: 6 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _solver(regularization: str, iter_size: int) -> Solver:
    param = caffe_pb2.SolverParameter(base_lr=0.05, momentum=0.9, weight_decay=5e-3, lr_policy="fixed",
                                      max_iter=100, display=0, snapshot_after_train=False, random_seed=3,
                                      iter_size=iter_size, regularization_type=regularization)
    param.net_param.CopyFrom(parse_net_text(NET))
    solver = Solver(param, metrics=False, progress_bar=False)
    rng = np.random.default_rng(0)
    solver.net.blobs["data"].data[...] = rng.normal(size=(4, 2, 6, 6))
    solver.net.blobs["label"].data[...] = rng.integers(0, 5, 4)
    return solver


@pytest.mark.parametrize("regularization", ["L2", "L1"])
@pytest.mark.parametrize("iter_size", [1, 2])
def test_fused_sgd_step_equals_the_named_steps(regularization, iter_size):
    fused, steps = _solver(regularization, iter_size), _solver(regularization, iter_size)
    assert fused.rule.fused_step_cpu is not None
    steps.rule.fused_step_cpu = None  # this one runs normalize, regularize, compute_update, apply
    for _ in range(3):
        fused.step(1)
        steps.step(1)
    for a, b in zip(fused.net.learnable_params, steps.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.diff, b.diff)  # Caffe leaves the update in diff
    for a, b in zip(fused.rule.history, steps.rule.history):
        np.testing.assert_array_equal(a, b)
    assert not fused._decay_scratch  # no weight-decay buffer was needed
