"""The training loop: Caffe's ``Solver`` (Init, Step, Solve, Test, Snapshot, Restore).

Per iteration, as ``Solver::Step`` and ``SGDSolver::ApplyUpdate``:

1. zero the parameter diffs; test first if ``iter % test_interval == 0`` (at iteration 0
   only with ``test_initialization``);
2. forward/backward ``iter_size`` times (diffs accumulate), loss averaged; a non-finite
   loss stops here with a :class:`SolverError`;
3. every ``display`` iterations log the smoothed loss and each train-net output;
4. rate from the lr policy; clip the global gradient norm to ``clip_gradients``; per
   learnable blob divide the diff by ``iter_size``, add weight decay (L2 ``wd*decay_mult*w``
   or L1 ``wd*decay_mult*sign(w)``), turn it into the update (:mod:`.updates`) with
   ``lr * lr_mult``; then ``w -= update``;
5. ``iter += 1``; snapshot every ``snapshot`` iterations or when a signal asks.

The solver only runs ``forward_backward``: it never writes input blobs, so a user may
fill ``solver.net.blobs["data"].data`` by hand before each ``step(1)``, as with pycaffe.

Data-parallel training (:mod:`dlsoft.distributed`) plugs in with ``shard`` (this rank's
share of the train data; only rank 0, the root solver, tests, logs and snapshots) and
:meth:`Solver.add_callback` (Caffe's ``Solver::Callback``): ``on_start(solver)`` at each
``step``, ``on_gradients_ready(solver, loss) -> loss`` after each iteration's passes, before
the update (average the diffs in place, return the agreed loss, or raise ``StopNow``); an
optional ``on_iteration_start(solver)`` begins each iteration (pycaffe's ``on_start``).
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Self

import numpy as np

from .. import random as dl_random
from ..backend import parse_device, to_numpy
from ..data.shard import Shard
from ..errors import DlsoftError, SolverError
from ..netdef import io
from ..netdef.net import Net
from ..protos import caffe_pb2
from . import config, evaluation
from . import snapshot as snap
from .lr_policy import LearningRate, check_policy
from .progress import Progress, fmt, start_metrics
from .signals import NONE, SNAPSHOT, STOP, SignalHandler, StopNow, check_effect
from .updates import RULES

log = logging.getLogger(__name__)

PHASE_NAMES = {caffe_pb2.TRAIN: "TRAIN", caffe_pb2.TEST: "TEST"}
SIDECAR_FORMAT = 1


class Solver:
    """Trains a net as Caffe's solver does; pycaffe's attributes and methods.

    ``Solver(param, device="cpu", weights=None, metrics=None, progress_bar=None,
    sigint_effect="stop", sighup_effect="snapshot", shard=None)``: ``param`` is a solver file
    (prototxt/YAML) or a SolverParameter. ``weights`` (a path, comma-separated paths or
    a list) are caffemodels to fine-tune from, added to the file's ``weights``. ``metrics``
    is the JSON-lines metrics file (default ``<snapshot_prefix>_metrics.jsonl``; False for
    none). ``progress_bar`` None shows a bar only when stderr is a terminal. ``shard``
    (a :class:`~dlsoft.data.shard.Shard`): one rank's solver in data-parallel training.

    Net paths in the solver file are used as written (relative to the working directory,
    as Caffe does) and, when no such file exists, relative to the solver file's folder.
    """

    #: The nets' class, and a ``type`` overriding the file's (pycaffe's ``caffe.Net``, ``AdamSolver``).
    net_class: type[Net] = Net
    solver_type: str | None = None

    def __init__(self, param, device="cpu", *, weights=None, metrics=None, progress_bar=None,
                 sigint_effect: str = STOP, sighup_effect: str = SNAPSHOT, shard: Shard | None = None):
        if isinstance(param, (str, os.PathLike)):
            self.path: str | None = str(param)
            param = io.read_solver(self.path)
        elif isinstance(param, caffe_pb2.SolverParameter):
            self.path = None
            param = io.upgrade_solver(param) if param.HasField("solver_type") else param
        else:
            raise TypeError(f"param must be a path or a SolverParameter, not {type(param).__name__}")
        self.param = caffe_pb2.SolverParameter()
        self.param.CopyFrom(param)
        self.param.type = self.solver_type or self.param.type
        self._set_snapshot_prefix()
        self._validate()
        self.sigint_effect = check_effect(sigint_effect, "sigint_effect")
        self.sighup_effect = check_effect(sighup_effect, "sighup_effect")
        self.sigterm_effect: str | None = None  # data-parallel runs treat SIGTERM as SIGINT
        self.device = parse_device(device)
        self.shard = shard
        #: only the root solver (rank 0) tests, logs and snapshots (Caffe's root_solver)
        self.root_solver = shard is None or shard.rank == 0
        self._callbacks: list = []
        p = self.param
        if p.random_seed >= 0:
            dl_random.set_seed(p.random_seed)
        self.net: Net = self._build_train_net()
        self.test_nets: list[Net] = self._build_test_nets() if self.root_solver else []
        for test_net in self.test_nets:
            test_net.share_trained_layers_with(self.net)
        for path in self._weight_files(weights):
            loaded = [net.copy_from(path) for net in [self.net, *self.test_nets]]
            log.info("Finetuning from %s: weights for %d of %d layers with parameters", path, loaded[0],
                     sum(1 for layer in self.net.layers if layer.blobs))

        self.iter = 0
        self.rule = RULES[p.type](p, self.net.learnable_params)
        self._decay_scratch: dict = {}  # weight decay's work buffers, by learnable-blob index
        self._lr_policy = LearningRate(p)
        self._lr = self._lr_policy.peek(0)
        self._losses: list[float] = []
        self.smoothed_loss = 0.0
        self._forwards = [0] * (1 + len(self.test_nets))  # batches each net's data layers delivered
        self._signals: SignalHandler | None = None
        self._requested_early_exit = False
        self.last_snapshot: str | None = None
        self.test_scores: list[OrderedDict] = [OrderedDict() for _ in self.test_nets]
        self.progress_bar = progress_bar
        if metrics is None:
            metrics = f"{p.snapshot_prefix}_metrics.jsonl" if p.snapshot_prefix else False
        self.metrics_path: str | None = str(metrics) if metrics else None
        self._lock = snap.PrefixLock(p.snapshot_prefix)
        self._metrics_started = False  # a run's first step begins its records (progress.start_metrics)

    # ------------------------------------------------------------------ set-up
    def _error(self, field: str, message: str) -> SolverError:
        return SolverError(f"{field}: {message}", path=self.path, line=config.field_line(self.path, field))

    def _set_snapshot_prefix(self) -> None:
        """Caffe's UpgradeSnapshotPrefixProperty: default to the solver file's path without extension."""
        p = self.param
        if self.path is None:
            return
        if not p.HasField("snapshot_prefix"):
            p.snapshot_prefix = str(Path(self.path).with_suffix(""))
        elif os.path.isdir(p.snapshot_prefix):
            p.snapshot_prefix = os.path.join(p.snapshot_prefix, Path(self.path).stem)

    def _validate(self) -> None:
        p = self.param
        train_fields = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if not train_fields:
            raise self._error("net", "no train net: set one of net, net_param, train_net, train_net_param")
        if len(train_fields) > 1:
            raise self._error(train_fields[1], f"more than one train net given ({', '.join(train_fields)}); keep one")
        if p.type not in RULES:
            raise self._error("type", f"unknown solver type '{p.type}' (one of {', '.join(RULES)})")
        if p.base_lr < 0:
            raise self._error("base_lr", f"must be >= 0, got {fmt(p.base_lr)}")
        check_policy(p, self._error)  # lr_policy and the parameters it uses
        evaluation.check(p, self._error)  # eval_type and ap_version (the SSD fork's)
        if p.regularization_type not in ("L1", "L2"):
            raise self._error("regularization_type", f"unknown type '{p.regularization_type}' (L1 or L2)")
        for field in ("average_loss", "iter_size"):
            if getattr(p, field) < 1:
                raise self._error(field, f"must be >= 1, got {getattr(p, field)}")
        for field in ("display", "snapshot", "max_iter", "test_interval"):
            if getattr(p, field) < 0:
                raise self._error(field, f"must be >= 0, got {getattr(p, field)}")
        if p.type in ("AdaGrad", "RMSProp") and p.momentum != 0:
            raise self._error("momentum", f"must be 0 for {p.type} (got {fmt(p.momentum)})")
        if p.type == "RMSProp" and not 0 <= p.rms_decay <= 1:
            raise self._error("rms_decay", f"must be in [0, 1], got {fmt(p.rms_decay)}")
        # Test nets, as Solver::InitTestNets counts them.
        explicit = len(p.test_net_param) + len(p.test_net)
        generic = p.HasField("net") or p.HasField("net_param")
        if len(p.test_iter) < explicit or (not generic and len(p.test_iter) != explicit):
            raise self._error("test_iter", f"has {len(p.test_iter)} value(s) for {explicit} test net(s) "
                                           "(test_net/test_net_param): give one test_iter per test net")
        if p.test_state and len(p.test_state) != len(p.test_iter):
            raise self._error("test_state", f"has {len(p.test_state)} value(s) for {len(p.test_iter)} test "
                                            "net(s): give none or one per test net")
        if p.test_iter and p.test_interval <= 0:
            raise self._error("test_interval", "must be > 0 when test nets are given (test_iter)")
        if any(n <= 0 for n in p.test_iter):
            raise self._error("test_iter", "every value must be > 0")
        # checked now, not after hours of training; a solver that never snapshots (snapshot 0,
        # snapshot_after_train false: an evaluation run) may name a folder that is not there
        if p.snapshot > 0 or (p.snapshot_prefix and p.snapshot_after_train):
            folder = os.path.dirname(p.snapshot_prefix) or "."
            if not p.snapshot_prefix:
                raise self._error("snapshot_prefix", "not set but snapshot is")
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                raise self._error("snapshot_prefix", f"the folder '{folder}' of '{p.snapshot_prefix}' does not exist "
                                                     "or is not writable: create it or change snapshot_prefix")

    def _resolve(self, path: str, field: str) -> str:
        """As written (relative to the working directory, as Caffe), else next to the solver file."""
        if os.path.exists(path):
            return path
        if self.path is not None and not os.path.isabs(path):
            beside = os.path.join(os.path.dirname(os.path.abspath(self.path)), path)
            if os.path.exists(beside):
                return beside
        raise self._error(field, f"file '{path}' not found (looked in the working directory"
                                 + (" and the solver file's folder)" if self.path else ")"))

    def _make_net(self, source, field: str, phase: int, override) -> Net:
        """Build a net with Caffe's NetState merge: phase, then the file's state, then the solver's."""
        if isinstance(source, str):
            model = self._resolve(source, field)
            file_state = io.read_net(model).state
        else:
            model, file_state = source, source.state
        state = caffe_pb2.NetState(phase=phase)
        state.MergeFrom(file_state)
        if override is not None:
            state.MergeFrom(override)
        return self.net_class(model, phase=PHASE_NAMES[state.phase], level=state.level, stages=list(state.stage),
                              device=self.device, shard=self.shard if phase == caffe_pb2.TRAIN else None)

    def _build_train_net(self) -> Net:
        p = self.param
        for field in ("train_net_param", "train_net", "net_param", "net"):
            if p.HasField(field):
                source = getattr(p, field)
                log.info("Creating training net from %s%s", field, f" file {source}" if isinstance(source, str) else "")
                return self._make_net(source, field, caffe_pb2.TRAIN,
                                      p.train_state if p.HasField("train_state") else None)
        raise AssertionError("validated above")

    def _build_test_nets(self) -> list[Net]:
        p = self.param
        sources = [(net, "test_net_param") for net in p.test_net_param] + [(path, "test_net") for path in p.test_net]
        generic = ("net_param", p.net_param) if p.HasField("net_param") else ("net", p.net)
        sources += [(generic[1], generic[0])] * (len(p.test_iter) - len(sources))
        nets = []
        for i, (source, field) in enumerate(sources):
            log.info("Creating test net (#%d) specified by %s", i, field)
            nets.append(self._make_net(source, field, caffe_pb2.TEST, p.test_state[i] if p.test_state else None))
        return nets

    def _weight_files(self, extra) -> list[str]:
        names = list(self.param.weights)
        if isinstance(extra, (str, os.PathLike)):
            names.append(str(extra))
        elif extra:
            names.extend(str(e) for e in extra)
        files = [part.strip() for name in names for part in name.split(",") if part.strip()]
        return [self._resolve(path, "weights") for path in files]

    # ------------------------------------------------------------------ properties
    @property
    def lr(self) -> float:
        """The learning rate at the current iteration (the one the next update uses)."""
        return self._lr_policy.peek(self.iter)

    @property
    def progress(self) -> bool | None:
        """Whether to show the progress bar (None: only when stderr is a terminal)."""
        return self.progress_bar

    @progress.setter
    def progress(self, value: bool | None) -> None:
        self.progress_bar = value

    @property
    def type(self) -> str:
        return self.param.type

    @property
    def history(self) -> list:
        """The update rule's history arrays, in Caffe's ``history_`` order."""
        return self.rule.history

    # ------------------------------------------------------------------ the loop
    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (Caffe's ``Solver::Step``)."""
        p = self.param
        if iters > 0 and not any(self.net.blob_loss_weights.values()):  # Caffe would train nothing, silently
            raise SolverError(f"the train net '{self.net.name}' has no loss: add a loss layer (SoftmaxWithLoss, "
                              "EuclideanLoss, ...) or a loss_weight on a top", path=self.path)
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        if not self._metrics_started:
            self.metrics_path, self._metrics_started = start_metrics(self.metrics_path, self.iter), True
        self._losses, self.smoothed_loss = [], 0.0
        params = self.net.learnable_params
        root = self.root_solver
        progress = Progress(start_iter, stop_iter, bar=self.progress_bar if iters > 1 and root else False,
                            metrics_path=self.metrics_path if root else None)
        timer, last_display = time.perf_counter(), self.iter
        snap.claim_prefix(self._lock, self.root_solver)  # held until close(): one run per prefix
        for callback in self._callbacks:
            callback.on_start(self)
        try:
            while self.iter < stop_iter:
                forwards_before = list(self._forwards)
                self.net.clear_param_diffs()
                if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                    self.test_all(progress)
                    if self._requested_early_exit:
                        break
                display = root and p.display and self.iter % p.display == 0
                loss, forwards = 0.0, self._forwards[0]
                try:
                    for callback in self._callbacks:  # optional: Caffe's per-iteration on_start (pycaffe's)
                        getattr(callback, "on_iteration_start", lambda solver: None)(self)
                    for _ in range(p.iter_size):
                        loss += self.net.forward_backward()
                        self._forwards[0] += 1
                    loss /= p.iter_size
                    for callback in self._callbacks:
                        loss = callback.on_gradients_ready(self, loss)
                except StopNow:
                    # Abandoned before its update: weights of self.iter, data position to match.
                    self._forwards[0] = forwards
                    self._requested_early_exit = True
                    break
                if not math.isfinite(loss):
                    raise self._non_finite_error(loss)
                self._update_smoothed_loss(loss, start_iter)
                if display:
                    lapse = time.perf_counter() - timer
                    per_s = (self.iter - last_display) / lapse if lapse else 0.0
                    log.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter, fmt(per_s),
                             fmt(lapse), p.display, fmt(self.smoothed_loss))
                    timer, last_display = time.perf_counter(), self.iter
                    outputs = self._log_outputs("Train", self.net, [to_numpy(self.net.blobs[n].data).ravel()
                                                                     for n in self.net.outputs])
                    progress.event("train", self.iter, loss=_short(self.smoothed_loss), lr=_short(self.lr),
                                   iter_per_s=round(per_s, 3), outputs=outputs)
                rate = self.apply_update(params, display)
                self.iter += 1
                progress.tick(self.iter, self.smoothed_loss, rate)
                action = self._requested_action()
                if (p.snapshot and self.iter % p.snapshot == 0) or action == SNAPSHOT:
                    self.snapshot()
                if action == STOP:
                    self._requested_early_exit = True
                    break
        except DlsoftError as exc:  # bad data mid-run (a cut LMDB, a bad label): keep the last good state
            raise snap.keep_last_good(self, exc, forwards_before) from None
        finally:
            progress.close()

    def solve(self, resume: str | None = None) -> None:
        """Train to ``max_iter`` (Caffe's ``Solver::Solve``), optionally from a ``.solverstate``.

        SIGINT/SIGHUP act as ``sigint_effect``/``sighup_effect`` while it runs (main thread).
        """
        p = self.param
        log.info("Solving %s", self.net.name)
        log.info("Learning Rate Policy: %s", p.lr_policy)
        self._requested_early_exit = False
        if resume:
            log.info("Restoring previous solver status from %s", resume)
            self.restore(resume)
        self._signals = SignalHandler(self.sigint_effect, self.sighup_effect, self.sigterm_effect)
        try:
            with self._signals:
                start_iter = self.iter
                self.step(p.max_iter - self.iter)
                if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
                    self.snapshot()
                if self._requested_early_exit:
                    log.info("Optimization stopped early.")
                    return
                if p.display and self.iter % p.display == 0:  # Caffe reports the final loss once more
                    loss = self.net.forward_prefilled()
                    self._forwards[0] += 1
                    self._update_smoothed_loss(loss, start_iter)
                    log.info("Iteration %d, loss = %s", self.iter, fmt(self.smoothed_loss))
                if p.test_interval and self.iter % p.test_interval == 0:
                    self.test_all(Progress(self.iter, self.iter, bar=False, metrics_path=self.metrics_path))
                log.info("Optimization Done.")
        finally:
            self._signals = None

    def _update_smoothed_loss(self, loss: float, start_iter: int) -> None:
        """Caffe's UpdateSmoothedLoss: the mean of the last ``average_loss`` losses."""
        average = self.param.average_loss
        if len(self._losses) < average:
            self._losses.append(loss)
            n = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            index = (self.iter - start_iter) % average
            self.smoothed_loss += (loss - self._losses[index]) / average
            self._losses[index] = loss

    def _requested_action(self) -> str:
        return self._signals.requested_action() if self._signals is not None else NONE

    def stop_requested(self) -> bool:
        """Whether a signal received while training asks to stop (it stays pending)."""
        return self._signals is not None and self._signals.stop_pending()

    def add_callback(self, callback) -> None:
        """Add a training callback (``on_start``, ``on_gradients_ready``; see the module docstring)."""
        self._callbacks.append(callback)

    def _log_outputs(self, kind: str, net: Net, values: list[np.ndarray]) -> OrderedDict[str, float | list]:
        """Log ``    <kind> net output #i: name = v (* w = wv loss)`` per element, as Caffe."""
        index, report = 0, OrderedDict()
        for name, vector in zip(net.outputs, values):
            weight = net.blob_loss_weights.get(name, 0.0)
            for value in vector:
                note = f" (* {fmt(weight)} = {fmt(weight * value)} loss)" if weight else ""
                log.info("    %s net output #%d: %s = %s%s", kind, index, name, fmt(float(value)), note)
                index += 1
            report[name] = _short(vector[0]) if vector.size == 1 else [_short(v) for v in vector]
        return report

    def apply_update(self, params=None, display: bool = False) -> float:
        """``SGDSolver::ApplyUpdate``: clip, then per blob normalize, regularize, compute_update, apply."""
        params = self.net.learnable_params if params is None else params
        rate = self._lr = self._lr_policy(self.iter)
        if display:
            log.info("Iteration %d, lr = %s", self.iter, fmt(rate))
        self._clip_gradients(params)
        fused = None if self.net.device.is_gpu else getattr(self.rule, "fused_step_cpu", None)
        for i, blob in enumerate(params):
            if fused is not None:  # the CPU may run all four steps in one compiled pass (same numbers)
                fused(i, rate, self.net.params_lr[i], self.net.params_weight_decay[i])
                continue
            self.normalize(i, blob)
            self.regularize(i, blob)
            self.compute_update(i, rate)
            blob.data -= blob.diff  # Net::Update
        return rate

    def normalize(self, index: int, blob) -> None:
        """Divide the accumulated gradient by ``iter_size`` (``SGDSolver::Normalize``)."""
        if self.param.iter_size > 1:
            blob.diff *= np.float32(1.0 / self.param.iter_size)

    def regularize(self, index: int, blob) -> None:
        """Add weight decay to the gradient (``SGDSolver::Regularize``): L2 ``wd*decay_mult*w``,
        L1 ``wd*decay_mult*sign(w)``, computed in the solver's own scratch buffer."""
        decay = np.float32(self.param.weight_decay) * np.float32(self.net.params_weight_decay[index])
        if not decay:
            return
        scratch = self._decay_scratch.get(index)
        if scratch is None or scratch.shape != blob.shape:
            with blob.device.activate():
                scratch = self._decay_scratch[index] = blob.xp.empty(blob.shape, np.float32)
        if self.param.regularization_type == "L1":
            blob.xp.sign(blob.data, out=scratch)
            scratch *= decay
        else:
            blob.xp.multiply(blob.data, decay, out=scratch)
        blob.diff += scratch

    def compute_update(self, index: int, rate: float) -> None:
        """The update rule turns the gradient into the update (``ComputeUpdateValue``),
        with the rate times the blob's ``lr_mult``."""
        self.rule.compute(index, float(np.float32(rate) * np.float32(self.net.params_lr[index])), self.iter)

    def _clip_gradients(self, params) -> None:
        clip = self.param.clip_gradients
        if clip < 0:
            return
        sumsq = sum(float(blob.xp.vdot(blob.diff, blob.diff)) for blob in params)
        norm = math.sqrt(sumsq)
        if norm > clip:
            scale = np.float32(clip / norm)
            log.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale factor %s",
                     fmt(norm), fmt(clip), fmt(float(scale)))
            for blob in params:
                blob.diff *= scale

    def _non_finite_error(self, loss: float) -> SolverError:
        where = "no blob is non-finite (the loss layer itself overflowed)"
        for i, layer in enumerate(self.net.layers):
            suspects = [(f"parameter {j} of layer '{layer.name}'", blob) for j, blob in enumerate(layer.blobs)]
            suspects += [(f"blob '{blob.name}' (top of layer '{layer.name}')", blob) for blob in self.net.top_ids[i]]
            bad = next((label for label, blob in suspects if not bool(blob.xp.isfinite(blob.data).all())), None)
            if bad is not None:
                where = f"first non-finite: {bad}"
                break
        kept = f"; last good snapshot: {self.last_snapshot}" if self.last_snapshot else "; no snapshot written"
        return SolverError(f"iteration {self.iter}: loss is {loss} ({where}); training stopped{kept} "
                           "(try a lower base_lr or clip_gradients)", path=self.path)

    # ------------------------------------------------------------------ testing
    def test_all(self, progress: Progress | None = None) -> list:
        """Test every test net (Caffe's ``TestAll``); returns their score dicts."""
        results = []
        for index in range(len(self.test_nets)):
            if self._requested_early_exit:
                break
            results.append(self.test(index, progress))
        return results

    def test(self, index: int = 0, progress: Progress | None = None) -> OrderedDict[str, float | list] | None:
        """Run test net ``index`` for ``test_iter[index]`` batches; log and return the mean of each output."""
        p = self.param
        log.info("Iteration %d, Testing net (#%d)", self.iter, index)
        net = self.test_nets[index]
        totals = evaluation.accumulator(p)  # means of the outputs, or SSD's mAP (eval_type)
        loss = 0.0
        for _ in range(p.test_iter[index]):
            action = self._requested_action()
            while action != NONE:  # Caffe: act on signals between test batches too
                if action == SNAPSHOT:
                    self.snapshot()
                elif action == STOP:
                    self._requested_early_exit = True
                action = self._requested_action()
            if self._requested_early_exit:
                break
            iter_loss = net.forward_prefilled()
            self._forwards[index + 1] += 1
            loss += iter_loss
            totals.add([to_numpy(net.blobs[name].data) for name in net.outputs])
        if self._requested_early_exit:
            log.info("Test interrupted.")
            return None
        extra = {}
        if p.test_compute_loss:
            extra["loss"] = loss / p.test_iter[index]
            log.info("Test loss: %s", fmt(extra["loss"]))
        scores = self._log_outputs("Test", net, totals.result(net.outputs))
        self.test_scores[index] = scores
        if progress is not None:
            progress.event("test", self.iter, net=f"#{index}", scores=scores, **extra)
        return scores

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> str | None:
        """Write ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate`` (atomically); return the state's path
        (None on the ranks other than 0 in data-parallel training: only the root solver writes)."""
        p = self.param
        if not self.root_solver:
            return None
        if not p.snapshot_prefix:
            raise SolverError("snapshot_prefix is not set: cannot snapshot", path=self.path)
        fmt_ = p.snapshot_format
        hdf5 = fmt_ == snap.HDF5
        model_path = snap.snapshot_filename(p.snapshot_prefix, self.iter, snap.model_extension(fmt_))
        state_path = snap.snapshot_filename(p.snapshot_prefix, self.iter, snap.state_extension(fmt_))
        log.info("Snapshotting to %s file %s", "HDF5" if hdf5 else "binary proto", model_path)
        with snap.reporting_failure(self.iter, self.last_snapshot):  # names the file and the last good one
            snap.write_model(self.net, model_path, fmt_, p.snapshot_diff)
            snap.write_sidecar(snap.sidecar_path(state_path), self._dlstate())
            log.info("Snapshotting solver state to %s file %s", "HDF5" if hdf5 else "binary proto", state_path)
            snap.write_state(state_path, fmt_, snap.SolverStateData(
                iter=self.iter, learned_net=model_path, current_step=self._lr_policy.current_step,
                history=self.rule.history))
        self.last_snapshot = state_path
        return state_path

    def _dlstate(self) -> dict:
        ranks = self.shard.size if self.shard else 1
        return {"format": SIDECAR_FORMAT, "iter": self.iter, "random_state": dl_random.get_state(),
                **snap.data_position(self._forwards, ranks, snap.global_batch(self.net, ranks))}

    def restore(self, path: str) -> None:
        """Continue from a ``.solverstate`` (ours or real Caffe's): weights, iteration, history.

        With dlsoft's ``.dlstate.json`` beside it, the random state and the data layers'
        positions are restored too, so training continues exactly as if never stopped.
        """
        path = str(path)
        state = snap.read_state(path)
        if len(state.history) != len(self.rule.history):
            raise SolverError(f"holds {len(state.history)} history blobs but a {self.type} solver for this net "
                              f"needs {len(self.rule.history)}", path=path)
        for i, (mine, saved) in enumerate(zip(self.rule.history, state.history)):
            if saved.size != mine.size:
                raise SolverError(f"history blob {i} has shape {tuple(saved.shape)}, the net's parameter "
                                  f"{tuple(mine.shape)}", path=path)
        if state.learned_net:
            self.net.copy_from(snap.resolve_learned_net(state.learned_net, path))
        xp = self.device.xp
        for mine, saved in zip(self.rule.history, state.history):
            mine[...] = xp.asarray(saved.reshape(mine.shape))
        self.iter = state.iter
        self._lr_policy.current_step = state.current_step
        self._lr = self._lr_policy.peek(self.iter)
        sidecar = snap.read_sidecar(snap.sidecar_path(path))
        if sidecar is None:
            log.info("no dlsoft state beside %s: data order and random state start afresh (as in Caffe)", path)
            return
        ranks = self.shard.size if self.shard else 1
        nets = [self.net, *self.test_nets]
        targets = [snap.train_batches(sidecar, snap.global_batch(self.net, ranks)),
                   *sidecar.get("batches", {}).get("test", [])]
        for index, (net, target) in enumerate(zip(nets, targets)):
            self._fast_forward(index, net, int(target))
        dl_random.set_state(sidecar["random_state"])

    def _fast_forward(self, index: int, net: Net, target: int) -> None:
        """Advance ``net``'s data layers to ``target`` batches delivered (readers skip, not decode)."""
        snap.fast_forward(net, index, self._forwards[index], target)
        self._forwards[index] = max(target, self._forwards[index])

    def close(self) -> None:
        """Stop the nets' prefetch threads; release the snapshot prefix."""
        for net in [self.net, *self.test_nets]:
            net.close()
        self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Solver {self.type} iter={self.iter} net={self.net.name!r}>"


def get_solver(path, device="cpu", **options) -> Solver:
    """pycaffe's ``get_solver``: a :class:`Solver` of the file's ``type``."""
    return Solver(path, device=device, **options)


def _short(value) -> float:
    """A float32 quantity as its shortest decimal (0.01, not 0.009999999776)."""
    return float(f"{float(value):.7g}")
