"""Plot training curves (loss, test scores, learning rate) from a run's logs.

Two sources are understood:

* dlsoft's metrics file (``<snapshot_prefix>_metrics.jsonl``): JSON lines, the solver's
  ``{"event": "train", "iter": N, "loss": ..., "lr": ..., "outputs": {...}}`` and
  ``{"event": "test", "iter": N, "net": "#0", "scores": {"accuracy": ...}}`` records;
* Caffe-format log text (dlsoft's own log, or a real Caffe log)::

      Iteration 100 (12.3 iter/s, 8.1s/100 iters), loss = 0.31
      Iteration 100, lr = 0.00992565
      Iteration 500, Testing net (#0)
      Test net output #0: accuracy = 0.9812

Parsing needs nothing beyond the standard library; drawing needs matplotlib
(``pip install 'dlsoft[plot]'``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DlsoftError

Series = list[tuple[int, float]]

_NUMBER = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf|-nan|-inf))"
_TRAIN_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUMBER)
_LR = re.compile(r"Iteration (\d+), lr = " + _NUMBER)
_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_TEST_OUTPUT = re.compile(r"Test net output #\d+: (\S+) = " + _NUMBER)
_ITERATION = re.compile(r"Iteration (\d+)")

METRICS_GLOBS = ("*_metrics.jsonl", "*.jsonl")
LOG_GLOBS = ("*.log", "*.log.txt", "*.INFO", "*log*.txt")


@dataclass
class Curves:
    """Training curves: each series is a list of ``(iteration, value)``."""

    train: dict[str, Series] = field(default_factory=dict)  # e.g. "loss"
    test: dict[str, Series] = field(default_factory=dict)   # e.g. "accuracy", "loss"; "#1/accuracy" for net 1
    lr: Series = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.train or self.test or self.lr)


def parse_caffe_log(text: str) -> Curves:
    """Curves from Caffe-format log text (dlsoft's or Caffe's own)."""
    curves = Curves()
    test_iter, test_net = None, 0
    for line in text.splitlines():
        m = _TRAIN_LOSS.search(line)
        if m:
            curves.train.setdefault("loss", []).append((int(m.group(1)), float(m.group(2))))
            continue
        m = _LR.search(line)
        if m:
            curves.lr.append((int(m.group(1)), float(m.group(2))))
            continue
        m = _TESTING.search(line)
        if m:
            test_iter, test_net = int(m.group(1)), int(m.group(2))
            continue
        m = _TEST_OUTPUT.search(line)
        if m and test_iter is not None:
            name = m.group(1) if test_net == 0 else f"#{test_net}/{m.group(1)}"
            curves.test.setdefault(name, []).append((test_iter, float(m.group(2))))
    return curves


def parse_metrics(text: str, path: str = "<metrics>") -> Curves:
    """Curves from dlsoft's JSON-lines metrics (the solver's ``train`` and ``test`` events)."""
    curves = Curves()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DlsoftError(f"not a JSON line ({exc.msg})", path=path, line=number) from None
        if not isinstance(record, dict) or not _is_number(record.get("iter", record.get("iteration"))):
            continue
        iteration = int(record.get("iter", record.get("iteration")))
        event = str(record.get("event", record.get("phase", "train"))).lower()
        if event == "test":
            net = str(record.get("net", "#0"))
            prefix = "" if net in ("#0", "0") else f"{net}/"
            values = dict(record.get("scores") or {})
            if _is_number(record.get("loss")):
                values["loss"] = record["loss"]
            for name, value in values.items():
                if _is_number(value):
                    curves.test.setdefault(prefix + str(name), []).append((iteration, float(value)))
        elif event == "train":
            if _is_number(record.get("loss")):
                curves.train.setdefault("loss", []).append((iteration, float(record["loss"])))
            if _is_number(record.get("lr")):
                curves.lr.append((iteration, float(record["lr"])))
            for name, value in (record.get("outputs") or {}).items():
                if name != "loss" and _is_number(value):  # the smoothed loss is plotted already
                    curves.train.setdefault(str(name), []).append((iteration, float(value)))
    return curves


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pick_file(run_dir: Path) -> Path:
    for patterns in (METRICS_GLOBS, LOG_GLOBS):
        found = sorted({p for pattern in patterns for p in run_dir.glob(pattern) if p.is_file()},
                       key=lambda p: p.stat().st_mtime)
        if found:
            return found[-1]  # the newest
    raise DlsoftError(f"{run_dir}: no metrics file ({', '.join(METRICS_GLOBS)}) or log "
                      f"({', '.join(LOG_GLOBS)}) to plot")


def load_curves(path: str | Path) -> Curves:
    """Curves from a run directory (its newest metrics file, else log), a metrics file or a log."""
    path = Path(path)
    if path.is_dir():
        path = _pick_file(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DlsoftError("no such file or directory", path=str(path)) from None
    except OSError as exc:
        raise DlsoftError(f"cannot read ({exc.strerror})", path=str(path)) from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    curves = parse_metrics(text, str(path)) if first.lstrip().startswith("{") else parse_caffe_log(text)
    if curves.empty():
        raise DlsoftError("found no training loss, test scores or learning rates to plot", path=str(path))
    return curves


def make_figure(curves: Curves, title: str = ""):
    """The matplotlib figure of :func:`plot_curves`: loss, other scores and lr panels against iterations.

    The learning rate is drawn as steps (each value holds until the next record), so the
    ``step``/``multistep`` policies look like the staircase they are.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DlsoftError("plotting needs matplotlib: pip install 'dlsoft[plot]'") from None
    losses = {f"train {k}": v for k, v in curves.train.items() if "loss" in k}
    losses.update({f"test {k}": v for k, v in curves.test.items() if "loss" in k})
    scores = {f"test {k}": v for k, v in curves.test.items() if "loss" not in k}
    scores.update({f"train {k}": v for k, v in curves.train.items() if "loss" not in k})
    panels = [(title_, series) for title_, series in
              (("loss", losses), ("scores", scores), ("learning rate", {"lr": curves.lr} if curves.lr else {}))
              if series]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3 * len(panels)), sharex=True, squeeze=False)
    for ax, (panel_title, series) in zip(axes[:, 0], panels):
        for label, points in series.items():
            xs, ys = zip(*points)
            if panel_title == "learning rate":
                ax.step(xs, ys, where="post", label=label)
            else:
                ax.plot(xs, ys, label=label, marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_ylabel(panel_title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(curves: Curves, out_path: str | Path, title: str = "") -> Path:
    """Draw loss (train and test), the other test scores and lr against iterations into ``out_path``."""
    fig = make_figure(curves, title)
    import matplotlib.pyplot as plt  # noqa: PLC0415 - make_figure checked it is there
    out_path = Path(out_path)
    try:
        fig.savefig(out_path)
    except ValueError as exc:  # unknown extension
        raise DlsoftError(f"{out_path}: {exc}") from None
    finally:
        plt.close(fig)
    return out_path
