"""SIGINT/SIGHUP handling as Caffe's ``SignalHandler``: the handler only records the
signal; the training loop asks for the requested action between iterations.

Effects (Caffe's ``-sigint_effect`` / ``-sighup_effect``): ``stop`` (end training; the
solver then snapshots if ``snapshot_after_train`` is set), ``snapshot`` (write a snapshot
and go on), ``none`` (ignore). A second Ctrl-C while a stop is pending interrupts at once.
"""
from __future__ import annotations

import signal
import threading
from typing import Self

from ..errors import SolverError

STOP, SNAPSHOT, NONE = "stop", "snapshot", "none"
EFFECTS = (STOP, SNAPSHOT, NONE)


def check_effect(effect: str, which: str) -> str:
    value = str(effect).lower()
    if value not in EFFECTS:
        raise SolverError(f"{which} must be one of {', '.join(EFFECTS)}, got {effect!r}")
    return value


class SignalHandler:
    """Context manager installing SIGINT/SIGHUP handlers for the duration of training.

    Outside the main thread (where Python cannot install handlers) it does nothing and
    :meth:`requested_action` only reports what :meth:`request` was told.
    """

    def __init__(self, sigint_effect: str = STOP, sighup_effect: str = SNAPSHOT):
        self.effects = {signal.SIGINT: check_effect(sigint_effect, "sigint_effect")}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = check_effect(sighup_effect, "sighup_effect")
        self._pending: list[int] = []
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and signal.SIGINT in self._pending:
            raise KeyboardInterrupt  # impatient second Ctrl-C
        self._pending.append(signum)

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for signum in self.effects:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def request(self, signum: int) -> None:
        """Record ``signum`` as if it had been received."""
        self._pending.append(signum)

    def requested_action(self) -> str:
        """The effect of the oldest pending signal (``none`` when there is none); consumes it.

        As Caffe, SIGINT takes precedence over SIGHUP.
        """
        for signum in (signal.SIGINT, getattr(signal, "SIGHUP", None)):
            if signum in self._pending:
                self._pending.remove(signum)
                return self.effects.get(signum, NONE)
        return NONE
