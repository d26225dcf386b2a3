"""Naming the layer a failure happened in, for the cupy_api runs' messages."""
from __future__ import annotations


def layer_in_traceback(tb) -> str:
    """The innermost dlsoft layer on a traceback and the method it was in, or "test code"."""
    from dlsoft.layers.base import Layer
    found = "test code"
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("self")
        if isinstance(candidate, Layer):
            found = (f"layer '{candidate.name}' (type {candidate.type}, "
                     f"{type(candidate).__name__}.{tb.tb_frame.f_code.co_name})")
        tb = tb.tb_next
    return found
