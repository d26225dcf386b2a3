"""Solvers: Caffe's training loop, update rules, lr policies and snapshots.

``get_solver(path)`` / ``Solver(param, device)``; ``SOLVERS`` maps each solver ``type``
(SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam) to its update rule.
"""
from __future__ import annotations

from .signals import handling_signals
from .solver import Solver, get_solver
from .updates import RULES as SOLVERS

__all__ = ["SOLVERS", "Solver", "get_solver", "handling_signals"]
