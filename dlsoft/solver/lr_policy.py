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
            exponent = -p.gamma * (iteration - p.stepsize)
            rate = 0.0 if exponent > 700 else base * (1.0 / (1.0 + math.exp(exponent)))  # exp overflows past 709
        else:  # Solver validation rejects unknown policies before we get here
            raise ValueError(f"unknown lr_policy {self.policy!r}")
        return float(np.float32(rate))


def check_policy(param, error) -> None:
    """Raise ``error(field, problem)`` if the policy is unknown or its parameters give no
    finite, non-negative rate up to ``max_iter``."""
    problem = _policy_problem(param)
    if problem is not None:
        raise error(*problem)


def _policy_problem(param) -> tuple[str, str] | None:
    """``(field, problem)`` if the policy's parameters give no finite, non-negative rate up to ``max_iter``.

    Checked when the solver is made, so a bad ``gamma`` or ``power`` does not stop the
    run hours in (inv with a negative gamma reaches a negative base at iteration
    ``-1/gamma``). Every policy is monotonic in the iteration, so its two ends decide.
    """
    p, policy = param, param.lr_policy
    if policy not in POLICIES:
        what = f"unknown policy '{policy}'" if policy else "not set"
        return "lr_policy", f"{what} (one of {', '.join(POLICIES)})"
    if policy == "step" and p.stepsize <= 0:
        return "stepsize", f"lr_policy 'step' needs stepsize > 0, got {p.stepsize}"
    if policy == "poly" and p.max_iter <= 0:
        return "max_iter", f"lr_policy 'poly' needs max_iter > 0, got {p.max_iter}"
    if policy in ("step", "exp", "inv", "multistep") and p.gamma < 0:
        return "gamma", f"lr_policy '{policy}' needs gamma >= 0, got {p.gamma:g}"
    if policy == "poly" and p.power < 0:
        return "power", f"lr_policy 'poly' needs power >= 0 (the rate at max_iter is 0^power), got {p.power:g}"
    if policy == "multistep" and list(p.stepvalue) != sorted(p.stepvalue):
        return "stepvalue", f"lr_policy 'multistep' needs increasing stepvalues, got {list(p.stepvalue)}"
    last = max(p.max_iter, 0)
    for iteration in (0, last):
        rate = LearningRate(p)
        if policy == "multistep":
            rate.current_step = sum(1 for v in p.stepvalue if iteration >= v)
        try:
            with np.errstate(over="ignore"):
                value = rate.peek(iteration) if policy != "multistep" else \
                    float(np.float32(p.base_lr * math.pow(p.gamma, rate.current_step)))
        except (OverflowError, ValueError, ZeroDivisionError):
            value = math.inf
        if not math.isfinite(value) or value < 0:
            field = "power" if policy in ("inv", "poly") else "gamma"
            return field, (f"lr_policy '{policy}' gives learning rate {value:g} at iteration {iteration} "
                           f"(base_lr {p.base_lr:g}, gamma {p.gamma:g}, power {p.power:g}): choose values "
                           "that keep it finite up to max_iter")
    return None
