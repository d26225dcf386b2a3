"""Every registered layer type is covered by a gradient check, a reference-value test and
a GPU-vs-CPU comparison, as derived from the test modules' ``CASES`` (gradcheck.LayerCase)
and the ordinary tests marked ``@covers``."""
from __future__ import annotations

import importlib
from pathlib import Path

from dlsoft.layers import layer_class, registered_types

#: Types whose GPU path is not compared with the CPU, and why.
NO_GPU_COMPARISON = {
    "ImageData": "decodes image files on the host; the GPU copy is the prefetcher's (tested with Data)",
    "HDF5Data": "reads HDF5 files on the host; the GPU copy is the prefetcher's (tested with Data)",
    "MemoryData": "hands over host arrays; the GPU copy is the prefetcher's (tested with Data)",
    "Input": "computes nothing",
}


def collected_covers() -> dict[str, set[str]]:
    covers: dict[str, set[str]] = {}
    for path in sorted(Path(__file__).parent.glob("test_layers_*.py")):
        module = importlib.import_module(path.stem)
        for case in getattr(module, "CASES", ()):
            covers.setdefault(case.type, set()).update(case.kinds)
        for value in vars(module).values():
            for type_name, kind in getattr(value, "layer_covers", ()):
                covers.setdefault(type_name, set()).add(kind)
    return covers


def test_every_registered_layer_is_covered():
    covers = collected_covers()
    missing = []
    for type_name in registered_types():
        kinds = covers.get(type_name, set())
        needs = {"reference"} if layer_class(type_name).forward_only else {"gradient", "reference"}
        if type_name not in NO_GPU_COMPARISON:
            needs.add("gpu")
        if not needs <= kinds:
            missing.append(f"{type_name} (has {sorted(kinds) or 'nothing'}, needs {sorted(needs)})")
    assert not missing, "layers without tests: " + ", ".join(missing)


def test_no_module_declares_a_covers_dict():
    """Coverage comes from the cases and the marked tests, not from a module's own list."""
    stale = [path.stem for path in sorted(Path(__file__).parent.glob("test_layers_*.py"))
             if hasattr(importlib.import_module(path.stem), "COVERS")]
    assert not stale, (f"{stale} declare COVERS: list gradcheck.LayerCase s in CASES, or mark the tests "
                       "with @covers(type, kind) (see tests/gradcheck.py)")


def test_covers_name_only_registered_types():
    unknown = set(collected_covers()) - set(registered_types())
    assert not unknown, f"cases or @covers name unregistered types: {sorted(unknown)}"
