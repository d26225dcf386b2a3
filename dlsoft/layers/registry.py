"""The layer registry: Caffe type name -> Layer class.

Layer types come from three places, and :func:`layer_origin` says which:

* **built in**: the modules of ``dlsoft.layers`` (their ``@register`` decorators);
* **plugin packages**: any installed distribution that declares an entry point in the
  group ``dlsoft.layers``, named by the Caffe type and pointing at a Layer subclass,
  for example in its ``pyproject.toml``::

      [project.entry-points."dlsoft.layers"]
      MyLayer = "my_package.layers:MyLayer"

  Plugins are looked up when a net is built (a type the registry does not have), so a
  package installed after dlsoft was imported is found too; a plugin's module is
  imported only when a net uses one of its types. A plugin layer reads its parameters
  from ``python_param { param_str: "..." }`` (``self.param_str``), as Python layers do;
* **Python modules**: a class registered with :func:`register` from any other module.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from importlib import metadata

from ..errors import NetDefinitionError
from ..protos.fork_names import BVLC_LAYER_TYPES, FORK_LAYER_TYPES
from .base import Layer

ENTRY_POINT_GROUP = "dlsoft.layers"

_REGISTRY: dict[str, type[Layer]] = {}
_ORIGIN: dict[str, str] = {}
_loaded = False


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator: make ``cls`` the implementation of ``cls.type``."""
    if not cls.type:
        raise TypeError(f"{cls.__name__} has no 'type'")
    if cls.type in _REGISTRY and _REGISTRY[cls.type] is not cls:
        raise TypeError(f"layer type {cls.type!r} registered twice "
                        f"({_REGISTRY[cls.type].__name__} and {cls.__name__})")
    _REGISTRY[cls.type] = cls
    _ORIGIN.setdefault(cls.type, "built in" if cls.__module__.startswith("dlsoft.")
                       else f"Python module {cls.__module__}")
    return cls


def _load_all() -> None:
    """Import every module of dlsoft.layers, so their @register decorators run."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module("dlsoft.layers")
    for info in pkgutil.iter_modules(package.__path__):
        # cpu_loops registers no layer and imports numba (0.2 s): cpu_kernels loads it when needed
        if info.name not in ("base", "registry", "cpu_loops") and not info.name.startswith("_"):
            importlib.import_module(f"dlsoft.layers.{info.name}")


def layer_class(type_name: str) -> type[Layer]:
    """The class registered for ``type_name`` (built in, plugin or registered); NetDefinitionError if none is."""
    _load_all()
    cls = _REGISTRY.get(type_name)
    if cls is None:
        cls = _load_plugin(type_name)
    if cls is None:
        raise NetDefinitionError(unknown_type_message(type_name)) from None
    return cls


def registered_types() -> list[str]:
    """Every layer type available: built in, registered, and declared by plugin packages; sorted."""
    _load_all()
    return sorted(set(_REGISTRY) | set(_plugin_entry_points()))


def layer_origin(type_name: str) -> str:
    """Where ``type_name`` comes from: ``built in``, ``plugin <dist> <version> (<module:Class>)``
    or ``Python module <name>``; ``""`` for an unknown type."""
    _load_all()
    if type_name in _ORIGIN:
        return _ORIGIN[type_name]
    ep = _plugin_entry_points().get(type_name)
    return _plugin_origin(ep) if ep is not None else ""


def unknown_type_message(type_name: str) -> str:
    """Why ``type_name`` has no layer: a BVLC or fork type dlsoft lacks, or a near miss."""
    if type_name in BVLC_LAYER_TYPES:
        return f"layer type '{type_name}' (BVLC Caffe) is not implemented in dlsoft"
    if type_name in FORK_LAYER_TYPES:
        return (f"layer type '{type_name}' (from the {FORK_LAYER_TYPES[type_name]} fork of Caffe) is not "
                f"implemented in dlsoft; a plugin package can add it (entry point group '{ENTRY_POINT_GROUP}')")
    known = registered_types()
    lowered = {t.lower(): t for t in known}
    close = [lowered[type_name.lower()]] if type_name.lower() in lowered else \
        difflib.get_close_matches(type_name, known, n=1, cutoff=0.7)
    hint = f" (did you mean '{close[0]}'?)" if close else \
        f" (`dlsoft layers` lists the types; plugins add types through the entry point group '{ENTRY_POINT_GROUP}')"
    return f"unknown layer type '{type_name}'{hint}"


def _plugin_entry_points() -> dict[str, metadata.EntryPoint]:
    """Entry points of the group ``dlsoft.layers``, read afresh (first one wins per name)."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _plugin_origin(ep: metadata.EntryPoint) -> str:
    dist = ep.dist
    package = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "?"
    return f"plugin {package} ({ep.value})"


def _load_plugin(type_name: str) -> type[Layer] | None:
    """Import the plugin class declared for ``type_name`` and register it; None if no plugin declares it."""
    ep = _plugin_entry_points().get(type_name)
    if ep is None:
        return None
    origin = _plugin_origin(ep)
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001 - any import failure of third-party code is reported in one line
        raise NetDefinitionError(f"layer type '{type_name}' comes from {origin}, which failed to load: "
                                 f"{type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise NetDefinitionError(f"layer type '{type_name}' comes from {origin}, which is not a "
                                 "dlsoft.layers.Layer subclass")
    if cls.type and cls.type != type_name:
        raise NetDefinitionError(f"layer type '{type_name}' comes from {origin}, whose class says "
                                 f"type = '{cls.type}'; the entry point's name must be the type")
    cls.type = type_name
    _REGISTRY[type_name] = cls
    _ORIGIN[type_name] = origin
    return cls


def create_layer(param, phase: str = "TRAIN", device=None) -> Layer:
    """Instantiate the layer described by a LayerParameter."""
    from ..backend import CPU
    cls = layer_class(param.type)
    return cls(param, phase=phase, device=device or CPU)
