"""Configuring a SolverParameter in code: dlsoft's default solver for a bare net, and
overrides of a solver file's settings (what ``dlsoft train``'s flags do).

The CLI and the Python API configure a solver the same way::

    param = config.default_solver(io.read_net("net.prototxt"), name="net")
    config.apply_overrides(param, "net.prototxt", config.Overrides(lr=0.05, max_iter=500))
    solver = Solver(param)

``SOLVER_TYPES`` are the update rules' names (the registry in :mod:`.updates`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import DlsoftError
from ..netdef import graph, io
from ..protos import caffe_pb2
from ..zoo_ref import is_zoo_ref
from .updates import RULES

#: Every solver ``type`` there is an update rule for, in the registry's order.
SOLVER_TYPES = tuple(RULES)


def has_test_phase(net_param) -> bool:
    """Whether ``net_param`` has layers only the TEST phase includes (so a default solver tests it)."""
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
    if batch_size < 1:
        raise DlsoftError(f"--batch-size must be at least 1, got {batch_size}")
    state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
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


def absolute_net_paths(solver, solver_path: str | None, resolve_ref=None) -> None:
    """Make the solver's net paths absolute: as written from the working directory (Caffe's
    rule), or else next to the solver file, so ``-solver`` works from any directory.
    ``zoo:`` references go through ``resolve_ref(ref, kind)`` when given (the CLI passes
    the model zoo's resolver), and stay as they are otherwise."""
    if solver_path is None:
        return
    base = Path(solver_path).resolve().parent

    def fix(path: str) -> str:
        if is_zoo_ref(path):
            return resolve_ref(path, "train_val") if resolve_ref is not None else path
        if not path or os.path.isabs(path) or os.path.exists(path) or path.startswith("builtin:"):
            return path
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
    for field in ("train_net_param", "net_param"):
        if solver.HasField(field):
            return getattr(solver, field), field
    for field, param_field in (("train_net", "train_net_param"), ("net", "net_param")):
        if solver.HasField(field):
            getattr(solver, param_field).CopyFrom(io.read_net(getattr(solver, field)))
            solver.ClearField(field)
            return getattr(solver, param_field), param_field
    raise DlsoftError(f"{where} names no net (net, net_param, train_net or train_net_param)")


@dataclass(frozen=True)
class Overrides:
    """Settings that replace a solver file's (the ``train`` command's flags, by their names).

    ``None`` (and no ``stages``) leaves a field as the file has it. ``snapshot_every`` is
    the solver's ``snapshot``, ``seed`` its ``random_seed``, ``solver_type`` its ``type``;
    ``batch_size`` goes to the TRAIN-phase data layers of the net the solver trains.
    """

    lr: float | None = None
    max_iter: int | None = None
    batch_size: int | None = None
    solver_type: str | None = None
    lr_policy: str | None = None
    test_interval: int | None = None
    test_iter: int | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    display: int | None = None
    snapshot_every: int | None = None
    snapshot_prefix: str | None = None
    seed: int | None = None
    stages: tuple[str, ...] = ()
    level: int | None = None

    def any(self) -> bool:
        """Whether any setting is given."""
        return bool(self.stages) or any(getattr(self, f.name) is not None for f in fields(self) if f.name != "stages")


def apply_overrides(solver, where: str, overrides: Overrides) -> None:
    """Apply ``overrides`` to a SolverParameter, in place (``where`` names it in errors)."""
    o = overrides
    if o.lr is not None:
        if o.lr <= 0:
            raise DlsoftError(f"--lr must be positive, got {o.lr}")
        solver.base_lr = o.lr
    if o.max_iter is not None:
        if o.max_iter < 0:
            raise DlsoftError(f"--max-iter must not be negative, got {o.max_iter}")
        solver.max_iter = o.max_iter
    if o.solver_type is not None:
        solver.type = o.solver_type
        solver.ClearField("solver_type")
    plain = {"lr_policy": o.lr_policy, "test_interval": o.test_interval, "momentum": o.momentum,
             "weight_decay": o.weight_decay, "display": o.display, "snapshot": o.snapshot_every,
             "snapshot_prefix": o.snapshot_prefix, "random_seed": o.seed}
    for field, value in plain.items():
        if value is not None:
            setattr(solver, field, value)
    if o.test_iter is not None:
        count = max(len(solver.test_iter), 1)
        solver.ClearField("test_iter")
        solver.test_iter.extend([o.test_iter] * count)
    if o.stages:
        solver.train_state.stage.extend(s for s in o.stages if s not in solver.train_state.stage)
    if o.level is not None:
        solver.train_state.level = o.level
    if o.batch_size is not None:
        net_param, _ = _train_net_param(solver, where)
        set_train_batch_size(net_param, o.batch_size, where)


def field_line(path: str | None, field: str) -> int | None:
    """The line where ``field`` is first set in a solver file, for error messages."""
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if re.match(rf"\s*{re.escape(field)}\s*:", line):
                    return number
    except OSError:
        return None
    return None
