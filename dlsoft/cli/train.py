"""``dlsoft train``, ``test`` and ``time``: Caffe's tool commands."""
from __future__ import annotations

import functools
import os
from dataclasses import replace
from pathlib import Path

import click

from ..errors import DlsoftError
from ..zoo_ref import is_zoo_ref, parse_zoo_ref
from .app import cli, command, log, settings
from .options import (
    LazyChoice, format_number, format_value, gpu_option, level_option, net_file, parse_gpu, parse_gpus,
    phase_option, pick_net, require_file, resolve, stage_names, stage_option,
)


def _zoo_run_dir(name: str, run_dir: str | None) -> Path:
    if run_dir:
        return Path(run_dir)
    base = Path("runs") / name
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = Path(f"{base}-{n}")
    return candidate


def _prepare_zoo_training(ref: str, run_dir: str | None) -> tuple[str, Path]:
    """Copy a zoo entry's configs into a run directory; return (its solver path, the run dir)."""
    from .. import model_zoo

    name, _ = parse_zoo_ref(ref)
    entry = model_zoo.get_entry(name)
    if entry.file_record("solver") is None:
        raise DlsoftError(f"zoo entry '{entry.name}' has no solver to train with")
    directory = _zoo_run_dir(entry.name, run_dir)
    model_zoo.copy_entry(entry.name, directory, weights=False)
    log.info("Training zoo entry %s in %s", entry.name, directory)
    return str(directory / Path(str(entry.file_record("solver")["path"])).name), directory


def _print_results(solver) -> None:
    """Final test scores and where the snapshot is (stdout: these survive --quiet)."""
    from ..solver import snapshot as snap

    finished = solver.iter >= solver.param.max_iter
    for index, outputs in enumerate(solver.test_scores):
        if not outputs:
            continue
        label = "Test scores" if len(solver.test_scores) == 1 else f"Test net #{index} scores"
        when = f"iteration {solver.iter}" if finished else "last test before stopping"
        text = ", ".join(f"{name} = {format_value(value)}" for name, value in outputs.items())
        click.echo(f"{label} ({when}): {text}")
    if solver.last_snapshot:
        fmt = solver.param.snapshot_format
        weights = snap.snapshot_filename(solver.param.snapshot_prefix, solver.iter, snap.model_extension(fmt))
        click.echo(f"Weights saved to {weights}")
        click.echo(f"Solver state saved to {solver.last_snapshot} (resume with --snapshot {solver.last_snapshot})")
    else:
        click.echo("No snapshot written (snapshot_after_train is off)")


TRAIN_EXAMPLES = """
\b
Examples:
  dlsoft train --solver examples/mnist/lenet_solver.prototxt
  dlsoft train -solver lenet_solver.prototxt -weights pretrained.caffemodel -gpu 0
  dlsoft train --solver lenet_solver.prototxt --snapshot lenet_iter_5000.solverstate
  dlsoft train net.prototxt --lr 0.05 --max-iter 500 --batch-size 32
  dlsoft train zoo:lenet_mnist --max-iter 1000

\b
Data-parallel (rank r of N reads batches r, r+N, ...; N ranks at batch B train as one
process at batch N*B; rank 0 logs, tests and snapshots; resume on any number of ranks):
  mpirun -n 4 dlsoft train --solver s.prototxt            N processes (pip install 'dlsoft[mpi]')
  mpirun -n 8 --hostfile hosts dlsoft train --solver s.prototxt
                                   N machines: hosts lists 'name slots=K' per line
  dlsoft train --solver s.prototxt --gpu all              one process per GPU, NCCL (or --gpu 0,1)
"""


def _solver_types():
    from ..solver.config import SOLVER_TYPES

    return SOLVER_TYPES


#: The flags that override a solver file's settings: one ``dlsoft.solver.config.Overrides``.
_OVERRIDE_OPTIONS = (
    click.option("--seed", "-seed", "seed", type=int, help="Random seed (solver's random_seed)."),
    click.option("--lr", "--base-lr", "-base_lr", "lr", type=float, help="Base learning rate (default 0.01)."),
    click.option("--max-iter", "-max_iter", "max_iter", type=int, help="Iterations to train (default 1000)."),
    click.option("--batch-size", "-batch_size", "batch_size", type=int, help="Batch size of the TRAIN data layers."),
    click.option("--solver-type", "--type", "-type", "solver_type",
                 type=LazyChoice(_solver_types, case_sensitive=False), help="Update rule (default SGD)."),
    click.option("--lr-policy", "-lr_policy", "lr_policy",
                 type=click.Choice(["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"]),
                 help="Learning-rate policy (default fixed)."),
    click.option("--momentum", "-momentum", "momentum", type=float, help="Momentum (default 0.9)."),
    click.option("--weight-decay", "-weight_decay", "weight_decay", type=float, help="Weight decay (default 0)."),
    click.option("--test-interval", "-test_interval", "test_interval", type=int, help="Test every N iterations."),
    click.option("--test-iter", "-test_iter", "test_iter", type=int, help="Batches per test (default 10)."),
    click.option("--display", "-display", "display", type=int, help="Log the loss every N iterations."),
    click.option("--snapshot-every", "-snapshot_every", "snapshot_every", type=int,
                 help="Snapshot every N iterations (the solver's `snapshot`)."),
    click.option("--snapshot-prefix", "-snapshot_prefix", "snapshot_prefix", metavar="PREFIX",
                 help="Snapshot file prefix (files PREFIX_iter_N.caffemodel/.solverstate)."),
    stage_option,
    level_option,
)
_OVERRIDE_NAMES = ("seed", "lr", "max_iter", "batch_size", "solver_type", "lr_policy", "momentum", "weight_decay",
                   "test_interval", "test_iter", "display", "snapshot_every", "snapshot_prefix", "stages", "level")


def override_options(f):
    """Declare the solver-override flags; ``f`` gets them as one ``overrides`` value."""
    @functools.wraps(f)
    def run(*args, **kwargs):
        from ..solver.config import Overrides

        values = {name: kwargs.pop(name) for name in _OVERRIDE_NAMES}
        values["stages"] = stage_names(values["stages"])
        return f(*args, overrides=Overrides(**values), **kwargs)
    for option in reversed(_OVERRIDE_OPTIONS):
        run = option(run)
    return run


@command(cli, "train", epilog=TRAIN_EXAMPLES)
@click.argument("model", required=False, metavar="[NET|zoo:NAME]")
@click.option("--solver", "-solver", "solver_path", metavar="FILE", help="Solver definition (prototxt or YAML).")
@click.option("--model", "-model", "model_option", metavar="FILE", help="The net to train (same as NET).")
@click.option("--weights", "-weights", "weights", metavar="FILE[,FILE]",
              help="Start from these weights (fine-tuning; layers matched by name).")
@click.option("--snapshot", "-snapshot", "snapshot", metavar="FILE", help="Resume from a .solverstate.")
@gpu_option
@override_options
@click.option("--run-dir", "run_dir", metavar="DIR",
              help="For zoo:NAME: where to copy the entry and train (default runs/NAME).")
@click.option("--sigint-effect", "-sigint_effect", "sigint_effect", type=click.Choice(["stop", "snapshot", "none"]),
              default=None, help="What Ctrl-C does (default: snapshot, then stop).")
@click.option("--sighup-effect", "-sighup_effect", "sighup_effect", type=click.Choice(["stop", "snapshot", "none"]),
              default=None, help="What SIGHUP does (default: snapshot).")
@click.option("--distributed", "distributed", type=click.Choice(["auto", "mpi", "nccl", "none"]), default="auto",
              show_default=True, help="Data-parallel transport: auto (MPI under mpirun/mpiexec/srun, NCCL "
                                      "with --gpu all), or force one; none trains alone.")
@click.option("--heartbeat-timeout", "heartbeat_timeout", type=click.FloatRange(min=1), default=None,
              metavar="SECONDS", help="Data-parallel: a rank silent this long is lost and the job stops "
                                      "(default 20).")
def train_command(model, solver_path, model_option, weights, snapshot, gpu, overrides, run_dir, sigint_effect,
                  sighup_effect, distributed, heartbeat_timeout):
    """Train a net: from a solver file, or a net file with default solver settings.

    With --solver, the solver file says everything and the flags below override it.
    With only a net (NET, or --model), dlsoft trains it with SGD, lr 0.01, momentum 0.9
    for 1,000 iterations, testing on the net's TEST phase if it has one. A zoo entry
    (zoo:NAME) is copied into a run directory and trained with its own solver.
    """
    from ..netdef import io
    from ..solver import config

    model = pick_net(model, model_option, required=False)
    if distributed == "mpi" and gpu:  # a contradiction of flags: say so before looking for GPUs
        raise click.UsageError("--distributed mpi averages on the CPU: with --gpu, MPI ranks each take a GPU "
                               "and average over NCCL (--distributed nccl, the default there)")
    if gpu is not None:
        parse_gpus(gpu)  # a GPU that is not there: say so (naming the flag) before reading any file
    if weights and snapshot:
        raise click.UsageError("give either --weights (start from weights) or --snapshot (resume), not both")
    if model and solver_path:
        raise click.UsageError("give either a net to train with default settings or --solver, not both")
    if not model and not solver_path:
        raise click.UsageError("nothing to train: give a net file, zoo:NAME, or --solver FILE")
    if run_dir and not is_zoo_ref(model or solver_path):
        raise click.UsageError("--run-dir is for training a zoo entry (zoo:NAME)")

    run_directory = None
    if is_zoo_ref(model) and not parse_zoo_ref(model)[1]:
        solver_path, run_directory = _prepare_zoo_training(model, run_dir)
        model = None
    elif is_zoo_ref(solver_path):
        solver_path, run_directory = _prepare_zoo_training(solver_path, run_dir)

    if solver_path:
        where = solver_path
        solver_param = io.read_solver(solver_path)
        if run_directory is not None and not os.path.isabs(solver_param.snapshot_prefix or "x"):
            overrides = replace(overrides, snapshot_prefix=overrides.snapshot_prefix
                                or str(run_directory / (solver_param.snapshot_prefix or "snapshot")))
        if overrides.any():
            config.absolute_net_paths(solver_param, solver_path, resolve)
            if not solver_param.HasField("snapshot_prefix"):  # Caffe's default: the solver file's path
                solver_param.snapshot_prefix = str(Path(solver_path).with_suffix(""))
            config.apply_overrides(solver_param, where, overrides)
            source = solver_param
        else:
            source = solver_path  # unchanged: the solver reads it and names its lines in errors
    else:
        net_path = net_file(resolve(model, "train_val"), "train")
        where = net_path
        solver_param = config.default_solver(io.read_net(net_path), name=Path(net_path).stem)
        max_iter = overrides.max_iter
        if overrides.test_interval is None and max_iter is not None and config.has_test_phase(solver_param.net_param):
            overrides = replace(overrides, test_interval=config.default_test_interval(max_iter) if max_iter > 0 else None)
        config.apply_overrides(solver_param, where, overrides)
        source = solver_param
    weights_paths = [resolve(w, "weights") for w in weights.split(",") if w] if weights else []
    for path in weights_paths:  # fail before any work; the solver also looks beside its file
        beside = Path(solver_path).parent / path if solver_path else None
        if not os.path.exists(path) and not (beside is not None and beside.exists()):
            raise DlsoftError("weights file not found", path=path)
    if snapshot:
        snapshot = require_file(resolve(snapshot, "solverstate"), "solver state")
    from ..distributed import launch, runner

    gpus = parse_gpus(gpu)
    kind = runner.wanted(None if distributed == "auto" else distributed)
    if kind == "mpi" and gpus:
        kind = "nccl"  # MPI ranks each owning a GPU of their machine, NCCL between them
    if kind is None and len(gpus) > 1 and distributed != "none":
        code = runner.spawn_for_gpus(gpus, _child_arguments())  # Caffe's -gpu all: one process per GPU
        raise SystemExit(code)
    device = "cpu" if kind else _train_device(gpu, solver_param)
    if kind == "nccl" and not launch.spawned_rank() and not gpus:
        raise click.UsageError("--distributed nccl needs --gpu (the GPUs the ranks share out)")
    _run_training(source, where, device, weights_paths, snapshot, sigint_effect, sighup_effect,
                  kind=kind, random_seed=solver_param.random_seed, heartbeat_timeout=heartbeat_timeout, gpus=gpus)


def _child_arguments() -> list[str]:
    """This command line again, for the one-process-per-GPU children (they find their GPU in the environment)."""
    import sys

    return list(sys.argv[1:])


def _train_device(gpu: str | None, solver_param) -> str:
    """--gpu wins; else the solver's solver_mode (GPU falls back to the CPU, with a warning, without one)."""
    if gpu is not None:
        return parse_gpu(gpu)
    from ..protos import caffe_pb2

    # Caffe's default solver_mode is GPU: only a file that says so asks for one.
    if solver_param.HasField("solver_mode") and solver_param.solver_mode == caffe_pb2.SolverParameter.GPU:
        from ..backend import gpu_count

        if gpu_count() > 0:
            return f"gpu:{solver_param.device_id}"
        log.warning("the solver asks for solver_mode: GPU but no GPU is available: training on the CPU")
    return "cpu"


def _run_training(source, where: str, device: str, weights: list[str], snapshot: str | None,
                  sigint_effect: str | None, sighup_effect: str | None, kind: str | None = None,
                  random_seed: int = -1, heartbeat_timeout: float | None = None, gpus=None) -> None:
    from ..solver import Solver

    options = {name: value for name, value in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect))
               if value is not None}

    def build(shard=None, rank_device=None):
        try:
            return Solver(source, device=rank_device or device, weights=weights or None,
                          progress_bar=False if settings.quiet else None, shard=shard, **options)
        except DlsoftError as exc:
            if exc.path is None:  # built from a message: name the file it came from
                raise type(exc)(exc.detail, path=where) from None
            raise

    def report(solver):
        p = solver.param
        finished = solver.iter >= p.max_iter
        if finished and solver.test_nets and not (p.test_interval and solver.iter % p.test_interval == 0):
            log.info("Testing the final weights (iteration %d)", solver.iter)
            solver.test_all()  # the scores reported below are then those of the final weights
        _print_results(solver)

    if kind is not None:  # one rank of a data-parallel job; rank 0 reports
        from ..distributed import runner

        runner.train(kind, build, snapshot, random_seed=random_seed, report=report,
                     heartbeat_timeout=heartbeat_timeout, gpus=gpus)
        return
    with build() as solver:
        solver.solve(resume=snapshot)
        report(solver)


# ============================================================================ test
@command(cli, "test", epilog="""
\b
Examples:
  dlsoft test --model lenet_train_test.prototxt --weights lenet_iter_10000.caffemodel --iterations 100
  dlsoft test -model zoo:lenet_mnist -iterations 10
  dlsoft test lenet_train_test.prototxt --weights lenet_iter_10000.caffemodel
""")
@click.argument("model_arg", required=False, metavar="[NET]")
@click.option("--model", "-model", "model", metavar="FILE", help="Net definition with TEST-phase data (or NET).")
@click.option("--weights", "-weights", "weights", metavar="FILE", help="Trained weights to score.")
@click.option("--iterations", "-iterations", "iterations", type=click.IntRange(min=1), default=50,
              show_default=True, help="Batches to run.")
@gpu_option
@phase_option("TEST")
@stage_option
@level_option
def test_command(model_arg, model, weights, iterations, gpu, phase, stages, level):
    """Score trained weights: run N batches and print each output's mean, as `caffe test`."""
    import numpy as np

    from ..backend import to_numpy
    from ..netdef.net import Net

    model = pick_net(model_arg, model)
    device = parse_gpu(gpu)
    model_path = net_file(resolve(model, "train_val"), "test")
    if weights is None:
        if not is_zoo_ref(model):
            raise click.UsageError("test needs --weights (the trained model to score)")
        weights = model.partition("/")[0]
    weights_path = require_file(resolve(weights, "weights"), "weights file")
    net = Net(model_path, phase=phase.upper(), stages=stage_names(stages), level=level, device=device)
    try:
        loaded = net.copy_from(weights_path)  # logs each layer it did not load
        log.info("Loaded weights for %d of %d layers with parameters from %s", loaded,
                 sum(1 for layer in net.layers if layer.blobs), weights_path)
        totals: dict[str, np.ndarray] = {}
        loss_total = 0.0
        for i in range(iterations):
            outputs = net.forward()
            loss_total += float(net.loss)
            for name, value in outputs.items():
                array = to_numpy(value).astype(np.float64).ravel()
                totals[name] = totals.get(name, 0) + array
                if array.size == 1:
                    log.info("Batch %d, %s = %s", i, name, format_number(float(array[0])))
    finally:
        net.close()
    log.info("Loss: %s", format_number(loss_total / iterations))
    click.echo(f"Loss: {format_number(loss_total / iterations)}")
    for name, total in totals.items():
        mean = total / iterations
        weight = net.blob_loss_weights.get(name, 0.0)
        if mean.size == 1:
            line = f"{name} = {format_number(float(mean[0]))}"
            if weight:
                line += f" (* {format_number(weight)} = {format_number(weight * float(mean[0]))} loss)"
        else:
            line = f"{name} = {format_number(float(mean.mean()))} (mean of {mean.size} values per batch)"
        click.echo(line)


# ============================================================================ time
@command(cli, "time", epilog="""
\b
Examples:
  dlsoft time --model lenet_train_test.prototxt --iterations 20
  dlsoft time lenet_train_test.prototxt -iterations 20
  dlsoft time -model zoo:lenet_mnist -iterations 10 -gpu 0
""")
@click.argument("model_arg", required=False, metavar="[NET]")
@click.option("--model", "-model", "model", metavar="FILE", help="Net definition to time (or NET).")
@click.option("--iterations", "-iterations", "iterations", type=click.IntRange(min=1), default=50,
              show_default=True, help="Timed forward-backward passes.")
@click.option("--warmup", "warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed passes first.")
@click.option("--forward-only", is_flag=True, help="Time forward passes only.")
@click.option("--weights", "-weights", "weights", metavar="FILE", help="Weights to load first (optional).")
@gpu_option
@phase_option("TRAIN")
@stage_option
@level_option
def time_command(model_arg, model, iterations, warmup, forward_only, weights, gpu, phase, stages, level):
    """Time each layer's forward and backward pass, as `caffe time`."""
    from ..netdef.net import Net
    from ..timing import time_net

    model = pick_net(model_arg, model)
    device = parse_gpu(gpu)
    model_path = net_file(resolve(model, "train_val"), "time")
    weights_path = require_file(resolve(weights, "weights"), "weights file") if weights else None
    net = Net(model_path, phase=phase.upper(), weights=weights_path, stages=stage_names(stages), level=level,
              device=device)
    try:
        report = time_net(net, iterations=iterations, warmup=warmup, backward=not forward_only)
    finally:
        net.close()
    click.echo(report.format())
