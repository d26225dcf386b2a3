"""Every registered layer type is covered by a gradient check and a reference-value test."""
from __future__ import annotations

import importlib
from pathlib import Path

from dlsoft.layers import layer_class, registered_types


def collected_covers() -> dict[str, set[str]]:
    covers: dict[str, set[str]] = {}
    for path in sorted(Path(__file__).parent.glob("test_layers_*.py")):
        module = importlib.import_module(path.stem)
        for type_name, kinds in getattr(module, "COVERS", {}).items():
            covers.setdefault(type_name, set()).update(kinds)
    return covers


def test_every_registered_layer_is_covered():
    covers = collected_covers()
    missing = []
    for type_name in registered_types():
        kinds = covers.get(type_name, set())
        needs = {"reference"} if layer_class(type_name).forward_only else {"gradient", "reference"}
        if not needs <= kinds:
            missing.append(f"{type_name} (has {sorted(kinds) or 'nothing'}, needs {sorted(needs)})")
    assert not missing, "layers without tests: " + ", ".join(missing)


def test_covers_name_only_registered_types():
    unknown = set(collected_covers()) - set(registered_types())
    assert not unknown, f"COVERS names unregistered types: {sorted(unknown)}"
