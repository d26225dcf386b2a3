"""pycaffe's NetSpec: write a net as Python calls, get its NetParameter.

``L.Convolution(bottom, kernel_size=5, num_output=20)`` describes a layer and returns
its top (or tops, with ``ntop=``). Keyword arguments go into the layer's own
``<type>_param`` message when that message has the field (``kernel_size``), else into
the LayerParameter (``loss_weight``, ``param``, ``include``); a keyword ending in
``param`` (``transform_param=dict(...)``) always names a LayerParameter field. Dicts
become messages and lists repeated fields; a single value for a repeated field is a
one-element list.

Names follow pycaffe exactly: a top assigned to a NetSpec attribute takes that name;
other tops are named ``<Type><k>`` (``k`` counting that type's unnamed tops, from 1);
a layer takes the name of its first top (``in_place=True`` layers write into their
bottom but are still named by their own top: ``n.relu1 = L.ReLU(n.fc1, in_place=True)``
gives layer ``relu1`` with top ``fc1``).
"""
from __future__ import annotations

from collections import Counter, OrderedDict

from ..netdef.io import message_to_yaml
from ..protos import caffe_pb2


def _param_field_names() -> dict[str, str]:
    """Layer type -> its ``*_param`` field, from the schema (``Convolution`` -> ``convolution_param``)."""
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                names[type_name[:-len("Parameter")]] = field.name
    return names


_PARAM_FIELDS = _param_field_names()


def assign_proto(proto, name: str, value) -> None:
    """Set field ``name`` of message ``proto`` from a Python value (dicts, lists, scalars)."""
    field = getattr(proto, name)
    repeated = hasattr(field, "extend")
    if repeated and not isinstance(value, (list, tuple)):
        value = [value]
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], dict):
            for item in value:
                message = field.add()
                for key, sub in item.items():
                    assign_proto(message, key, sub)
        else:
            field.extend(value)
    elif isinstance(value, dict):
        for key, sub in value.items():
            assign_proto(field, key, sub)
    else:
        setattr(proto, name, value)


class Top:
    """One output blob of a layer: the ``n``-th top of ``fn``."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every layer this top needs."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, its input tops and its parameters."""

    def __init__(self, type_name: str, inputs, params: dict):
        for index, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(bottom).__name__})")
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top: Top, names, autonames) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _layer_name(self, names, autonames) -> str:
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _to_proto(self, layers, names, autonames) -> None:
        if self in layers:
            return
        bottoms = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottoms.append(layers[bottom.fn].top[bottom.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name)
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._layer_name(names, autonames)
        own = _PARAM_FIELDS.get(self.type_name)
        for key, value in self.params.items():
            if key.endswith("param") or own is None or not _has_field(getattr(layer, own), key):
                assign_proto(layer, key, value)
            else:
                assign_proto(getattr(layer, own), key, value)
        layers[self] = layer


def _has_field(message, name: str) -> bool:
    return name in message.DESCRIPTOR.fields_by_name


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """The NetParameter of every layer needed for ``tops``, with automatic names."""
    layers: "OrderedDict[Function, caffe_pb2.LayerParameter]" = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class NetSpec:
    """Tops assigned as attributes (``n.conv1 = L.Convolution(...)``) name their blobs and layers.

    ``to_proto()`` gives the NetParameter of every layer the assigned tops need;
    ``to_yaml()`` (dlsoft's) the same net in dlsoft's YAML form.
    """

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top {name!r}") from None

    def __setitem__(self, key: str, value) -> None:
        self.tops[key] = value

    def __getitem__(self, key: str):
        return self.tops[key]

    def __delattr__(self, name: str) -> None:
        del self.tops[name]

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {top: name for name, top in self.tops.items()}
        autonames: Counter = Counter()
        layers: "OrderedDict[Function, caffe_pb2.LayerParameter]" = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net

    def to_yaml(self) -> str:
        """The net as dlsoft YAML text (the same schema as the prototxt)."""
        return message_to_yaml(self.to_proto())


class Layers:
    """``layers.Type(*bottoms, **params)`` describes a layer of ``Type``; returns its top(s)."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*bottoms, **params):
            fn = Function(type_name, bottoms, params)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = type_name
        return layer_fn


class _EnumValues:
    def __init__(self, type_name: str):
        self._type_name = type_name

    def __getattr__(self, value_name: str):
        if value_name.startswith("__"):
            raise AttributeError(value_name)
        message = getattr(caffe_pb2, self._type_name + "Parameter", None)
        if message is None:
            raise AttributeError(f"no {self._type_name}Parameter in caffe.proto")
        return getattr(message, value_name)


class Parameters:
    """``params.Pooling.MAX``: the enum values of ``<Type>Parameter`` messages."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        return _EnumValues(type_name)


layers = Layers()
params = Parameters()
