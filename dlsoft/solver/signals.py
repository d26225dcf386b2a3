"""SIGINT/SIGHUP handling as Caffe's ``SignalHandler``: the handler only records the
signal; the training loop asks for the requested action between iterations.

Effects (Caffe's ``-sigint_effect`` / ``-sighup_effect``): ``stop`` (end training; the
solver then snapshots if ``snapshot_after_train`` is set), ``snapshot`` (write a snapshot
and go on), ``none`` (ignore). A second Ctrl-C while a stop is pending interrupts at once.
In data-parallel training SIGTERM (what ``mpirun`` sends its ranks on Ctrl-C) acts as
SIGINT does, and a callback may stop an iteration midway with :class:`StopNow`.
"""
from __future__ import annotations

import contextlib
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


class StopNow(Exception):
    """Raised by a solver callback to abandon the current iteration and stop training now.

    The weights are left as the previous update made them (consistent), so the solver
    can still snapshot them: data-parallel training raises it when a stop signal arrives
    while waiting for the other ranks, which ``mpirun`` kills a fraction of a second later.
    """


class SignalHandler:
    """Context manager installing SIGINT/SIGHUP handlers for the duration of training.

    Outside the main thread (where Python cannot install handlers) it does nothing and
    :meth:`requested_action` only reports what :meth:`request` was told.
    """

    def __init__(self, sigint_effect: str = STOP, sighup_effect: str = SNAPSHOT, sigterm_effect: str | None = None):
        self.effects = {signal.SIGINT: check_effect(sigint_effect, "sigint_effect")}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = check_effect(sighup_effect, "sighup_effect")
        if sigterm_effect is not None:
            self.effects[signal.SIGTERM] = check_effect(sigterm_effect, "sigterm_effect")
        self._pending: list[int] = []
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if signum in (signal.SIGINT, signal.SIGTERM) and signum in self._pending:
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

        As Caffe, SIGINT takes precedence over SIGHUP (SIGTERM, when handled, comes first).
        """
        for signum in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
            if signum in self._pending:
                self._pending.remove(signum)
                return self.effects.get(signum, NONE)
        return NONE

    def stop_pending(self) -> bool:
        """Whether a received signal asks to stop (without consuming it)."""
        return any(self.effects.get(signum) == STOP for signum in self._pending)


@contextlib.contextmanager
def handling_signals(solver):
    """``with handling_signals(solver): solver.step(n)`` acts on SIGINT/SIGHUP as ``solve`` does."""
    solver._signals = SignalHandler(solver.sigint_effect, solver.sighup_effect, solver.sigterm_effect)
    try:
        with solver._signals:
            yield solver
    finally:
        solver._signals = None
