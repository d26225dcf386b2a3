"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``).

With ``base_lr``, ``gamma``, ``power``, ``stepsize``, ``stepvalue`` and ``max_iter``
from the SolverParameter and ``iter`` the current iteration:

- fixed:     base_lr
- step:      base_lr * gamma ^ floor(iter / stepsize)
- exp:       base_lr * gamma ^ iter
- inv:       base_lr * (1 + gamma * iter) ^ (-power)
- multistep: base_lr * gamma ^ (number of stepvalues passed)
- poly:      base_lr * (1 - iter / max_iter) ^ power
- sigmoid:   base_lr * 1 / (1 + exp(-gamma * (iter - stepsize)))

The result is rounded to float32, as Caffe keeps the rate in a ``Dtype``.
"""
from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


class LearningRate:
    """The rate at an iteration; holds ``current_step`` (multistep's position, saved in snapshots).

    ``current_step`` is Caffe's ``current_step_``: for ``step`` it is ``iter // stepsize``;
    for ``multistep`` it advances by at most one stepvalue per call, exactly as Caffe
    does (so a restored solver must restore it too).
    """

    def __init__(self, param):
        self.param = param
        self.policy = param.lr_policy
        self.current_step = 0

    def peek(self, iteration: int) -> float:
        """The rate at ``iteration`` without advancing ``current_step``."""
        step = self.current_step
        try:
            return self(iteration, quiet=True)
        finally:
            self.current_step = step

    def __call__(self, iteration: int, quiet: bool = False) -> float:
        p = self.param
        base = p.base_lr
        if self.policy == "fixed":
            rate = base
        elif self.policy == "step":
            self.current_step = iteration // p.stepsize
            rate = base * math.pow(p.gamma, self.current_step)
        elif self.policy == "exp":
            rate = base * math.pow(p.gamma, iteration)
        elif self.policy == "inv":
            rate = base * math.pow(1.0 + p.gamma * iteration, -p.power)
        elif self.policy == "multistep":
            if self.current_step < len(p.stepvalue) and iteration >= p.stepvalue[self.current_step]:
                self.current_step += 1
                if not quiet:
                    log.info("MultiStep Status: Iteration %d, step = %d", iteration, self.current_step)
            rate = base * math.pow(p.gamma, self.current_step)
        elif self.policy == "poly":
            rate = base * math.pow(1.0 - iteration / p.max_iter, p.power)
        elif self.policy == "sigmoid":
            rate = base * (1.0 / (1.0 + math.exp(-p.gamma * (iteration - p.stepsize))))
        else:  # Solver validation rejects unknown policies before we get here
            raise ValueError(f"unknown lr_policy {self.policy!r}")
        return float(np.float32(rate))
