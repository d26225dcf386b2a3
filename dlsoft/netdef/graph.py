"""The static graph: from a NetParameter to the ordered list of layers a Net runs.

Each step works on protobuf messages only; no layer code is involved:

1. :func:`filter_net` keeps the layers whose NetStateRules match the state
   (phase, level, stages), as Caffe's ``Net::FilterNet``.
2. :func:`insert_splits` gives each top consumed by several bottoms (or used as a loss
   and consumed) a ``Split`` layer, named exactly as Caffe names them, so that the
   gradients flowing back are summed.
3. :func:`check_bottoms` checks that every bottom has a producer earlier in the list
   (the layer list is the topological order, as in Caffe).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ..errors import NetDefinitionError
from ..protos import caffe_pb2

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


def make_state(net_param, phase: str | int | None = None, level: int | None = None,
               stages=()) -> "caffe_pb2.NetState":
    """The NetState for a net: the file's ``state``, overridden by the arguments."""
    state = caffe_pb2.NetState()
    state.CopyFrom(net_param.state)
    if phase is not None:
        state.phase = parse_phase(phase)
    if level is not None:
        state.level = int(level)
    for stage in stages:
        if stage not in state.stage:
            state.stage.append(stage)
    return state


def parse_phase(phase) -> int:
    """``"TRAIN"``/``"TEST"`` (any case) or Caffe's number 0/1 as the Phase value; else a one-line error."""
    if isinstance(phase, str) and phase.upper() in PHASES:
        return PHASES[phase.upper()]
    if not isinstance(phase, (str, bool)) and phase in PHASES.values():
        return int(phase)
    hint = ""
    if isinstance(phase, str) and any(c in phase for c in "./\\"):
        hint = " (this looks like a file: pass weights as weights=..., e.g. Net(model, phase='TEST', weights=...))"
    raise NetDefinitionError(f"unknown phase {phase!r}: the phases are TRAIN and TEST (or 0 and 1){hint}")


def state_meets_rule(state, rule) -> bool:
    """Caffe's ``StateMeetsRule``: every condition the rule sets must hold."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(stage not in state.stage for stage in rule.stage):
        return False
    return not any(stage in state.stage for stage in rule.not_stage)


def filter_net(net_param, state, source: str | None = None) -> "caffe_pb2.NetParameter":
    """A copy of ``net_param`` holding only the layers included in ``state``."""
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(net_param)
    filtered.ClearField("layer")
    filtered.state.CopyFrom(state)
    for layer in net_param.layer:
        if layer.include and layer.exclude:
            raise NetDefinitionError(f"layer '{layer.name}': specify either include or exclude rules, not both",
                                     path=source, line=locate_layer(source, layer.name))
        included = not layer.include
        if any(state_meets_rule(state, rule) for rule in layer.exclude):
            included = False
        if any(state_meets_rule(state, rule) for rule in layer.include):
            included = True
        if included:
            filtered.layer.add().CopyFrom(layer)
    return filtered


def split_layer_name(blob: str, layer: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(blob: str, layer: str, top_index: int, split_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{split_index}"


def check_bottoms(net_param, source: str | None = None) -> None:
    """Raise NetDefinitionError for a bottom that no earlier layer produces."""
    available: set[str] = set()
    for layer in net_param.layer:
        for bottom in layer.bottom:
            if bottom not in available:
                raise NetDefinitionError(
                    f"layer '{layer.name}' (type {layer.type}): bottom '{bottom}' has no producer "
                    "(no earlier layer has it as a top)",
                    path=source, line=locate_layer(source, layer.name))
        available.update(layer.top)


def insert_splits(net_param) -> "caffe_pb2.NetParameter":
    """Caffe's ``InsertSplits``: a Split layer after every top with several consumers."""
    last_producer: dict[str, tuple[int, int]] = {}
    source_of: dict[tuple[int, int], tuple[int, int]] = {}
    consumers: Counter = Counter()
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(net_param.layer):
        for j, bottom in enumerate(layer.bottom):
            top_index = last_producer[bottom]
            source_of[(i, j)] = top_index
            consumers[top_index] += 1
        for j, top in enumerate(layer.top):
            last_producer[top] = (i, j)
        # A top used as a loss counts as one more consumer (Caffe does the same).
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top_index = last_producer[layer.top[j]]
            loss_weight[top_index] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[top_index] += 1

    result = caffe_pb2.NetParameter()
    result.CopyFrom(net_param)
    result.ClearField("layer")
    next_split: Counter = Counter()
    names = [layer.name for layer in net_param.layer]
    for i, layer in enumerate(net_param.layer):
        new_layer = result.layer.add()
        new_layer.CopyFrom(layer)
        for j, bottom in enumerate(layer.bottom):
            top_index = source_of[(i, j)]
            if consumers[top_index] > 1:
                new_layer.bottom[j] = split_blob_name(bottom, names[top_index[0]], top_index[1],
                                                      next_split[top_index])
                next_split[top_index] += 1
        for j, top in enumerate(layer.top):
            top_index = (i, j)
            count = consumers[top_index]
            if count > 1:
                split = result.layer.add()
                split.name = split_layer_name(top, layer.name, j)
                split.type = "Split"
                split.bottom.append(top)
                split.top.extend(split_blob_name(top, layer.name, j, k) for k in range(count))
                weight = loss_weight.get(top_index, 0.0)
                if weight:
                    # The loss moves to the split's first top; the others carry none.
                    split.loss_weight.extend([weight] + [0.0] * (count - 1))
                    new_layer.ClearField("loss_weight")
                    next_split[top_index] += 1
    return result


_LINES_CACHE: dict[tuple[str, float], list[str]] = {}


def locate_layer(source: str | None, layer_name: str) -> int | None:
    """The line of ``name: "<layer_name>"`` in a text net file, for error messages."""
    if not source or not Path(source).is_file() or Path(source).suffix in (".caffemodel", ".binaryproto"):
        return None
    key = (source, Path(source).stat().st_mtime)
    if key not in _LINES_CACHE:
        try:
            _LINES_CACHE[key] = Path(source).read_text(errors="replace").splitlines()
        except OSError:
            return None
    pattern = re.compile(r"""(?:^|[\s{,])name\s*:\s*(["']?)""" + re.escape(layer_name) + r"""\1(?=[\s,}]|$)""")
    for number, line in enumerate(_LINES_CACHE[key], start=1):
        if pattern.search(line.split("#", 1)[0]):
            return number
    return None
