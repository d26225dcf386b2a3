"""Read and write Caffe messages as prototxt, YAML or binary protobuf.

Prototxt, YAML and binary files are three encodings of the same messages
(:mod:`dlsoft.protos.caffe_pb2`). The encoding follows the file extension:

* ``.yaml`` / ``.yml``: YAML, mapped onto the messages through their descriptors
  (maps -> messages, lists -> repeated fields, enum values by name);
* ``.caffemodel`` / ``.binaryproto`` / ``.pb`` / ``.solverstate``: binary protobuf;
* anything else (``.prototxt``, ``.pt``, ``.txt``, ...): protobuf text format.

Nets and solvers are upgraded from Caffe's legacy forms on read (see
:mod:`dlsoft.netdef.upgrade`). Every problem with a file raises
:class:`~dlsoft.errors.ParseError` with a one-line ``path:line: what`` message.
Writes are atomic: a reader never sees a half-written file.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml
from google.protobuf import json_format, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from dlsoft.errors import ParseError
from dlsoft.fileio import (  # noqa: F401 - re-exported: part of this module's API
    _parse_binary, _read_bytes, array_to_blob_proto, atomic_write_bytes, atomic_write_text, blob_proto_to_array,
    hdf5_bytes, read_blob, write_blob)
from dlsoft.netdef import diagnose, forks
from dlsoft.netdef.upgrade import upgrade_net, upgrade_solver
from dlsoft.protos import caffe_pb2

__all__ = [
    "read_net", "read_solver", "read_blob", "write_blob", "read_solver_state", "read_message",
    "write_message", "write_net", "write_solver", "parse_net_text", "parse_solver_text",
    "parse_layer_text", "parse_text", "parse_yaml", "message_to_yaml", "blob_proto_to_array",
    "array_to_blob_proto", "atomic_write_bytes", "file_format",
]

M = TypeVar("M", bound=Message)
PathLike = str | os.PathLike

YAML_SUFFIXES = frozenset({".yaml", ".yml"})
BINARY_SUFFIXES = frozenset({".caffemodel", ".binaryproto", ".pb", ".solverstate"})


def file_format(path: PathLike) -> str:
    """The encoding ``path`` uses by its extension: ``"text"``, ``"yaml"`` or ``"binary"``."""
    suffix = Path(path).suffix.lower()
    if suffix in YAML_SUFFIXES:
        return "yaml"
    if suffix in BINARY_SUFFIXES:
        return "binary"
    return "text"


# ----------------------------------------------------------------------------- reading

def read_message(path: PathLike, message_type: type[M]) -> M:
    """Read one ``message_type`` message from ``path`` in the encoding its extension names.

    No legacy upgrade is applied (see :func:`read_net`, :func:`read_solver`).
    """
    data = _read_bytes(path)
    fmt = file_format(path)
    if fmt == "binary":
        msg = _parse_binary(data, message_type, str(path))
        check_required(msg, str(path))
        return msg
    text = _decode_text(data, str(path))
    if fmt == "yaml":
        return parse_yaml(text, message_type, path=str(path))
    return parse_text(text, message_type, path=str(path))


def read_net(path: PathLike) -> caffe_pb2.NetParameter:
    """Read a net (prototxt, YAML or binary ``.caffemodel``) and upgrade legacy forms.

    A binary net written by one of Caffe's forks has its fork-numbered fields mapped
    back (:mod:`dlsoft.netdef.forks`).
    """
    if file_format(path) == "binary":
        net = _read_fork_binary(str(path))
        check_required(net, str(path))
    else:
        net = read_message(path, caffe_pb2.NetParameter)
    return upgrade_net(net, path=str(path))


def _read_fork_binary(path: str) -> caffe_pb2.NetParameter:
    """A binary net with the forks' field numbers mapped, and a warning where bytes cannot tell."""
    net = _parse_binary(forks.map_fork_bytes(_read_bytes(path)), caffe_pb2.NetParameter, path)
    ambiguous = forks.ambiguous_pooling_layers(net)
    if ambiguous:
        warnings.warn(
            f"{path}: Pooling layer(s) {', '.join(repr(n) for n in ambiguous[:3])}"
            f"{' ...' if len(ambiguous) > 3 else ''} set field 13, read as BVLC's round_mode; "
            "a caffemodel from a ceil_mode fork means the opposite there, so build such a net "
            "from its prototxt (its weights load by layer name either way)", FileFormatWarning,
            stacklevel=3)
    return net


class FileFormatWarning(UserWarning):
    """A file read the way BVLC Caffe reads it, where a fork of Caffe might mean otherwise."""


def read_solver(path: PathLike) -> caffe_pb2.SolverParameter:
    """Read a solver definition (prototxt or YAML) and upgrade the legacy ``solver_type``.

    ``net``/``train_net``/``test_net`` paths are kept as written (Caffe resolves them
    relative to the working directory; the solver code decides).
    """
    return upgrade_solver(read_message(path, caffe_pb2.SolverParameter), path=str(path))


def read_solver_state(path: PathLike) -> caffe_pb2.SolverState:
    """Read a binary ``.solverstate`` (iteration, current step, history blobs, learned net)."""
    return _parse_binary(_read_bytes(path), caffe_pb2.SolverState, str(path))


def parse_text(text: str, message_type: type[M], path: str = "<string>") -> M:
    """Parse protobuf text format into a new ``message_type``; errors name ``path:line``."""
    msg = message_type()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        if "has no field named" in str(e):
            unknown = diagnose.text_unknown_fields(text, message_type.DESCRIPTOR)
            if unknown:
                raise _unknown_fields_error(unknown, path) from None
        line = e.GetLine() if hasattr(e, "GetLine") else None
        what = re.sub(r"^\d+(:\d+)? : ", "", str(e)).strip()
        col = e.GetColumn() if hasattr(e, "GetColumn") else None
        if col:
            what = f"{what} (column {col})"
        raise ParseError(what, path=path, line=line) from None
    check_required(msg, path, text)
    return msg


def _unknown_fields_error(unknown: list, path: str) -> ParseError:
    """One ParseError for all of a file's unknown fields, at the first one's line."""
    first, rest = unknown[0], unknown[1:]
    detail = "; ".join([first.describe()] + [f"{path}:{u.line}: {u.describe()}" for u in rest])
    if rest:
        detail += f" ({len(unknown)} unknown fields in all)"
    return ParseError(detail, path=path, line=first.line)

def check_required(msg: Message, path: str | None = None, text: str | None = None) -> None:
    """ParseError if a ``required`` field is unset, as protobuf's own text parser refuses it.

    Python's parsers accept such a message, and it then fails only when serialised (a
    run's every snapshot). The error names the layer, the field and, with ``text``, the
    line of the layer's name.
    """
    errors = msg.FindInitializationErrors()
    if not errors:
        return
    first = errors[0]
    match = re.match(r"^(?:(.*)\.)?(layers?)\[(\d+)\]\.(.*)$", first)
    if match is None:
        raise ParseError(f"required field '{first}' is not set (give it a value)", path=path)
    outer, field, index, rest = match.groups()
    owner = msg
    for part in (outer.split(".") if outer else []):
        name, _, number = part.partition("[")
        owner = getattr(owner, name)
        if number:
            owner = owner[int(number.rstrip("]"))]
    layer = getattr(owner, field)[int(index)]
    prefix = f"{outer}.{field}[{index}]: " if outer else ""
    missing = [e.rsplit(".", 1)[1] for e in errors if e.startswith(first.rsplit(".", 1)[0] + ".")]
    raise ParseError(f"{prefix}layer '{layer.name}' (type {layer.type}): required field '{rest}' is not set "
                     f"(give {' and '.join(missing)} a value)", path=path, line=_name_line(text, layer.name))


def _name_line(text: str | None, name: str) -> int | None:
    """The first line of ``text`` that sets ``name: <name>`` (prototxt or YAML), for errors."""
    if not text or not name:
        return None
    pattern = re.compile(r"""(?:^|[\s{,])name\s*:\s*(["']?)""" + re.escape(name) + r"""\1(?=[\s,}]|$)""")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.search(line.split("#", 1)[0]):
            return number
    return None


def parse_net_text(text: str, path: str = "<string>") -> caffe_pb2.NetParameter:
    """Parse a prototxt net from a string and upgrade legacy forms."""
    return upgrade_net(parse_text(text, caffe_pb2.NetParameter, path), path=path)


def parse_solver_text(text: str, path: str = "<string>") -> caffe_pb2.SolverParameter:
    """Parse a prototxt solver from a string and upgrade the legacy ``solver_type``."""
    return upgrade_solver(parse_text(text, caffe_pb2.SolverParameter, path), path=path)


def parse_layer_text(text: str) -> caffe_pb2.LayerParameter:
    """Parse the body of one ``layer { ... }`` (without the ``layer {`` wrapper)."""
    return parse_text(text, caffe_pb2.LayerParameter, "<layer>")


# ----------------------------------------------------------------------------- writing

def write_message(msg: Message, path: PathLike) -> None:
    """Write ``msg`` to ``path`` (atomically) in the encoding its extension names."""
    fmt = file_format(path)
    if fmt == "binary":
        data = msg.SerializeToString()
    elif fmt == "yaml":
        data = message_to_yaml(msg).encode("utf-8")
    else:
        data = text_format.MessageToString(msg).encode("utf-8")
    atomic_write_bytes(path, data)


def write_net(net: caffe_pb2.NetParameter, path: PathLike) -> None:
    """Write a net as prototxt, YAML or binary ``.caffemodel`` (by extension), atomically."""
    write_message(net, path)


def write_solver(solver: caffe_pb2.SolverParameter, path: PathLike) -> None:
    """Write a solver definition as prototxt or YAML (by extension), atomically."""
    write_message(solver, path)


# ----------------------------------------------------------------------------- blobs

# ----------------------------------------------------------------------------- YAML

def parse_yaml(text: str, message_type: type[M], path: str = "<string>") -> M:
    """Parse YAML into a new ``message_type``, validating against its descriptor.

    Lenient as Caffe's text format: a scalar where a list is expected is a one-element
    list, ints are accepted for float fields, and enum values are given by name (or
    number). Syntax errors, unknown keys and values of the wrong type raise
    :class:`ParseError` with the line of the offending key or value.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParseError(f"YAML syntax error: {problem}", path=path,
                         line=mark.line + 1 if mark is not None else None) from None
    msg = message_type()
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
        return msg
    try:
        data = _YamlReader(path).message(root, message_type.DESCRIPTOR)
    except ParseError as e:
        unknown = diagnose.yaml_unknown_fields(root, message_type.DESCRIPTOR) \
            if e.detail.startswith("unknown field") else []
        if unknown:
            raise _unknown_fields_error(unknown, path) from None
        raise
    try:
        json_format.ParseDict(data, msg)
    except json_format.ParseError as e:  # everything is validated above; this is a backstop
        raise ParseError(str(e).splitlines()[0], path=path) from None
    check_required(msg, path, text)
    return msg


def message_to_yaml(msg: Message) -> str:
    """``msg`` as readable YAML: fields in schema order, enums by name, ints as ints."""
    data = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    _tidy(data, msg.DESCRIPTOR)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


class _Dumper(yaml.SafeDumper):
    """Block style for maps and lists of maps; flow style (``[1, 3, 224, 224]``) for scalar lists."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)

_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def _tidy(data: dict, desc: Descriptor) -> None:
    """Make MessageToDict output read well, in place.

    json_format writes 64-bit ints as strings: turn them back into ints. A repeated
    scalar field with one value is written as that value (``kernel_size: 3``), which
    :func:`parse_yaml` reads back as a one-element list.
    """
    for key, value in data.items():
        fd = desc.fields_by_name.get(key)
        if fd is None:
            continue
        if fd.message_type is not None:
            for item in (value if isinstance(value, list) else [value]):
                if isinstance(item, dict):
                    _tidy(item, fd.message_type)
            continue
        if fd.type in _INT64_TYPES:
            value = [int(v) for v in value] if isinstance(value, list) else int(value)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        data[key] = value


_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOAT_TYPES = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}
_FLOAT_WORDS = {"nan": "NaN", "inf": "Infinity", "+inf": "Infinity", "-inf": "-Infinity",
                "infinity": "Infinity", "-infinity": "-Infinity"}


#: How many values aliases may repeat in all. A YAML alias is a reference, so a few
#: nested ones in a kilobyte ("billion laughs") expand to millions of values; a net
#: that repeats a shape or a filler now and then stays far below this.
MAX_ALIAS_EXPANSION = 100_000


class _YamlReader:
    """Turns a composed YAML node tree into a json_format dict, checking it against descriptors."""

    def __init__(self, path: str):
        self.path = path
        self.loader = yaml.SafeLoader("")
        self.seen: set[int] = set()
        self.repeated = 0

    def visit(self, node: yaml.Node) -> None:
        """Count values reached again through an alias; refuse an expansion past the limit."""
        if id(node) not in self.seen:
            self.seen.add(id(node))
            return
        self.repeated += 1
        if self.repeated > MAX_ALIAS_EXPANSION:
            raise self.fail(node, f"YAML aliases repeat more than {MAX_ALIAS_EXPANSION:,} values (an alias "
                                  "bomb?): write the repeated part out, or alias less deeply")

    def fail(self, node: yaml.Node, what: str) -> ParseError:
        return ParseError(what, path=self.path, line=node.start_mark.line + 1)

    def message(self, node: yaml.Node, desc: Descriptor) -> dict[str, Any]:
        self.visit(node)
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"expected a mapping of {desc.name} fields, got {_kind(node)}")
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            fd = desc.fields_by_name.get(key) if key is not None else None
            if fd is None:
                raise self.fail(knode, f"unknown field '{key}' in {desc.name}")
            if _is_repeated(fd):
                items = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                values = [self.value(fd, item, desc) for item in items]
                out.setdefault(key, []).extend(values)  # a repeated key appends, as in prototxt
            else:
                if key in out:
                    raise self.fail(knode, f"field '{key}' of {desc.name} is given twice")
                out[key] = self.value(fd, vnode, desc)
        return out

    def value(self, fd: FieldDescriptor, node: yaml.Node, desc: Descriptor) -> Any:
        name = f"{desc.name}.{fd.name}"
        if fd.message_type is None:
            self.visit(node)
        if fd.message_type is not None:
            if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null") \
                    and node.tag.endswith(":null"):
                return {}  # `field:` with nothing after it: an empty message
            return self.message(node, fd.message_type)
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"field '{fd.name}' ({name}) expects a single value, got {_kind(node)}")
        v = self.loader.construct_object(node, deep=True)
        if fd.type == FieldDescriptor.TYPE_ENUM:
            enum = fd.enum_type
            if isinstance(v, str) and v in enum.values_by_name:
                return v
            if isinstance(v, int) and not isinstance(v, bool) and v in enum.values_by_number:
                return enum.values_by_number[v].name
            choices = ", ".join(enum.values_by_name)
            raise self.fail(node, f"invalid value '{node.value}' for enum field '{fd.name}' ({name}); "
                                  f"expected one of {choices}")
        if fd.type == FieldDescriptor.TYPE_BOOL:
            if isinstance(v, bool):
                return v
            raise self.fail(node, f"field '{fd.name}' ({name}) expects true or false, got '{node.value}'")
        if fd.type in _INT_RANGES:
            if isinstance(v, bool) or not isinstance(v, int):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                else:
                    raise self.fail(node, f"field '{fd.name}' ({name}) expects an integer, got '{node.value}'")
            lo, hi = _INT_RANGES[fd.type]
            if not lo <= v <= hi:
                raise self.fail(node, f"value {v} is out of range for field '{fd.name}' ({name})")
            return v
        if fd.type in _FLOAT_TYPES:
            if isinstance(v, bool):
                raise self.fail(node, f"field '{fd.name}' ({name}) expects a number, got '{node.value}'")
            if isinstance(v, (int, float)):
                if v != v:
                    return "NaN"
                if v in (float("inf"), float("-inf")):
                    return "Infinity" if v > 0 else "-Infinity"
                return float(v)
            if isinstance(v, str) and v.lower() in _FLOAT_WORDS:
                return _FLOAT_WORDS[v.lower()]
            raise self.fail(node, f"field '{fd.name}' ({name}) expects a number, got '{node.value}'")
        if fd.type == FieldDescriptor.TYPE_BYTES:
            return v if isinstance(v, str) else node.value  # base64, as json_format expects
        # string: take the text as written (so `name: 1` is the string "1")
        return v if isinstance(v, str) else node.value


def _is_repeated(fd: FieldDescriptor) -> bool:
    if hasattr(fd, "is_repeated"):  # protobuf >= 5.29; `label` is gone in 7
        return fd.is_repeated
    return fd.label == FieldDescriptor.LABEL_REPEATED


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"'{node.value}'"


# ----------------------------------------------------------------------------- helpers

def _decode_text(data: bytes, path: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"not a UTF-8 text file (bad byte at offset {e.start}); "
                         f"binary files need a .caffemodel/.binaryproto/.pb extension",
                         path=path) from None


