"""The layer registry: Caffe type name -> Layer class."""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import NetDefinitionError
from .base import Layer

_REGISTRY: dict[str, type[Layer]] = {}
_loaded = False


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator: make ``cls`` the implementation of ``cls.type``."""
    if not cls.type:
        raise TypeError(f"{cls.__name__} has no 'type'")
    if cls.type in _REGISTRY and _REGISTRY[cls.type] is not cls:
        raise TypeError(f"layer type {cls.type!r} registered twice "
                        f"({_REGISTRY[cls.type].__name__} and {cls.__name__})")
    _REGISTRY[cls.type] = cls
    return cls


def _load_all() -> None:
    """Import every module of dlsoft.layers, so their @register decorators run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module("dlsoft.layers")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "registry") and not info.name.startswith("_"):
            importlib.import_module(f"dlsoft.layers.{info.name}")


def layer_class(type_name: str) -> type[Layer]:
    """The class registered for ``type_name``; NetDefinitionError if none is."""
    _load_all()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        close = [t for t in _REGISTRY if t.lower() == type_name.lower()]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise NetDefinitionError(f"unknown layer type {type_name!r}{hint}") from None


def registered_types() -> list[str]:
    """Every registered Caffe type name, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def create_layer(param, phase: str = "TRAIN", device=None) -> Layer:
    """Instantiate the layer described by a LayerParameter."""
    from ..backend import CPU
    cls = layer_class(param.type)
    return cls(param, phase=phase, device=device or CPU)
