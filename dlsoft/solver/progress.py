"""What a user sees while training: Caffe-style log lines, a live progress bar, a metrics file.

- Log lines go through :mod:`logging` with Caffe's wording (``Iteration 100, lr = 0.01``,
  ``    Train net output #0: loss = 0.31 (* 1 = 0.31 loss)``,
  ``    Test net output #0: accuracy = 0.97``), so ``parse_log``-style tools keep working;
  :class:`CaffeLogFormatter` adds glog's ``I1124 13:39:22.381027  1234 solver.py:88]``
  prefix for tools that read the timestamps.
- A tqdm bar (iteration, loss, lr, ETA) on stderr, only when stderr is a terminal.
- A metrics file of JSON lines, one object per display or test event:
  ``{"phase": "train", "iter": 100, "time": ..., "loss": 0.31, "lr": 0.01, "iter_per_s": 80.2,
  "outputs": {"loss": 0.29}}`` and ``{"phase": "test", "iter": 500, "time": ..., "net": "#0",
  "scores": {"accuracy": 0.97, "loss": 0.09}}`` (plus ``"loss"`` with ``test_compute_loss``).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time

from ..fileio import atomic_write_bytes

log = logging.getLogger(__name__)

#: tqdm settings; the bar is cleared at the end (the log lines tell the story).
BAR_OPTIONS = {"unit": "it", "dynamic_ncols": True, "leave": False, "mininterval": 0.25}


def fmt(value: float) -> str:
    """A number as glog streams a float (6 significant digits)."""
    return f"{value:.6g}"


class CaffeLogFormatter(logging.Formatter):
    """glog's line prefix: ``<L><mmdd> <hh:mm:ss.uuuuuu> <thread> <file>:<line>] message``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created)
        prefix = (f"{record.levelname[:1]}{stamp:%m%d %H:%M:%S}.{stamp.microsecond:06d} "
                  f"{record.thread % 100000:5d} {record.filename}:{record.lineno}] ")
        return prefix + record.getMessage()


class Progress:
    """Progress bar and metrics file for one training run.

    ``bar``: None means "when stderr is a TTY". ``metrics_path``: None disables the file.
    """

    def __init__(self, start: int, stop: int, bar: bool | None = None, metrics_path: str | None = None):
        self.metrics_path = metrics_path
        self._bar = None
        self._redirect = None
        if bar is None:
            bar = sys.stderr.isatty()
        if bar and stop > start:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=stop - start, desc=f"iter {start}", **BAR_OPTIONS)
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def tick(self, iteration: int, loss: float, lr: float) -> None:
        """One iteration done (called every iteration; cheap when there is no bar)."""
        if self._bar is not None:
            self._bar.set_description(f"iter {iteration}", refresh=False)
            self._bar.set_postfix_str(f"loss={loss:.4g} lr={lr:.3g}", refresh=False)
            self._bar.update(1)

    def event(self, phase: str, iteration: int, **values) -> None:
        """Append ``{"phase": "train"|"test", "iter": N, "time": t, ...values}`` to the metrics file."""
        if self.metrics_path is None:
            return
        record = {"phase": phase, "iter": iteration, "time": round(time.time(), 3), **values}
        try:  # opened per event (a few per hundred iterations), so nothing stays open between runs
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            log.warning("cannot write metrics file %s (%s); metrics are not recorded", self.metrics_path, exc)
            self.metrics_path = None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None


def start_metrics(path: str | None, iteration: int) -> str | None:
    """Begin a run's records in the metrics file ``path``; returns ``path``, or None if it cannot be written.

    A run from iteration 0 starts the file afresh; a resumed run keeps the records before
    its iteration (its own history) and drops those from that iteration on, which the
    interrupted run wrote after its snapshot: nothing is recorded twice and ``dlsoft plot``
    never joins two runs. A ``{"phase": "run"}`` record marks where each run started.
    """
    if path is None:
        return None
    kept: list[str] = []
    if iteration > 0 and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and isinstance(record.get("iter"), int) and record["iter"] < iteration:
                    kept.append(json.dumps(record))
    kept.append(json.dumps({"phase": "run", "iter": iteration, "time": round(time.time(), 3),
                            "start": "resumed" if iteration > 0 else "fresh"}))
    try:
        atomic_write_bytes(path, ("\n".join(kept) + "\n").encode("utf-8"))
    except OSError as exc:
        log.warning("cannot write metrics file %s (%s); metrics are not recorded", path, exc)
        return None
    return path
