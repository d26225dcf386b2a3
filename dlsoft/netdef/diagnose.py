"""Every unknown field of a prototxt or YAML file, each with its line, layer and a hint.

protobuf's text parser stops at the first field it does not know, with a message that
names neither the layer nor what was meant. When it fails that way, :func:`text_unknown_fields`
walks the whole file against the schema's descriptors and reports every unknown field at
once: ``file:line``, the layer's name and type, the message it appeared in, and a hint:
a near miss of a known field (``kernal_size`` -> ``kernel_size``), or the fork of Caffe a
field belongs to when it is a fork field dlsoft does not read (``dense_crf_param``:
PSPNet). :func:`yaml_unknown_fields` does the same for YAML's node tree.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import yaml
from google.protobuf.descriptor import Descriptor

from dlsoft.protos.fork_names import FORK_FIELDS

__all__ = ["UnknownField", "text_unknown_fields", "yaml_unknown_fields", "field_hint", "summarize"]


@dataclass
class _LayerContext:
    name: str = ""
    type: str = ""


@dataclass
class UnknownField:
    """One field that the schema does not have where the file puts it."""

    line: int
    name: str
    message: str  # the message type it appeared in, e.g. "ConvolutionParameter"
    known: list[str]  # the fields that message does have
    layer: _LayerContext | None = field(default=None, repr=False)

    def describe(self) -> str:
        where = ""
        if self.layer is not None:
            name = self.layer.name or "?"
            where = f"layer '{name}' ({self.layer.type or 'no type'}): "
        return f"{where}unknown field '{self.name}' in {self.message}{field_hint(self.message, self.name, self.known)}"


def field_hint(message: str, name: str, known: list[str]) -> str:
    """`` (did you mean 'x'?)``, `` (a field of the F fork, which dlsoft does not read)`` or ``""``."""
    fork = FORK_FIELDS.get((message, name))
    if fork is not None:
        return f" (a field of the {fork} fork of Caffe, which dlsoft does not support)"
    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered:
        return f" (did you mean '{lowered[name.lower()]}'?)"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return ""


def summarize(path: str, unknown: list[UnknownField]) -> str:
    """One line for every unknown field: ``path:line: ...; path:line: ...``."""
    head = f"{len(unknown)} unknown fields: " if len(unknown) > 1 else ""
    return head + "; ".join(f"{path}:{u.line}: {u.describe()}" for u in unknown)


# ----------------------------------------------------------------------------- prototxt

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+) | (?P<newline>\n) | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<word>[-+]?[A-Za-z0-9_.]+(?:[eE][-+]?\d+)?)
  | (?P<punct>[{}\[\]<>:;,/])
  | (?P<other>.)
""", re.VERBOSE)

_LAYER_FIELDS = {("NetParameter", "layer"), ("NetParameter", "layers")}


def _tokens(text: str) -> list[tuple[str, int]]:
    out, line = [], 1
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            out.append((m.group(), line))
    return out


def text_unknown_fields(text: str, desc: Descriptor) -> list[UnknownField]:
    """The unknown fields of a protobuf text-format ``text`` of message ``desc``, in file order.

    Best effort on malformed text: the walk stops where the syntax breaks (protobuf's own
    error covers that).
    """
    walker = _TextWalker(_tokens(text))
    try:
        walker.body(desc, None, top=True)
    except _Stop:
        pass
    return walker.unknown


class _Stop(Exception):
    pass


class _TextWalker:
    def __init__(self, tokens: list[tuple[str, int]]):
        self.tokens = tokens
        self.pos = 0
        self.unknown: list[UnknownField] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, int]:
        if self.pos >= len(self.tokens):
            raise _Stop
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def body(self, desc: Descriptor | None, layer: _LayerContext | None, top: bool = False) -> None:
        """Fields until the closing brace (or the end, at the top level)."""
        while True:
            tok = self.peek()
            if tok is None:
                if top:
                    return
                raise _Stop
            if tok in ("}", ">"):
                if top:
                    raise _Stop
                self.take()
                return
            self.one_field(desc, layer)

    def one_field(self, desc: Descriptor | None, layer: _LayerContext | None) -> None:
        name, line = self.take()
        if name == "[":  # an extension or Any name: skip the bracketed name
            while self.take()[0] != "]":
                pass
            fd = None
        elif not re.match(r"[A-Za-z_]\w*$", name):
            raise _Stop
        else:
            fd = desc.fields_by_name.get(name) if desc is not None else None
            if desc is not None and fd is None:
                self.unknown.append(UnknownField(line, name, desc.name, list(desc.fields_by_name), layer))
        sub = fd.message_type if fd is not None else None
        if self.peek() == ":":
            self.take()
        if self.peek() == "[":
            self.take()
            while self.peek() != "]":
                self.value(sub, desc, fd, layer)
                if self.peek() == ",":
                    self.take()
            self.take()
        else:
            self.value(sub, desc, fd, layer)
        if self.peek() in (";", ","):
            self.take()

    def value(self, sub, desc, fd, layer) -> None:
        tok, _ = self.take()
        if tok in ("{", "<"):
            inner = layer
            if desc is not None and fd is not None and (desc.name, fd.name) in _LAYER_FIELDS:
                inner = _LayerContext()
            self.body(sub, inner)
            return
        if tok[0] in "\"'":
            while self.peek() is not None and self.peek()[0] in "\"'":  # adjacent strings concatenate
                self.take()
        if layer is not None and desc is not None and desc.name in ("LayerParameter", "V1LayerParameter") \
                and fd is not None and fd.name in ("name", "type"):
            setattr(layer, fd.name, tok.strip("\"'"))


# ----------------------------------------------------------------------------- YAML

def yaml_unknown_fields(root: yaml.Node, desc: Descriptor) -> list[UnknownField]:
    """The unknown keys of a composed YAML document of message ``desc``, in file order."""
    unknown: list[UnknownField] = []
    _yaml_message(root, desc, None, unknown)
    return unknown


def _yaml_message(node, desc: Descriptor, layer: _LayerContext | None, unknown: list) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    if desc.name in ("LayerParameter", "V1LayerParameter") and layer is not None:
        for knode, vnode in node.value:
            if isinstance(knode, yaml.ScalarNode) and knode.value in ("name", "type") \
                    and isinstance(vnode, yaml.ScalarNode):
                setattr(layer, knode.value, vnode.value)
    for knode, vnode in node.value:
        key = knode.value if isinstance(knode, yaml.ScalarNode) else str(knode)
        fd = desc.fields_by_name.get(key)
        if fd is None:
            unknown.append(UnknownField(knode.start_mark.line + 1, key, desc.name, list(desc.fields_by_name), layer))
            continue
        if fd.message_type is None:
            continue
        items = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
        for item in items:
            inner = _LayerContext() if (desc.name, fd.name) in _LAYER_FIELDS else layer
            _yaml_message(item, fd.message_type, inner, unknown)
