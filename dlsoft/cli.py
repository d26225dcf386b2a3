"""The ``dlsoft`` command line: Caffe's ``caffe`` tool and its companions, as subcommands.

Caffe's flags keep working with their single-dash spellings (``dlsoft train -solver
s.prototxt -gpu 0``), next to the usual ``--solver``. Every file argument also accepts
a model-zoo reference (``zoo:lenet_mnist``, ``zoo:lenet_mnist/deploy.prototxt``).

A user mistake (missing file, bad flag, parse error, any DlsoftError) ends the command
with exit status 2 and one line ``error: ...`` on stderr; ``--debug`` adds the
traceback. Log lines (Caffe's format) go to stderr and to ``--log-file``; ``--quiet``
leaves only errors and the final results (on stdout).
"""
from __future__ import annotations

import functools
import logging
import os
import platform
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import click

from . import __version__
from .errors import DlsoftError

log = logging.getLogger("dlsoft.cli")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
ZOO_PREFIX = "zoo:"
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")


# ============================================================================ settings, logging, errors
@dataclass
class Settings:
    """The global flags of one invocation (given before or after the subcommand)."""

    debug: bool = False
    quiet: bool = False
    log_file: str | None = None


_settings = Settings()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (test runners swap it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _DlsoftOrWarnings(logging.Filter):
    """dlsoft's own lines at the handler's level; other libraries' only from WARNING up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "dlsoft" or record.name.startswith("dlsoft.") or record.levelno >= logging.WARNING


def _remove_handlers() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_dlsoft_cli", False):
            root.removeHandler(handler)
            handler.close()


def configure_logging() -> None:
    """Caffe-format log lines: to stderr (INFO; ERROR only with --quiet) and to --log-file (INFO).

    The handlers sit on the root logger, so the solver's progress bar can route them
    around itself (tqdm's logging redirect looks there).
    """
    from .solver.progress import CaffeLogFormatter

    _remove_handlers()
    level = logging.DEBUG if _settings.debug else logging.INFO
    handlers: list[logging.Handler] = [_StderrHandler()]
    handlers[0].setLevel(logging.ERROR if _settings.quiet else level)
    if _settings.log_file:
        try:
            file_handler = logging.FileHandler(_settings.log_file, encoding="utf-8")
        except OSError as exc:
            raise DlsoftError(f"cannot open the log file ({exc.strerror})", path=_settings.log_file) from None
        file_handler.setLevel(level)
        handlers.append(file_handler)
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(CaffeLogFormatter())
        handler.addFilter(_DlsoftOrWarnings())
        handler._dlsoft_cli = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    logging.getLogger("dlsoft").setLevel(level)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> None:
    if _settings.debug:
        traceback.print_exc(file=sys.stderr)
    click.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


class DlsoftGroup(click.Group):
    """A click group whose errors are one line on stderr (exit 2 for user mistakes)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        global _settings
        args = list(sys.argv[1:] if args is None else args)
        _settings = Settings(debug=any(a in ("--debug", "-debug") for a in args))
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            self._main_one_line_errors(args, prog_name, complete_var, **extra)
        finally:
            _remove_handlers()

    def _main_one_line_errors(self, args, prog_name, complete_var, **extra) -> None:
        try:
            result = super().main(args, prog_name or "dlsoft", complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # `dlsoft zoo`: show the help
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(0)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _fail(exc.format_message() + where, 2)
        except click.ClickException as exc:
            _fail(exc.format_message(), 2)
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted", 130)
        except DlsoftError as exc:
            _fail(str(exc), 2)
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            _fail(f"{where}{exc.strerror or exc}", 2)
        except Exception as exc:  # noqa: BLE001 - a bug: say so in one line unless --debug
            _fail(f"internal error ({type(exc).__name__}: {exc}); run again with --debug for the "
                  "traceback and please report it", 1)
        sys.exit(result if isinstance(result, int) else 0)


def _set_flag(name: str):
    def callback(ctx, param, value):
        if value:
            setattr(_settings, name, value)
        return value
    return callback


_COMMON_OPTIONS = (
    click.option("--debug", "-debug", is_flag=True, expose_value=False, callback=_set_flag("debug"),
                 help="Show the full traceback of an error (and debug log lines)."),
    click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=_set_flag("quiet"),
                 help="Only errors and final results: no log lines, no progress bar."),
    click.option("--log-file", "-log_file", "log_file", type=click.Path(dir_okay=False), expose_value=False,
                 callback=_set_flag("log_file"), help="Also write the log lines to this file."),
)


def _with_common_options(f):
    """Accept --debug/--quiet/--log-file after the subcommand too, and set up logging before running."""
    @functools.wraps(f)
    def run(*args, **kwargs):
        configure_logging()
        return f(*args, **kwargs)
    for option in reversed(_COMMON_OPTIONS):
        run = option(run)
    return run


def command(group: click.Group, name: str, **kwargs):
    """``group.command(name)`` with the common options and an example-carrying help text."""
    def decorate(f):
        return group.command(name, context_settings=CONTEXT_SETTINGS, **kwargs)(_with_common_options(f))
    return decorate


@click.group(cls=DlsoftGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="dlsoft")
@click.option("--debug", "-debug", is_flag=True, callback=_set_flag("debug"), expose_value=False,
              help="Show the full traceback of an error (and debug log lines).")
@click.option("--quiet", "-q", is_flag=True, callback=_set_flag("quiet"), expose_value=False,
              help="Only errors and final results: no log lines, no progress bar.")
@click.option("--log-file", "-log_file", "log_file", type=click.Path(dir_okay=False), expose_value=False,
              callback=_set_flag("log_file"), help="Also write the log lines to this file.")
def cli():
    """dlsoft: train and run Caffe-compatible nets described in prototxt or YAML.

    \b
    Examples:
      dlsoft train --solver examples/mnist/lenet_solver.prototxt
      dlsoft train net.prototxt --lr 0.01 --max-iter 500
      dlsoft test --model zoo:lenet_mnist --iterations 10
      dlsoft summary zoo:lenet_mnist

    Files can be given as zoo:NAME (see `dlsoft zoo list`). Caffe's single-dash flags
    (-solver, -weights, -gpu, ...) work as well.
    """
    configure_logging()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dlsoft`` console script."""
    cli.main(args=argv, prog_name="dlsoft")


# ============================================================================ shared helpers
def resolve(ref: str | None, kind: str) -> str | None:
    """A local path for ``ref``: ``zoo:`` references go through the model zoo, others come back as they are."""
    if ref is None or not ref.startswith(ZOO_PREFIX):
        return ref
    from . import model_zoo

    return str(model_zoo.resolve(ref, kind))


def _require_file(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise DlsoftError(f"{what} not found", path=path)
    if os.path.isdir(path):
        raise DlsoftError(f"{what} is a directory, not a file", path=path)
    return path


def parse_gpu(spec: str | None) -> str:
    """Caffe's ``-gpu`` value (``0``, ``1,2`` or ``all``) as a device: the first GPU (multi-GPU is not supported)."""
    if spec is None or spec == "":
        return "cpu"
    from .backend import gpu_count

    spec = spec.strip().lower()
    if spec == "all":
        count = gpu_count()
        if count == 0:
            raise DlsoftError("--gpu all: no GPU is available (install dlsoft[gpu] on a machine with an NVIDIA GPU)")
        ids = list(range(count))
    else:
        try:
            ids = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError:
            raise DlsoftError(f"--gpu expects a GPU number, a comma-separated list or 'all', got '{spec}'") from None
        if not ids or any(i < 0 for i in ids):
            raise DlsoftError(f"--gpu expects non-negative GPU numbers, got '{spec}'")
    if len(ids) > 1:
        log.warning("multi-GPU training is not supported yet: using GPU %d only (of %s)", ids[0],
                    ", ".join(map(str, ids)))
    return f"gpu:{ids[0]}"


def _phase_option(default: str, allow_all: bool = False):
    choices = ["TRAIN", "TEST"] + (["ALL"] if allow_all else [])
    return click.option("--phase", "-phase", "phase", type=click.Choice(choices, case_sensitive=False),
                        default=default, show_default=True, help="Which phase's layers to use.")


_gpu_option = click.option("--gpu", "-gpu", "gpu", metavar="N|N,M|all",
                           help="Run on this GPU (Caffe's -gpu); the first one when several are given.")
_stage_option = click.option("--stage", "-stage", "stages", multiple=True, metavar="NAME",
                             help="A NetState stage to include layers for (repeatable; or comma-separated).")
_level_option = click.option("--level", "-level", "level", type=int, default=None, help="The NetState level.")


def _stages(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(s for value in values for s in value.split(",") if s)


def _format_number(value: float) -> str:
    return f"{value:.6g}"


# ============================================================================ train
def _has_test_phase(net_param) -> bool:
    from .protos import caffe_pb2

    return any(rule.phase == caffe_pb2.TEST and rule.HasField("phase") for layer in net_param.layer
               for rule in layer.include) or \
        any(rule.phase == caffe_pb2.TRAIN and rule.HasField("phase") for layer in net_param.layer
            for rule in layer.exclude)


def default_test_interval(max_iter: int) -> int:
    """A test interval of at most 500 that divides ``max_iter`` (so the last iteration is tested)."""
    for parts in range(1, max_iter + 1):
        if max_iter % parts == 0 and max_iter // parts <= 500:
            interval = max_iter // parts
            return interval if interval * 20 >= max_iter else max_iter
    return max(max_iter, 1)


def default_solver(net_param, name: str = "net"):
    """A SolverParameter training ``net_param`` with dlsoft's defaults.

    SGD, lr 0.01 (fixed), momentum 0.9, 1,000 iterations, display every 100; if the
    net has TEST-phase layers, 10 test batches at an interval dividing max_iter.
    Snapshots go to ``<name>_iter_N.caffemodel`` in the current directory.
    """
    from .protos import caffe_pb2

    solver = caffe_pb2.SolverParameter()
    solver.net_param.CopyFrom(net_param)
    solver.type = "SGD"
    solver.base_lr = 0.01
    solver.lr_policy = "fixed"
    solver.momentum = 0.9
    solver.max_iter = 1000
    solver.display = 100
    solver.snapshot_prefix = name
    if _has_test_phase(net_param):
        solver.test_iter.append(10)
        solver.test_interval = default_test_interval(solver.max_iter)
    return solver


def set_train_batch_size(net_param, batch_size: int, where: str) -> int:
    """Set ``batch_size`` of the data layers used in the TRAIN phase; returns how many were changed."""
    from .protos import caffe_pb2

    if batch_size < 1:
        raise DlsoftError(f"--batch-size must be at least 1, got {batch_size}")
    state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
    from .netdef import graph

    changed = 0
    for layer in graph.filter_net(net_param, state).layer:
        for original in net_param.layer:
            if original.name != layer.name or list(original.include) != list(layer.include):
                continue
            for field in ("data_param", "image_data_param", "hdf5_data_param", "memory_data_param",
                          "window_data_param"):
                if original.HasField(field) and hasattr(getattr(original, field), "batch_size"):
                    getattr(original, field).batch_size = batch_size
                    changed += 1
            # Input and DummyData take the batch size from their shapes' first axis.
            shapes = list(original.input_param.shape) if original.type == "Input" else \
                list(original.dummy_data_param.shape) if original.type == "DummyData" else []
            for shape in shapes:
                if shape.dim:
                    shape.dim[0] = batch_size
            if original.type == "DummyData":
                nums = original.dummy_data_param.num
                nums[:] = [batch_size] * len(nums)
            changed += bool(shapes) or (original.type == "DummyData" and bool(original.dummy_data_param.num))
    if not changed:
        raise DlsoftError(f"--batch-size: the net in {where} has no TRAIN-phase data layer with a batch size")
    return changed


def _absolute_net_paths(solver, solver_path: str | None) -> None:
    """Make the solver's net paths absolute: as written from the working directory (Caffe's
    rule), or else next to the solver file, so ``-solver`` works from any directory."""
    if solver_path is None:
        return
    base = Path(solver_path).resolve().parent

    def fix(path: str) -> str:
        if not path or os.path.isabs(path) or os.path.exists(path) or path.startswith(("builtin:", ZOO_PREFIX)):
            return resolve(path, "train_val") if path.startswith(ZOO_PREFIX) else path
        candidate = base / path
        return str(candidate) if candidate.exists() else path

    for i, path in enumerate(solver.weights):
        solver.weights[i] = ",".join(fix(part) for part in path.split(","))
    if solver.HasField("net"):
        solver.net = fix(solver.net)
    if solver.HasField("train_net"):
        solver.train_net = fix(solver.train_net)
    for i, path in enumerate(solver.test_net):
        solver.test_net[i] = fix(path)


def _train_net_param(solver, where: str):
    """(net parameter the solver trains, field it comes from), reading a net file if need be."""
    from .netdef import io

    for field in ("train_net_param", "net_param"):
        if solver.HasField(field):
            return getattr(solver, field), field
    for field, param_field in (("train_net", "train_net_param"), ("net", "net_param")):
        if solver.HasField(field):
            getattr(solver, param_field).CopyFrom(io.read_net(getattr(solver, field)))
            solver.ClearField(field)
            return getattr(solver, param_field), param_field
    raise DlsoftError(f"{where} names no net (net, net_param, train_net or train_net_param)")


def apply_overrides(solver, where: str, *, lr=None, max_iter=None, batch_size=None, solver_type=None,
                    lr_policy=None, test_interval=None, test_iter=None, momentum=None, weight_decay=None,
                    display=None, snapshot_every=None, snapshot_prefix=None, seed=None, stages=(),
                    level=None) -> None:
    """Apply the ``train`` command's flags to a SolverParameter, in place."""
    if lr is not None:
        if lr <= 0:
            raise DlsoftError(f"--lr must be positive, got {lr}")
        solver.base_lr = lr
    if max_iter is not None:
        if max_iter < 0:
            raise DlsoftError(f"--max-iter must not be negative, got {max_iter}")
        solver.max_iter = max_iter
    if solver_type is not None:
        solver.type = solver_type
        solver.ClearField("solver_type")
    plain = {"lr_policy": lr_policy, "test_interval": test_interval, "momentum": momentum,
             "weight_decay": weight_decay, "display": display, "snapshot": snapshot_every,
             "snapshot_prefix": snapshot_prefix, "random_seed": seed}
    for field, value in plain.items():
        if value is not None:
            setattr(solver, field, value)
    if test_iter is not None:
        count = max(len(solver.test_iter), 1)
        solver.ClearField("test_iter")
        solver.test_iter.extend([test_iter] * count)
    if stages:
        solver.train_state.stage.extend(s for s in stages if s not in solver.train_state.stage)
    if level is not None:
        solver.train_state.level = level
    if batch_size is not None:
        net_param, _ = _train_net_param(solver, where)
        set_train_batch_size(net_param, batch_size, where)


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
    from . import model_zoo

    name = ref[len(ZOO_PREFIX):].partition("/")[0]
    entry = model_zoo.get_entry(name)
    if entry.file_record("solver") is None:
        raise DlsoftError(f"zoo entry '{entry.name}' has no solver to train with")
    directory = _zoo_run_dir(entry.name, run_dir)
    model_zoo.copy_entry(entry.name, directory, weights=False)
    log.info("Training zoo entry %s in %s", entry.name, directory)
    return str(directory / Path(str(entry.file_record("solver")["path"])).name), directory


def _print_results(solver) -> None:
    """Final test scores and where the snapshot is (stdout: these survive --quiet)."""
    from .solver import snapshot as snap

    finished = solver.iter >= solver.param.max_iter
    for index, outputs in enumerate(solver.test_scores):
        if not outputs:
            continue
        label = "Test scores" if len(solver.test_scores) == 1 else f"Test net #{index} scores"
        when = f"iteration {solver.iter}" if finished else "last test before stopping"
        text = ", ".join(f"{name} = {_format_value(value)}" for name, value in outputs.items())
        click.echo(f"{label} ({when}): {text}")
    if solver.last_snapshot:
        fmt = solver.param.snapshot_format
        weights = snap.snapshot_filename(solver.param.snapshot_prefix, solver.iter, snap.model_extension(fmt))
        click.echo(f"Weights saved to {weights}")
        click.echo(f"Solver state saved to {solver.last_snapshot} (resume with --snapshot {solver.last_snapshot})")
    else:
        click.echo("No snapshot written (snapshot_after_train is off)")


def _format_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_number(v) for v in value) + "]"
    return _format_number(value)


TRAIN_EXAMPLES = """
\b
Examples:
  dlsoft train --solver examples/mnist/lenet_solver.prototxt
  dlsoft train -solver lenet_solver.prototxt -weights pretrained.caffemodel -gpu 0
  dlsoft train --solver lenet_solver.prototxt --snapshot lenet_iter_5000.solverstate
  dlsoft train net.prototxt --lr 0.05 --max-iter 500 --batch-size 32
  dlsoft train zoo:lenet_mnist --max-iter 1000
"""


@command(cli, "train", epilog=TRAIN_EXAMPLES)
@click.argument("model", required=False, metavar="[NET|zoo:NAME]")
@click.option("--solver", "-solver", "solver_path", metavar="FILE", help="Solver definition (prototxt or YAML).")
@click.option("--model", "-model", "model_option", metavar="FILE", help="The net to train (same as NET).")
@click.option("--weights", "-weights", "weights", metavar="FILE[,FILE]",
              help="Start from these weights (fine-tuning; layers matched by name).")
@click.option("--snapshot", "-snapshot", "snapshot", metavar="FILE", help="Resume from a .solverstate.")
@_gpu_option
@click.option("--seed", "-seed", "seed", type=int, help="Random seed (solver's random_seed).")
@click.option("--lr", "--base-lr", "-base_lr", "lr", type=float, help="Base learning rate (default 0.01).")
@click.option("--max-iter", "-max_iter", "max_iter", type=int, help="Iterations to train (default 1000).")
@click.option("--batch-size", "-batch_size", "batch_size", type=int, help="Batch size of the TRAIN data layers.")
@click.option("--solver-type", "--type", "-type", "solver_type",
              type=click.Choice(SOLVER_TYPES, case_sensitive=False), help="Update rule (default SGD).")
@click.option("--lr-policy", "-lr_policy", "lr_policy",
              type=click.Choice(["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"]),
              help="Learning-rate policy (default fixed).")
@click.option("--momentum", "-momentum", "momentum", type=float, help="Momentum (default 0.9).")
@click.option("--weight-decay", "-weight_decay", "weight_decay", type=float, help="Weight decay (default 0).")
@click.option("--test-interval", "-test_interval", "test_interval", type=int, help="Test every N iterations.")
@click.option("--test-iter", "-test_iter", "test_iter", type=int, help="Batches per test (default 10).")
@click.option("--display", "-display", "display", type=int, help="Log the loss every N iterations.")
@click.option("--snapshot-every", "-snapshot_every", "snapshot_every", type=int,
              help="Snapshot every N iterations (the solver's `snapshot`).")
@click.option("--snapshot-prefix", "-snapshot_prefix", "snapshot_prefix", metavar="PREFIX",
              help="Snapshot file prefix (files PREFIX_iter_N.caffemodel/.solverstate).")
@click.option("--run-dir", "run_dir", metavar="DIR",
              help="For zoo:NAME: where to copy the entry and train (default runs/NAME).")
@click.option("--sigint-effect", "-sigint_effect", "sigint_effect", type=click.Choice(["stop", "snapshot", "none"]),
              default=None, help="What Ctrl-C does (default: snapshot, then stop).")
@click.option("--sighup-effect", "-sighup_effect", "sighup_effect", type=click.Choice(["stop", "snapshot", "none"]),
              default=None, help="What SIGHUP does (default: snapshot).")
@_stage_option
@_level_option
def train_command(model, solver_path, model_option, weights, snapshot, gpu, seed, lr, max_iter, batch_size,
                  solver_type, lr_policy, momentum, weight_decay, test_interval, test_iter, display,
                  snapshot_every, snapshot_prefix, run_dir, sigint_effect, sighup_effect, stages, level):
    """Train a net: from a solver file, or a net file with default solver settings.

    With --solver, the solver file says everything and the flags below override it.
    With only a net (NET, or --model), dlsoft trains it with SGD, lr 0.01, momentum 0.9
    for 1,000 iterations, testing on the net's TEST phase if it has one. A zoo entry
    (zoo:NAME) is copied into a run directory and trained with its own solver.
    """
    from .netdef import io

    if model and model_option:
        raise click.UsageError("give the net either as an argument or with --model, not both")
    model = model or model_option
    if weights and snapshot:
        raise click.UsageError("give either --weights (start from weights) or --snapshot (resume), not both")
    if model and solver_path:
        raise click.UsageError("give either a net to train with default settings or --solver, not both")
    if not model and not solver_path:
        raise click.UsageError("nothing to train: give a net file, zoo:NAME, or --solver FILE")
    if run_dir and not (model or solver_path or "").startswith(ZOO_PREFIX):
        raise click.UsageError("--run-dir is for training a zoo entry (zoo:NAME)")

    run_directory = None
    if model and model.startswith(ZOO_PREFIX) and "/" not in model:
        solver_path, run_directory = _prepare_zoo_training(model, run_dir)
        model = None
    elif solver_path and solver_path.startswith(ZOO_PREFIX):
        solver_path, run_directory = _prepare_zoo_training(solver_path, run_dir)

    overrides = {"lr": lr, "max_iter": max_iter, "batch_size": batch_size, "solver_type": solver_type,
                 "lr_policy": lr_policy, "test_interval": test_interval, "test_iter": test_iter,
                 "momentum": momentum, "weight_decay": weight_decay, "display": display,
                 "snapshot_every": snapshot_every, "snapshot_prefix": snapshot_prefix, "seed": seed,
                 "level": level}
    stages = _stages(stages)
    if solver_path:
        where = solver_path
        solver_param = io.read_solver(solver_path)
        if run_directory is not None and not os.path.isabs(solver_param.snapshot_prefix or "x"):
            overrides["snapshot_prefix"] = overrides["snapshot_prefix"] or \
                str(run_directory / (solver_param.snapshot_prefix or "snapshot"))
        if any(v is not None for v in overrides.values()) or stages:
            _absolute_net_paths(solver_param, solver_path)
            if not solver_param.HasField("snapshot_prefix"):  # Caffe's default: the solver file's path
                solver_param.snapshot_prefix = str(Path(solver_path).with_suffix(""))
            apply_overrides(solver_param, where, stages=stages, **overrides)
            source = solver_param
        else:
            source = solver_path  # unchanged: the solver reads it and names its lines in errors
    else:
        net_path = resolve(model, "train_val")
        where = net_path
        solver_param = default_solver(io.read_net(net_path), name=Path(net_path).stem)
        if test_interval is None and max_iter is not None and _has_test_phase(solver_param.net_param):
            overrides["test_interval"] = default_test_interval(max_iter) if max_iter > 0 else None
        apply_overrides(solver_param, where, stages=stages, **overrides)
        source = solver_param
    weights_paths = [resolve(w, "weights") for w in weights.split(",") if w] if weights else []
    for path in weights_paths:  # fail before any work; the solver also looks beside its file
        beside = Path(solver_path).parent / path if solver_path else None
        if not os.path.exists(path) and not (beside is not None and beside.exists()):
            raise DlsoftError("weights file not found", path=path)
    if snapshot:
        snapshot = _require_file(resolve(snapshot, "solverstate"), "solver state")
    device = _train_device(gpu, solver_param)
    _run_training(source, where, device, weights_paths, snapshot, sigint_effect, sighup_effect)


def _train_device(gpu: str | None, solver_param) -> str:
    """--gpu wins; else the solver's solver_mode (GPU falls back to the CPU, with a warning, without one)."""
    if gpu is not None:
        return parse_gpu(gpu)
    from .protos import caffe_pb2

    # Caffe's default solver_mode is GPU: only a file that says so asks for one.
    if solver_param.HasField("solver_mode") and solver_param.solver_mode == caffe_pb2.SolverParameter.GPU:
        from .backend import gpu_count

        if gpu_count() > 0:
            return f"gpu:{solver_param.device_id}"
        log.warning("the solver asks for solver_mode: GPU but no GPU is available: training on the CPU")
    return "cpu"


def _run_training(source, where: str, device: str, weights: list[str], snapshot: str | None,
                  sigint_effect: str | None, sighup_effect: str | None) -> None:
    from .solver import Solver

    options = {name: value for name, value in (("sigint_effect", sigint_effect), ("sighup_effect", sighup_effect))
               if value is not None}
    try:
        solver = Solver(source, device=device, weights=weights or None,
                        progress_bar=False if _settings.quiet else None, **options)
    except DlsoftError as exc:
        if exc.path is None:  # built from a message: name the file it came from
            raise type(exc)(exc.detail, path=where) from None
        raise
    with solver:
        solver.solve(resume=snapshot)
        p = solver.param
        finished = solver.iter >= p.max_iter
        if finished and solver.test_nets and not (p.test_interval and solver.iter % p.test_interval == 0):
            log.info("Testing the final weights (iteration %d)", solver.iter)
            solver.test_all()  # the scores reported below are then those of the final weights
        _print_results(solver)


# ============================================================================ test
@command(cli, "test", epilog="""
\b
Examples:
  dlsoft test --model lenet_train_test.prototxt --weights lenet_iter_10000.caffemodel --iterations 100
  dlsoft test -model zoo:lenet_mnist -iterations 10
""")
@click.option("--model", "-model", "model", required=True, metavar="FILE", help="Net definition with TEST-phase data.")
@click.option("--weights", "-weights", "weights", metavar="FILE", help="Trained weights to score.")
@click.option("--iterations", "-iterations", "iterations", type=click.IntRange(min=1), default=50,
              show_default=True, help="Batches to run.")
@_gpu_option
@_phase_option("TEST")
@_stage_option
@_level_option
def test_command(model, weights, iterations, gpu, phase, stages, level):
    """Score trained weights: run N batches and print each output's mean, as `caffe test`."""
    import numpy as np

    from .backend import to_numpy
    from .netdef.net import Net

    if weights is None:
        if not model.startswith(ZOO_PREFIX):
            raise click.UsageError("test needs --weights (the trained model to score)")
        weights = model.partition("/")[0]
    weights_path = _require_file(resolve(weights, "weights"), "weights file")
    model_path = resolve(model, "train_val")
    net = Net(model_path, phase=phase.upper(), weights=weights_path, stages=_stages(stages), level=level,
              device=parse_gpu(gpu))
    try:
        totals: dict[str, np.ndarray] = {}
        loss_total = 0.0
        for i in range(iterations):
            outputs = net.forward()
            loss_total += float(net.loss)
            for name, value in outputs.items():
                array = to_numpy(value).astype(np.float64).ravel()
                totals[name] = totals.get(name, 0) + array
                if array.size == 1:
                    log.info("Batch %d, %s = %s", i, name, _format_number(float(array[0])))
    finally:
        net.close()
    log.info("Loss: %s", _format_number(loss_total / iterations))
    click.echo(f"Loss: {_format_number(loss_total / iterations)}")
    for name, total in totals.items():
        mean = total / iterations
        weight = net.blob_loss_weights.get(name, 0.0)
        if mean.size == 1:
            line = f"{name} = {_format_number(float(mean[0]))}"
            if weight:
                line += f" (* {_format_number(weight)} = {_format_number(weight * float(mean[0]))} loss)"
        else:
            line = f"{name} = {_format_number(float(mean.mean()))} (mean of {mean.size} values per batch)"
        click.echo(line)


# ============================================================================ time
@command(cli, "time", epilog="""
\b
Examples:
  dlsoft time --model lenet_train_test.prototxt --iterations 20
  dlsoft time -model zoo:lenet_mnist -iterations 10 -gpu 0
""")
@click.option("--model", "-model", "model", required=True, metavar="FILE", help="Net definition to time.")
@click.option("--iterations", "-iterations", "iterations", type=click.IntRange(min=1), default=50,
              show_default=True, help="Timed forward-backward passes.")
@click.option("--warmup", "warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed passes first.")
@click.option("--forward-only", is_flag=True, help="Time forward passes only.")
@click.option("--weights", "-weights", "weights", metavar="FILE", help="Weights to load first (optional).")
@_gpu_option
@_phase_option("TRAIN")
@_stage_option
@_level_option
def time_command(model, iterations, warmup, forward_only, weights, gpu, phase, stages, level):
    """Time each layer's forward and backward pass, as `caffe time`."""
    from .netdef.net import Net
    from .timing import time_net

    model_path = resolve(model, "train_val")
    weights_path = _require_file(resolve(weights, "weights"), "weights file") if weights else None
    net = Net(model_path, phase=phase.upper(), weights=weights_path, stages=_stages(stages), level=level,
              device=parse_gpu(gpu))
    try:
        report = time_net(net, iterations=iterations, warmup=warmup, backward=not forward_only)
    finally:
        net.close()
    click.echo(report.format())


# ============================================================================ device-query
@command(cli, "device-query", epilog="""
\b
Example:
  dlsoft device-query
""")
@click.option("--gpu", "-gpu", "gpu", type=int, default=None, help="Only this GPU.")
def device_query_command(gpu):
    """Show the CPU and BLAS in use, and each GPU (name, memory, compute capability)."""
    for line in device_report(gpu):
        click.echo(line)


def device_report(only_gpu: int | None = None) -> list[str]:
    """Lines describing the CPU, numpy's BLAS, and the GPUs cupy sees."""
    import numpy as np

    from .backend import gpu_count

    lines = [(f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores), "
              f"{platform.system()} {platform.release()}"),
             f"numpy {np.__version__}, BLAS: {_blas_name()}"]
    count = gpu_count()
    if count == 0:
        lines.append("GPU: none (CPU only; for GPUs install dlsoft[gpu] on a machine with an NVIDIA GPU)")
        if only_gpu is not None:
            raise DlsoftError(f"--gpu {only_gpu}: no GPU is available")
        return lines
    from .backend import cupy_module

    cupy = cupy_module()
    indexes = range(count) if only_gpu is None else [only_gpu]
    if only_gpu is not None and not 0 <= only_gpu < count:
        raise DlsoftError(f"--gpu {only_gpu}: only {count} GPU(s) are present")
    lines.append(f"cupy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}")
    for i in indexes:
        props = cupy.cuda.runtime.getDeviceProperties(i)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        lines.append(f"GPU {i}: {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, "
                     f"compute capability {props['major']}.{props['minor']}, "
                     f"{props['multiProcessorCount']} multiprocessors")
    return lines


def _blas_name() -> str:
    import numpy as np

    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older numpy: no dict mode
        return "unknown"


# ============================================================================ draw
@command(cli, "draw", epilog="""
\b
Examples:
  dlsoft draw lenet_train_test.prototxt lenet.dot
  dlsoft draw zoo:lenet_mnist lenet.svg --rankdir TB
""")
@click.argument("model", metavar="NET")
@click.argument("out", metavar="OUT.{dot,svg,png,pdf}")
@_phase_option("TRAIN", allow_all=True)
@click.option("--rankdir", "-rankdir", "rankdir", type=click.Choice(["LR", "RL", "TB", "BT"]), default="LR",
              show_default=True, help="Direction of the graph.")
@click.option("--shapes/--no-shapes", default=True, show_default=True,
              help="Build the net to show blob shapes and parameter counts.")
def draw_command(model, out, phase, rankdir, shapes):
    """Draw the net's graph: DOT always; SVG/PNG/PDF with Graphviz's `dot` installed."""
    from .netdef.draw import draw_net

    path = draw_net(resolve(model, "model"), out, phase=phase, rankdir=rankdir, shapes=shapes)
    click.echo(f"Wrote {path}")


# ============================================================================ convert
@command(cli, "convert", epilog="""
\b
Examples:
  dlsoft convert lenet.prototxt lenet.yaml
  dlsoft convert lenet.yaml lenet.prototxt
  dlsoft convert old_v1_net.prototxt upgraded.prototxt
  dlsoft convert lenet_iter_10000.caffemodel lenet_definition.prototxt
""")
@click.argument("source", metavar="IN")
@click.argument("dest", metavar="OUT")
@click.option("--kind", type=click.Choice(["auto", "net", "solver"]), default="auto", show_default=True,
              help="What IN holds.")
@click.option("--with-blobs", is_flag=True,
              help="Keep weights when writing text/YAML (they are dropped unless OUT is binary).")
def convert_command(source, dest, kind, with_blobs):
    """Convert a net or solver between prototxt, YAML and binary; upgrade Caffe's legacy (V1) forms.

    The format follows each file's extension (.prototxt/.txt text, .yaml/.yml YAML,
    .caffemodel/.pb binary). Writing a caffemodel's definition as text drops its
    weights, unless --with-blobs.
    """
    from .netdef import io

    source_path = resolve(source, "model")
    message, what = _read_net_or_solver(source_path, kind)
    if what == "net" and io.file_format(dest) != "binary" and not with_blobs:
        dropped = sum(1 for layer in message.layer if layer.blobs)
        for layer in message.layer:
            layer.ClearField("blobs")
        if dropped:
            log.info("dropped the weights of %d layers (use --with-blobs to keep them)", dropped)
    if what == "solver" and io.file_format(dest) == "binary":
        raise DlsoftError(f"{dest}: solvers are written as text or YAML, not binary")
    io.write_message(message, dest)
    click.echo(f"Wrote {what} {dest}")


def _read_net_or_solver(path: str, kind: str):
    from .errors import ParseError
    from .netdef import io

    if kind == "solver":
        return io.read_solver(path), "solver"
    if kind == "net":
        return io.read_net(path), "net"
    try:
        return io.read_net(path), "net"
    except ParseError as net_error:
        if io.file_format(path) == "binary" or not os.path.isfile(path):
            raise
        try:
            return io.read_solver(path), "solver"
        except ParseError:
            raise net_error from None


# ============================================================================ plot
@command(cli, "plot", epilog="""
\b
Examples:
  dlsoft plot runs/lenet_mnist curves.png
  dlsoft plot caffe_train.log curves.png
""")
@click.argument("source", metavar="RUN_DIR|LOG|METRICS")
@click.argument("out", metavar="OUT.png")
@click.option("--title", default="", help="Title of the figure.")
def plot_command(source, out, title):
    """Plot training loss, test scores and lr against iterations.

    Reads dlsoft's metrics file (JSON lines) or Caffe-format log text, so real Caffe
    logs plot too. Needs matplotlib (pip install 'dlsoft[plot]').
    """
    from .plot import load_curves, plot_curves

    curves = load_curves(source)
    plot_curves(curves, out, title=title)
    click.echo(f"Wrote {out}")


# ============================================================================ summary, layers
@command(cli, "summary", epilog="""
\b
Examples:
  dlsoft summary lenet_train_test.prototxt
  dlsoft summary zoo:bvlc_alexnet --phase TEST
""")
@click.argument("model", metavar="NET")
@_phase_option("TRAIN")
@click.option("--weights", "-weights", "weights", metavar="FILE", help="Load weights (checks they fit).")
@_stage_option
@_level_option
def summary_command(model, phase, weights, stages, level):
    """Print the layer table: top shapes and parameter counts."""
    from .netdef.net import Net

    weights_path = _require_file(resolve(weights, "weights"), "weights file") if weights else None
    with Net(resolve(model, "model"), phase=phase.upper(), weights=weights_path, stages=_stages(stages),
             level=level) as net:
        click.echo(net.summary())


@command(cli, "layers", epilog="""
\b
Example:
  dlsoft layers --verbose
""")
@click.option("--verbose", "-v", is_flag=True, help="Also show each layer's one-line description.")
def layers_command(verbose):
    """List every layer type dlsoft implements (Caffe's type names)."""
    from .layers.registry import layer_class, registered_types

    types = registered_types()
    width = max(len(t) for t in types)
    for name in types:
        if verbose:
            doc = (layer_class(name).__doc__ or "").strip().splitlines()
            click.echo(f"{name.ljust(width)}  {doc[0] if doc else ''}")
        else:
            click.echo(name)


# ============================================================================ zoo
@cli.group("zoo", cls=click.Group, context_settings=CONTEXT_SETTINGS, no_args_is_help=True, epilog="""
\b
Examples:
  dlsoft zoo list
  dlsoft zoo show lenet_mnist
  dlsoft zoo get lenet_mnist my_lenet
  dlsoft train zoo:lenet_mnist
""")
def zoo_group():
    """Named nets with verified pretrained weights: list, inspect, copy, fetch, publish."""


def _progress_bar():
    """A download progress callback drawing a click progress bar (none with --quiet)."""
    if _settings.quiet:
        return None, lambda: None
    state: dict = {}

    def progress(done: int, total: int | None) -> None:
        if "bar" not in state:
            state["bar"] = click.progressbar(length=total or 0, label="downloading", file=sys.stderr)
            state["bar"].__enter__()
            state["done"] = 0
        state["bar"].update(done - state["done"])
        state["done"] = done

    def close() -> None:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)
    return progress, close


def _size(value) -> str:
    if not value:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


@command(zoo_group, "list", epilog="\b\nExample:\n  dlsoft zoo list")
def zoo_list_command():
    """List the zoo's entries: task, metric, weights size and whether they are here."""
    from . import model_zoo

    rows = [("name", "task", "metric", "weights", "size")]
    for entry in model_zoo.list_entries():
        row = model_zoo.summary_row(entry)
        rows.append((row["name"], row["task"], row["metric"] or "-", row["weights"], _size(row["size"])))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@command(zoo_group, "show", epilog="\b\nExample:\n  dlsoft zoo show lenet_mnist")
@click.argument("name")
def zoo_show_command(name):
    """Show everything recorded about an entry (files, checksums, metrics, licence)."""
    from . import model_zoo
    from .model_zoo.entry import dump_yaml

    entry = model_zoo.get_entry(name)
    info = entry.to_dict()
    info["weights_status"] = model_zoo.weights_status(entry)
    click.echo(dump_yaml(info).rstrip())


@command(zoo_group, "get", epilog="\b\nExample:\n  dlsoft zoo get lenet_mnist my_lenet")
@click.argument("name")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--fetch", "fetch_weights", is_flag=True, help="Download the weights if they are not here yet.")
@click.option("--no-weights", is_flag=True, help="Copy the configs only.")
@click.option("--overwrite", is_flag=True, help="Replace files already in DEST.")
def zoo_get_command(name, dest, fetch_weights, no_weights, overwrite):
    """Copy an entry's files into DEST, to edit, retrain or publish."""
    from . import model_zoo

    progress, close = _progress_bar()
    try:
        written = model_zoo.copy_entry(name, dest, weights=not no_weights, fetch_weights=fetch_weights,
                                       overwrite=overwrite, progress=progress)
    finally:
        close()
    for path in written:
        click.echo(f"Wrote {path}")


@command(zoo_group, "fetch", epilog="\b\nExample:\n  dlsoft zoo fetch bvlc_alexnet")
@click.argument("name")
@click.option("--timeout", type=float, default=30, show_default=True, help="Network timeout in seconds.")
def zoo_fetch_command(name, timeout):
    """Download an entry's weights (verified against their checksum) into the cache."""
    from . import model_zoo

    progress, close = _progress_bar()
    try:
        path = model_zoo.fetch(name, progress=progress, timeout=timeout)
    finally:
        close()
    click.echo(f"Weights of {name}: {path}")


@command(zoo_group, "publish", epilog="\b\nExample:\n  dlsoft zoo publish my_lenet --index my_zoo/index.yaml")
@click.argument("entry_dir", type=click.Path(file_okay=False))
@click.option("--index", "index", metavar="FILE", help="Index file to add the entry to (default: index.yaml "
                                                        "next to the folder).")
def zoo_publish_command(entry_dir, index):
    """Validate an entry folder, record its checksums, and add it to an index."""
    from . import model_zoo

    entry = model_zoo.publish(entry_dir, index=index)
    click.echo(f"Published {entry.name} from {entry_dir}")


@command(zoo_group, "add-index", epilog="\b\nExample:\n  dlsoft zoo add-index https://example.org/zoo/index.yaml")
@click.argument("location")
def zoo_add_index_command(location):
    """Add a zoo index (a path or URL) so its entries can be used by name."""
    from . import model_zoo

    entries = model_zoo.add_index(location)
    click.echo(f"Added index {location} ({len(entries)} entries: "
               f"{', '.join(e.name for e in entries) or 'none'})")


# ============================================================================ dataset tools
def _lmdb_only(backend: str) -> None:
    if backend.lower() != "lmdb":
        raise DlsoftError(f"--backend {backend}: only lmdb is supported")


_backend_option = click.option("--backend", "-backend", "backend", default="lmdb", show_default=True,
                               help="Database backend (lmdb only).")


@command(cli, "convert-imageset", epilog="""
\b
Example:
  dlsoft convert-imageset images/ train.txt train_lmdb --resize-height 32 --resize-width 32 --shuffle
""")
@click.argument("root", type=click.Path(file_okay=False))
@click.argument("list_file", metavar="LIST")
@click.argument("db_path", metavar="DB")
@click.option("--resize-height", "--resize_height", "-resize_height", "resize_height", type=int, default=0,
              show_default=True, help="Resize images to this height (with --resize-width).")
@click.option("--resize-width", "--resize_width", "-resize_width", "resize_width", type=int, default=0,
              show_default=True, help="Resize images to this width (with --resize-height).")
@click.option("--shuffle", "-shuffle", "shuffle", is_flag=True, help="Shuffle the list first (seeded by --seed).")
@click.option("--gray", "-gray", "gray", is_flag=True, help="Store grey images.")
@click.option("--encoded", "-encoded", "encoded", is_flag=True, help="Store JPEG/PNG bytes instead of pixels.")
@click.option("--encode-type", "--encode_type", "-encode_type", "encode_type", default="",
              help="Encoding for --encoded (jpg, png; default: the file's own).")
@click.option("--seed", type=int, default=None, help="Seed of the shuffle.")
@_backend_option
def convert_imageset_command(root, list_file, db_path, resize_height, resize_width, shuffle, gray, encoded,
                             encode_type, seed, backend):
    """Caffe's convert_imageset: images listed as `path label` lines into an LMDB of Datums."""
    from .data.tools import convert_imageset

    _lmdb_only(backend)
    if seed is not None:
        from .random import set_seed
        set_seed(seed)
    _require_file(list_file, "list file")
    count = convert_imageset(root, list_file, db_path, resize_height=resize_height, resize_width=resize_width,
                             shuffle=shuffle, gray=gray, encoded=encoded, encode_type=encode_type)
    click.echo(f"Wrote {count} images to {db_path}")


@command(cli, "compute-mean", epilog="""
\b
Example:
  dlsoft compute-mean train_lmdb mean.binaryproto
""")
@click.argument("db_path", metavar="DB")
@click.argument("out", metavar="OUT.binaryproto")
@_backend_option
def compute_mean_command(db_path, out, backend):
    """Caffe's compute_image_mean: the mean image of an LMDB, as a .binaryproto."""
    from .data.tools import compute_image_mean

    _lmdb_only(backend)
    if not os.path.exists(db_path):
        raise DlsoftError("no such database", path=db_path)
    count = compute_image_mean(db_path, out)
    click.echo(f"Wrote the mean of {count} images to {out}")


@command(cli, "convert-mnist", epilog="""
\b
Example:
  dlsoft convert-mnist train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz mnist_train_lmdb
""")
@click.argument("images", metavar="IMAGES_IDX")
@click.argument("labels", metavar="LABELS_IDX")
@click.argument("db_path", metavar="DB")
@_backend_option
def convert_mnist_command(images, labels, db_path, backend):
    """Caffe's convert_mnist_data: MNIST-format idx files (plain or .gz) into an LMDB."""
    from .data.tools import convert_mnist

    _lmdb_only(backend)
    _require_file(images, "images file")
    _require_file(labels, "labels file")
    count = convert_mnist(images, labels, db_path)
    click.echo(f"Wrote {count} images to {db_path}")


if __name__ == "__main__":  # pragma: no cover
    main()
