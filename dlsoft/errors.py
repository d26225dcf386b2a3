"""Errors that dlsoft raises for bad input.

Every error a user can cause derives from :class:`DlsoftError`. Its message is one
line that names where the problem is (file and line, or layer and blob) and what was
expected, so the command line can print it as it is, without a traceback.
"""
from __future__ import annotations


def one_line(text) -> str:
    """``text`` (a message or an exception) on one line: whitespace runs become one space;
    an exception without a message gives its type's name."""
    line = " ".join(str(text).split())
    return line or (type(text).__name__ if isinstance(text, BaseException) else "")


class DlsoftError(Exception):
    """Base class of every user-facing dlsoft error (one-line message)."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        self.detail = message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)


class ParseError(DlsoftError):
    """A prototxt, YAML or binary file could not be read into its message."""


class NetDefinitionError(DlsoftError):
    """The net is well-formed text but not a valid graph (unknown type, missing bottom, bad shape)."""


class WeightsError(DlsoftError):
    """Weights do not fit the net (shape mismatch, unreadable file)."""


class SolverError(DlsoftError):
    """A solver definition is invalid, or training had to stop (for example a NaN loss)."""


class DataError(DlsoftError):
    """A data source is missing, unreadable or does not fit the net."""


class WriteError(DlsoftError, OSError):
    """A file could not be written (disk full, no permission); an OSError too, for old callers."""

    def __str__(self) -> str:  # the one-line message, not OSError's "[Errno n] ..."
        return str(self.args[0]) if self.args else ""


class DeviceError(DlsoftError):
    """The requested device is not available (no cupy, no GPU, bad index)."""


class DistributedError(DlsoftError):
    """Data-parallel training could not start, or a rank was lost while it ran."""
