"""SGD with momentum and Adam training a small net, step by step against PyTorch (CPU)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dlsoft.netdef.io import parse_solver_text
from dlsoft.solver import Solver

torch = pytest.importorskip("torch")

NET = """
net_param {{
  name: "mlp"
  layer {{ name: "data" type: "Input" top: "data" top: "target"
          input_param {{ shape {{ dim: 16 dim: 5 }} shape {{ dim: {target_shape} }} }} }}
  layer {{ name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
          param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
          inner_product_param {{ num_output: 10 weight_filler {{ type: "gaussian" std: 0.4 }}
                                bias_filler {{ type: "uniform" min: -0.1 max: 0.1 }} }} }}
  layer {{ name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }}
  layer {{ name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
          param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
          inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.4 }}
                                bias_filler {{ type: "uniform" min: -0.1 max: 0.1 }} }} }}
  layer {{ name: "loss" type: "{loss}" bottom: "ip2" bottom: "target" top: "loss" }}
}}
"""

STEPS = 20


def make_pair(solver_fields: str, loss: str):
    target_shape = "16 dim: 3" if loss == "EuclideanLoss" else "16"
    solver = Solver(parse_solver_text(NET.format(loss=loss, target_shape=target_shape) + solver_fields),
                    metrics=False)
    layers = []
    for name in ("ip1", "ip2"):
        weight, bias = solver.net.params[name]
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight.data.copy()))
            linear.bias.copy_(torch.from_numpy(bias.data.copy()))
        layers.append(linear)
    model = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1])
    return solver, model


def batches(loss: str):
    rng = np.random.default_rng(5)
    for _ in range(STEPS):
        x = rng.standard_normal((16, 5)).astype(np.float32)
        if loss == "EuclideanLoss":
            yield x, np.sin(x[:, :3] * 2).astype(np.float32)
        else:
            yield x, rng.integers(0, 3, 16).astype(np.float32)


def torch_loss(model, x, t, loss: str):
    out = model(torch.from_numpy(x))
    if loss == "EuclideanLoss":
        return ((out - torch.from_numpy(t)) ** 2).sum() / x.shape[0] / 2  # Caffe: sum / (2N)
    return torch.nn.functional.cross_entropy(out, torch.from_numpy(t).long())


def compare(solver, model):
    for name, linear in zip(("ip1", "ip2"), (model[0], model[2])):
        weight, bias = solver.net.params[name]
        np.testing.assert_allclose(weight.data, linear.weight.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(bias.data, linear.bias.detach().numpy(), rtol=1e-5, atol=1e-5)


def param_groups(model, base_lr: float, **settings):
    """Biases get lr_mult 2, as in the net."""
    weights = [model[0].weight, model[2].weight]
    biases = [model[0].bias, model[2].bias]
    return [dict(params=weights, lr=base_lr, **settings), dict(params=biases, lr=2 * base_lr, **settings)]


@pytest.mark.parametrize("loss", ["EuclideanLoss", "SoftmaxWithLoss"])
def test_sgd_momentum_matches_torch_step_by_step(loss):
    solver, model = make_pair('type: "SGD" base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 '
                              'weight_decay: 0.01 random_seed: 2', loss)
    # torch: buf = m*buf + (g + wd*w); w -= lr*buf. Caffe: v = m*v + lr*(g + wd*w); w -= v.
    # With a fixed lr, v = lr*buf: the same trajectory.
    optimizer = torch.optim.SGD(param_groups(model, 0.05, momentum=0.9, weight_decay=0.01))
    for x, t in batches(loss):
        solver.net.blobs["data"].data[...] = x
        solver.net.blobs["target"].data[...] = t
        solver.step(1)
        optimizer.zero_grad()
        reference = torch_loss(model, x, t, loss)
        reference.backward()
        optimizer.step()
        assert solver.net.blobs["loss"].data.item() == pytest.approx(reference.item(), rel=1e-5)
        compare(solver, model)


@pytest.mark.parametrize("loss", ["EuclideanLoss", "SoftmaxWithLoss"])
def test_adam_matches_torch_step_by_step(loss):
    b1, b2, eps = 0.9, 0.999, 1e-8
    solver, model = make_pair(f'type: "Adam" base_lr: 0.01 lr_policy: "fixed" momentum: {b1} momentum2: {b2} '
                              f'delta: {eps} weight_decay: 0.001 random_seed: 3', loss)
    optimizer = torch.optim.Adam(param_groups(model, 0.01, betas=(b1, b2), eps=eps, weight_decay=0.001))
    for step, (x, t) in enumerate(batches(loss), start=1):
        solver.net.blobs["data"].data[...] = x
        solver.net.blobs["target"].data[...] = t
        solver.step(1)
        # Caffe: lr*sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps); torch: lr/(1-b1^t) * m/(sqrt(v)/sqrt(1-b2^t)+eps).
        # They agree when torch's eps is eps/sqrt(1-b2^t).
        for group in optimizer.param_groups:
            group["eps"] = eps / math.sqrt(1 - b2 ** step)
        optimizer.zero_grad()
        torch_loss(model, x, t, loss).backward()
        optimizer.step()
        compare(solver, model)
