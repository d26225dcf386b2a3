"""Binary nets written by Caffe's forks: fields whose fork number collides with BVLC's.

Text files name their fields, so a fork's prototxt parses with the fork's meaning
whatever number dlsoft's schema gives a field. A binary ``.caffemodel`` carries
numbers instead, and some forks reused numbers that BVLC (or another fork) gave to
other fields: PSPNet's ``interp_param`` is 143, BVLC's ``input_param``; SegNet's
``upsample_param`` is 137, BVLC's ``embed_param``. dlsoft's schema puts such fields at
100000 + the fork's number (see ``dlsoft/protos/README.md``); this module moves the
fork's bytes back under the field they belong to when a binary net is read, before
protobuf parses it.

A move is made only where it is unambiguous: the bytes sit under a number on a layer
whose type never uses the BVLC field of that number (an ``Interp`` layer has no
``input_param``), or under a number BVLC does not have at all. Fork fields that keep
their fork's number here are read only on the layer types that fork uses them for
(:data:`FORK_FIELD_TYPES`), because other forks put other things under some of those
numbers. The one collision the
bytes cannot settle, PoolingParameter 13 (BVLC ``round_mode``, CEIL = 0, against the
ceil_mode forks' ``ceil_mode``, true = 1), is read with BVLC's meaning and reported by
:func:`ambiguous_pooling_layers`. Weights are never affected: they are read by layer
name and ``blobs`` (fields 1 and 7), which no fork renumbered.
"""
from __future__ import annotations

from dlsoft.protos import caffe_pb2

__all__ = ["map_fork_bytes", "ambiguous_pooling_layers", "LAYER_FIELD_MOVES", "FORK_FIELD_TYPES"]

# LayerParameter: (fork's number, layer type) -> dlsoft's field for those bytes, where the
# fork's number is not the field's number here.
LAYER_FIELD_MOVES: dict[tuple[int, str], str] = {
    (137, "Upsample"): "upsample_param",         # SegNet (137 = BVLC embed_param)
    (147, "Upsample"): "upsample_param",         # ENet (147 = BVLC swish_param)
    (138, "DenseImageData"): "dense_image_data_param",  # SegNet (138 = BVLC tile_param)
    (137, "BN"): "bn_param",                     # yjxiong/caffe (137 = BVLC embed_param)
    (152, "BN"): "bn_param",                     # PSPNet (not a BVLC number)
    (143, "Interp"): "interp_param",             # PSPNet (143 = BVLC input_param)
    (144, "SegAccuracy"): "seg_accuracy_param",  # PSPNet (144 = BVLC crop_param)
    (150, "ROIPooling"): "roi_pooling_param",    # yjxiong/caffe (not a BVLC number)
}

# The fork fields that keep their fork's number here, and the layer types that use them.
# Other forks used some of these numbers for other things (CaffeOnSpark's layer field
# 10001 is a string, R-FCN's is psroi_pooling_param): on a layer of another type such
# bytes are parked under PARKED + number, unknown to the schema, instead of being read
# as (or failing to parse as) this schema's message.
FORK_FIELD_TYPES: dict[str, frozenset[str]] = {
    "roi_pooling_param": frozenset({"ROIPooling"}),
    "smooth_l1_loss_param": frozenset({"SmoothL1Loss", "SmoothL1LossOHEM"}),
    "box_annotator_ohem_param": frozenset({"BoxAnnotatorOHEM"}),
    "psroi_pooling_param": frozenset({"PSROIPooling"}),
    "bn_param": frozenset({"BN"}),
    "dense_image_data_param": frozenset({"DenseImageData"}),
    "shuffle_channel_param": frozenset({"ShuffleChannel"}),
    "selu_param": frozenset({"SeLu"}),
    "selu_dropout_param": frozenset({"SeLuDropout"}),
}
PARKED = 1 << 28

# Inside a message: (fork's number, wire type) -> dlsoft's number. A wire type that
# differs from the schema's field of that number is what tells the fork's bytes apart.
_FIXED32, _VARINT, _LENGTH = 5, 0, 2
_INNER_MOVES: dict[str, dict[tuple[int, int], int]] = {
    # PSPNet / yjxiong BN: momentum, a float at 3 (SegNet's bn_mode, an enum, here).
    "bn_param": {(3, _FIXED32): caffe_pb2.BNParameter.DESCRIPTOR.fields_by_name["momentum"].number},
    # PSPNet: scale_factors, unpacked floats at 8 (SSD's resize_param, a message, here).
    "transform_param": {(8, _FIXED32): caffe_pb2.TransformationParameter.DESCRIPTOR
                        .fields_by_name["scale_factors"].number},
}

_LAYER = caffe_pb2.LayerParameter.DESCRIPTOR
_NET_LAYER = caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name["layer"].number
_TYPE = _LAYER.fields_by_name["type"].number
_FIELD_NAMES = {f.number: f.name for f in _LAYER.fields}
_GATED = {_LAYER.fields_by_name[name].number: types for name, types in FORK_FIELD_TYPES.items()}
_INNER_NUMBERS = {_LAYER.fields_by_name[name].number: name for name in _INNER_MOVES}
_MOVE_NUMBERS = {num for num, _ in LAYER_FIELD_MOVES}
_WATCHED = _GATED.keys() | _INNER_NUMBERS.keys() | _MOVE_NUMBERS


def map_fork_bytes(data: bytes) -> bytes:
    """A binary NetParameter with its layers' fork-numbered fields put where they belong here.

    Returns ``data`` itself when no layer needs a change (the common case: BVLC files).
    """
    try:
        entries = _entries(memoryview(data))
    except IndexError:  # truncated: protobuf's own parser says what is wrong
        return data
    out, changed = [], False
    for num, wire, value, span in entries:
        if num == _NET_LAYER and wire == _LENGTH:
            layer = _map_layer(value)
            if layer is not None:
                out.append(_length_delimited(num, layer))
                changed = True
                continue
        out.append(span)
    return b"".join(out) if changed else data


def _map_layer(data: memoryview) -> bytes | None:
    try:
        entries = _entries(data)
    except IndexError:
        return None
    if not any(num in _WATCHED for num, _, _, _ in entries):
        return None
    layer_type = next((bytes(value).decode("utf-8", "replace") for num, wire, value, _ in entries
                       if num == _TYPE and wire == _LENGTH), "")
    out, changed = [], False
    for num, wire, value, span in entries:
        if wire != _LENGTH:
            out.append(span)
            continue
        target = LAYER_FIELD_MOVES.get((num, layer_type))
        if target is not None:
            out.append(_length_delimited(_LAYER.fields_by_name[target].number,
                                         _remap_inner(target, value) or value))
            changed = True
        elif num in _GATED and layer_type not in _GATED[num]:
            out.append(_length_delimited(PARKED + num, value))
            changed = True
        elif num in _INNER_NUMBERS and (remapped := _remap_inner(_INNER_NUMBERS[num], value)) is not None:
            out.append(_length_delimited(num, remapped))
            changed = True
        else:
            out.append(span)
    return b"".join(out) if changed else None


def ambiguous_pooling_layers(net: caffe_pb2.NetParameter) -> list[str]:
    """Names of the Pooling layers of a binary ``net`` that set PoolingParameter field 13.

    BVLC reads 13 as ``round_mode`` (CEIL = 0, FLOOR = 1); the ceil_mode forks wrote
    ``ceil_mode`` there (true = 1): the bytes cannot tell which file this is.
    """
    return [layer.name for layer in net.layer
            if layer.type == "Pooling" and layer.pooling_param.HasField("round_mode")]


def _remap_inner(field_name: str, data: memoryview) -> bytes | None:
    """``data`` (one message) with ``field_name``'s fork-numbered entries renumbered, or None."""
    moves = _INNER_MOVES.get(field_name)
    if not moves:
        return None
    out, changed = [], False
    try:
        entries = _entries(data)
    except IndexError:
        return None
    for num, wire, value, span in entries:
        new = moves.get((num, wire))
        if new is None:
            out.append(span)
        else:
            out.append(_varint((new << 3) | wire) + bytes(value))
            changed = True
    return b"".join(out) if changed else None


# ----------------------------------------------------------------------------- wire format

def _entries(data: memoryview) -> list[tuple[int, int, memoryview, memoryview]]:
    """The top-level fields of one serialized message: (number, wire type, payload, whole entry).

    The payload of a length-delimited field is its content; of the others, the raw value bytes.
    """
    entries, pos, end = [], 0, len(data)
    while pos < end:
        start = pos
        key, pos = _read_varint(data, pos)
        num, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, stop = _read_varint(data, pos)
            value, pos = data[pos:stop], stop
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == _LENGTH:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == _FIXED32:
            value, pos = data[pos:pos + 4], pos + 4
        else:  # groups: no Caffe fork uses them; keep the rest as it is
            entries.append((num, wire, data[start:], data[start:]))
            break
        entries.append((num, wire, value, data[start:pos]))
    return entries


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(num: int, payload) -> bytes:
    return _varint((num << 3) | _LENGTH) + _varint(len(payload)) + bytes(payload)
