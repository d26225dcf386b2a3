"""Mutation builds: every layer of every shared net (../shared/caffe, ../shared/caffe-wild),
with random field values within and beyond range, must build or fail with a DlsoftError.

This is how issue 12's layer crashes were found, and it keeps them found. Each shared
net is built once (inputs made small: batch 2, at most 40x40 pixels, at most 16 outputs
per layer, data layers replaced by Input); then each mutation builds a two-layer net:
an Input giving the layer its bottoms (with their shapes in the built net, or now and
then a degenerate shape: 0-d, 1-d, a zero batch) and the layer with one field changed.
The seed is fixed, so a failure repeats.
"""
from __future__ import annotations

import logging
import random
import time
import traceback
import warnings
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor as FD

from dlsoft.errors import DlsoftError
from dlsoft.netdef import io
from dlsoft.netdef.net import Net
from dlsoft.protos import caffe_pb2

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
MUTATIONS = 6000
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "WindowData", "MemoryData", "DummyData", "AnnotatedData",
              "Python", "VideoData"}
INT_VALUES = [0, 1, 2, 3, -1, -2, 7, 2**31 - 1, -2**31, 1000, 65536, 2**20]
FLOAT_VALUES = [0.0, -1.0, 1.0, 0.5, 1e30, -1e30, float("nan"), float("inf"), 1e-30, 2.0, 100.0]
STRINGS = ["", "x", "../x", "/abs", "a.b"]
SHAPES = [(), (0,), (5,), (2, 3), (0, 3, 8, 8), (1, 1, 1, 1), (2, 3, 1, 1), (1, 2, 3, 4, 5), (2, 0, 4, 4)]


def _small(dims: list[int]) -> list[int]:
    return [min(d, 2) if i == 0 else d if i == 1 else min(d, 40) for i, d in enumerate(dims)]


def shrink(net: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Small inputs and narrow layers, so that building costs milliseconds, not gigabytes."""
    for layer in net.layer:
        if layer.type in DATA_TYPES:
            name, tops, include = layer.name, list(layer.top), list(layer.include)
            layer.Clear()
            layer.name, layer.type = name, "Input"
            layer.top.extend(tops)
            layer.include.extend(include)
            for i in range(len(tops)):
                layer.input_param.shape.add(dim=[2, 3, 32, 32] if i == 0 else [2])
        for shape in layer.input_param.shape:
            dims = _small(list(shape.dim))
            shape.ClearField("dim")
            shape.dim.extend(dims)
        for p in (layer.convolution_param, layer.inner_product_param, layer.embed_param):
            if p.HasField("num_output") and p.num_output > 16:
                p.num_output = 16
    for shape in net.input_shape:
        dims = _small(list(shape.dim))
        shape.ClearField("dim")
        shape.dim.extend(dims)
    if net.input_dim:
        dims = list(net.input_dim)
        net.ClearField("input_dim")
        net.input_dim.extend(d for i in range(0, len(dims), 4) for d in _small(dims[i:i + 4]))
    return net


def layer_cases() -> list[tuple]:
    """(file, phase, layer parameter, bottom names, bottom shapes) of every layer of every net that builds."""
    cases = []
    for path in sorted(SHARED.glob("caffe*/**/*.prototxt")):
        try:
            net = io.read_net(path)
        except DlsoftError:
            continue  # solvers, and nets our schema cannot read
        if not net.layer:
            continue
        shrink(net)
        for phase in ("TEST", "TRAIN"):
            try:
                built = Net(net, phase=phase)
            except DlsoftError:
                continue  # shrinking broke it (a kernel larger than the small input, say)
            for layer, bottoms in zip(built.layers, built.bottom_ids):
                if layer.type != "Split":
                    param = caffe_pb2.LayerParameter()
                    param.CopyFrom(layer.param)
                    cases.append((path, phase, param, list(layer.param.bottom), [b.shape for b in bottoms]))
            built.close()
            break
    return cases


def _repeated(fd) -> bool:
    return fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == FD.LABEL_REPEATED


def scalar_fields(msg) -> list:
    """(message, field) for every scalar field of ``msg`` and of its set sub-messages."""
    out = []
    for fd in msg.DESCRIPTOR.fields:
        if fd.message_type is None:
            out.append((msg, fd))
        elif _repeated(fd):
            for item in getattr(msg, fd.name):
                out += scalar_fields(item)
        elif msg.HasField(fd.name):
            out += scalar_fields(getattr(msg, fd.name))
    return out


def mutate(layer: caffe_pb2.LayerParameter, rng: random.Random) -> str | None:
    """Set one scalar field of ``layer`` to a value in or out of its range; what was done."""
    fields = [(m, fd) for m, fd in scalar_fields(layer) if fd.name not in ("name", "type", "bottom", "top")]
    if not fields:
        return None
    msg, fd = fields[rng.randrange(len(fields))]
    if fd.type == FD.TYPE_ENUM:
        value = rng.choice([v.number for v in fd.enum_type.values])
    elif fd.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        value = rng.choice(FLOAT_VALUES)
    elif fd.type == FD.TYPE_BOOL:
        value = rng.random() < 0.5
    elif fd.type == FD.TYPE_STRING:
        value = rng.choice(STRINGS)
    elif fd.type == FD.TYPE_BYTES:
        value = rng.choice(STRINGS).encode()
    else:
        value = rng.choice(INT_VALUES)
        if fd.type in (FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64):
            value = abs(value)
    try:
        if _repeated(fd):
            field = getattr(msg, fd.name)
            action = rng.randrange(3)
            if action == 0 and len(field):
                field[rng.randrange(len(field))] = value
            elif action == 1:
                field.append(value)
            else:
                del field[:]
                field.append(value)
        else:
            setattr(msg, fd.name, value)
    except (ValueError, TypeError):  # out of the field's own range: protobuf refuses it already
        return None
    return f"{msg.DESCRIPTOR.name}.{fd.name} = {value!r}"


def pair_net(param, bottoms: list[str], shapes: list[tuple]) -> caffe_pb2.NetParameter:
    """An Input layer feeding ``bottoms`` with ``shapes``, then the layer ``param``."""
    net = caffe_pb2.NetParameter(name="mutant")
    given: dict[str, tuple] = {}
    for name, shape in zip(bottoms, shapes):
        given.setdefault(name, shape)
    if given:
        feed = net.layer.add(name="mutation_feed", type="Input")
        for name, shape in given.items():
            feed.top.append(name)
            feed.input_param.shape.add(dim=list(shape))
    net.layer.add().CopyFrom(param)
    return net


@pytest.fixture(scope="module")
def cases():
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not present")
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = layer_cases()
    finally:
        logging.disable(logging.NOTSET)
    assert len(found) > 3000  # dozens of nets, thousands of layers
    return found


def test_mutated_layers_build_or_fail_with_a_dlsoft_error(cases, monkeypatch):
    # Mutants asking for more than 64 MiB are refused by the memory check (a DlsoftError
    # too), so the test stays fast and light whatever memory the machine has free.
    monkeypatch.setenv("DLSOFT_MEMORY_LIMIT", str(64 << 20))
    rng = random.Random(12)
    failures: dict[tuple, str] = {}
    builds = 0
    start = time.perf_counter()
    logging.disable(logging.WARNING)
    try:
        for _ in range(MUTATIONS):
            path, phase, base, bottoms, shapes = cases[rng.randrange(len(cases))]
            param = caffe_pb2.LayerParameter()
            param.CopyFrom(base)
            shapes = list(shapes)
            if shapes and rng.random() < 0.15:
                shapes[rng.randrange(len(shapes))] = rng.choice(SHAPES)
                what = f"bottom shapes {shapes}"
            else:
                what = mutate(param, rng)
            if what is None:
                continue
            builds += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    Net(pair_net(param, bottoms, shapes), phase=phase).close()
            except DlsoftError:
                pass
            except Exception as exc:  # noqa: BLE001 - this is what the test hunts
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                key = (type(exc).__name__, Path(frame.filename).name, frame.lineno)
                failures.setdefault(key, f"{path.relative_to(SHARED)} ({phase}) layer '{param.name}' "
                                         f"(type {param.type}), {what}: {type(exc).__name__}: {exc}")
    finally:
        logging.disable(logging.NOTSET)
    elapsed = time.perf_counter() - start
    assert builds > 2000
    assert not failures, f"{len(failures)} kind(s) of non-Dlsoft errors in {builds} builds ({elapsed:.0f} s):\n" + \
        "\n".join(f"{key}: {case}" for key, case in failures.items())
