"""Configuring a SolverParameter from the ``train`` command's flags (default solver, overrides)."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DlsoftError
from .options import ZOO_PREFIX, resolve

SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")


# ============================================================================ train
def has_test_phase(net_param) -> bool:
    from ..protos import caffe_pb2

    return any(rule.phase == caffe_pb2.TEST and rule.HasField("phase") for layer in net_param.layer
               for rule in layer.include) or \
        any(rule.phase == caffe_pb2.TRAIN and rule.HasField("phase") for layer in net_param.layer
            for rule in layer.exclude)


def default_test_interval(max_iter: int) -> int:
    """A test interval of at most 500 that divides ``max_iter`` (so the last iteration is tested)."""
    for parts in range(1, max_iter + 1):
        if max_iter % parts == 0 and max_iter // parts <= 500:
            interval = max_iter // parts
            return interval if interval * 20 >= max_iter else max_iter
    return max(max_iter, 1)


def default_solver(net_param, name: str = "net"):
    """A SolverParameter training ``net_param`` with dlsoft's defaults.

    SGD, lr 0.01 (fixed), momentum 0.9, 1,000 iterations, display every 100; if the
    net has TEST-phase layers, 10 test batches at an interval dividing max_iter.
    Snapshots go to ``<name>_iter_N.caffemodel`` in the current directory.
    """
    from ..protos import caffe_pb2

    solver = caffe_pb2.SolverParameter()
    solver.net_param.CopyFrom(net_param)
    solver.type = "SGD"
    solver.base_lr = 0.01
    solver.lr_policy = "fixed"
    solver.momentum = 0.9
    solver.max_iter = 1000
    solver.display = 100
    solver.snapshot_prefix = name
    if has_test_phase(net_param):
        solver.test_iter.append(10)
        solver.test_interval = default_test_interval(solver.max_iter)
    return solver


def set_train_batch_size(net_param, batch_size: int, where: str) -> int:
    """Set ``batch_size`` of the data layers used in the TRAIN phase; returns how many were changed."""
    from ..protos import caffe_pb2

    if batch_size < 1:
        raise DlsoftError(f"--batch-size must be at least 1, got {batch_size}")
    state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
    from ..netdef import graph

    changed = 0
    for layer in graph.filter_net(net_param, state).layer:
        for original in net_param.layer:
            if original.name != layer.name or list(original.include) != list(layer.include):
                continue
            for field in ("data_param", "image_data_param", "hdf5_data_param", "memory_data_param",
                          "window_data_param"):
                if original.HasField(field) and hasattr(getattr(original, field), "batch_size"):
                    getattr(original, field).batch_size = batch_size
                    changed += 1
            # Input and DummyData take the batch size from their shapes' first axis.
            shapes = list(original.input_param.shape) if original.type == "Input" else \
                list(original.dummy_data_param.shape) if original.type == "DummyData" else []
            for shape in shapes:
                if shape.dim:
                    shape.dim[0] = batch_size
            if original.type == "DummyData":
                nums = original.dummy_data_param.num
                nums[:] = [batch_size] * len(nums)
            changed += bool(shapes) or (original.type == "DummyData" and bool(original.dummy_data_param.num))
    if not changed:
        raise DlsoftError(f"--batch-size: the net in {where} has no TRAIN-phase data layer with a batch size")
    return changed


def absolute_net_paths(solver, solver_path: str | None) -> None:
    """Make the solver's net paths absolute: as written from the working directory (Caffe's
    rule), or else next to the solver file, so ``-solver`` works from any directory."""
    if solver_path is None:
        return
    base = Path(solver_path).resolve().parent

    def fix(path: str) -> str:
        if not path or os.path.isabs(path) or os.path.exists(path) or path.startswith(("builtin:", ZOO_PREFIX)):
            return resolve(path, "train_val") if path.startswith(ZOO_PREFIX) else path
        candidate = base / path
        return str(candidate) if candidate.exists() else path

    for i, path in enumerate(solver.weights):
        solver.weights[i] = ",".join(fix(part) for part in path.split(","))
    if solver.HasField("net"):
        solver.net = fix(solver.net)
    if solver.HasField("train_net"):
        solver.train_net = fix(solver.train_net)
    for i, path in enumerate(solver.test_net):
        solver.test_net[i] = fix(path)


def _train_net_param(solver, where: str):
    """(net parameter the solver trains, field it comes from), reading a net file if need be."""
    from ..netdef import io

    for field in ("train_net_param", "net_param"):
        if solver.HasField(field):
            return getattr(solver, field), field
    for field, param_field in (("train_net", "train_net_param"), ("net", "net_param")):
        if solver.HasField(field):
            getattr(solver, param_field).CopyFrom(io.read_net(getattr(solver, field)))
            solver.ClearField(field)
            return getattr(solver, param_field), param_field
    raise DlsoftError(f"{where} names no net (net, net_param, train_net or train_net_param)")


def apply_overrides(solver, where: str, *, lr=None, max_iter=None, batch_size=None, solver_type=None,
                    lr_policy=None, test_interval=None, test_iter=None, momentum=None, weight_decay=None,
                    display=None, snapshot_every=None, snapshot_prefix=None, seed=None, stages=(),
                    level=None) -> None:
    """Apply the ``train`` command's flags to a SolverParameter, in place."""
    if lr is not None:
        if lr <= 0:
            raise DlsoftError(f"--lr must be positive, got {lr}")
        solver.base_lr = lr
    if max_iter is not None:
        if max_iter < 0:
            raise DlsoftError(f"--max-iter must not be negative, got {max_iter}")
        solver.max_iter = max_iter
    if solver_type is not None:
        solver.type = solver_type
        solver.ClearField("solver_type")
    plain = {"lr_policy": lr_policy, "test_interval": test_interval, "momentum": momentum,
             "weight_decay": weight_decay, "display": display, "snapshot": snapshot_every,
             "snapshot_prefix": snapshot_prefix, "random_seed": seed}
    for field, value in plain.items():
        if value is not None:
            setattr(solver, field, value)
    if test_iter is not None:
        count = max(len(solver.test_iter), 1)
        solver.ClearField("test_iter")
        solver.test_iter.extend([test_iter] * count)
    if stages:
        solver.train_state.stage.extend(s for s in stages if s not in solver.train_state.stage)
    if level is not None:
        solver.train_state.level = level
    if batch_size is not None:
        net_param, _ = _train_net_param(solver, where)
        set_train_batch_size(net_param, batch_size, where)
