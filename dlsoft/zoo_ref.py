"""References to model-zoo files, ``zoo:NAME`` or ``zoo:NAME/FILE``, parsed in one place.

Every file argument of the CLI and the solver's net paths may be such a reference;
:func:`dlsoft.model_zoo.resolve` turns one into a local path. This module imports
nothing, so the CLI can recognise references without loading the zoo.
"""
from __future__ import annotations

PREFIX = "zoo:"


def is_zoo_ref(value) -> bool:
    """Whether ``value`` is a string of the form ``zoo:...``."""
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_zoo_ref(value) -> tuple[str, str] | None:
    """``(NAME, FILE)`` of ``zoo:NAME/FILE`` (FILE ``""`` for ``zoo:NAME``); None if not a reference."""
    if not is_zoo_ref(value):
        return None
    name, _, file_key = value[len(PREFIX):].partition("/")
    return name, file_key
