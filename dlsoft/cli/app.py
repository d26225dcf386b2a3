"""The ``dlsoft`` group: global flags, logging, one-line errors, and the ``command`` decorator."""
from __future__ import annotations

import difflib
import functools
import logging
import os
import sys
import traceback
from dataclasses import dataclass

import click

from .. import __version__
from ..errors import DlsoftError, one_line

log = logging.getLogger("dlsoft.cli")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# ============================================================================ settings, logging, errors
@dataclass
class Settings:
    """The global flags of one invocation (given before or after the subcommand)."""

    debug: bool = False
    quiet: bool = False
    log_file: str | None = None

    def reset(self, **values) -> None:
        """Back to the defaults (then ``values``): each invocation starts afresh."""
        for name, value in vars(Settings(**values)).items():
            setattr(self, name, value)


settings = Settings()


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
    from ..solver.progress import CaffeLogFormatter

    _remove_handlers()
    level = logging.DEBUG if settings.debug else logging.INFO
    handlers: list[logging.Handler] = [_StderrHandler()]
    handlers[0].setLevel(logging.ERROR if settings.quiet else level)
    if settings.log_file:
        try:
            file_handler = logging.FileHandler(settings.log_file, encoding="utf-8")
        except OSError as exc:
            raise DlsoftError(f"cannot open the log file ({exc.strerror})", path=settings.log_file) from None
        file_handler.setLevel(level)
        handlers.append(file_handler)
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(CaffeLogFormatter())
        handler.addFilter(_DlsoftOrWarnings())
        handler._dlsoft_cli = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    logging.getLogger("dlsoft").setLevel(level)


def _fail(message: str, code: int) -> None:
    if settings.debug:
        traceback.print_exc(file=sys.stderr)
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


def check_single_dash_flags(command: click.Command, ctx: click.Context, args: list[str]) -> None:
    """Name an unknown Caffe-style flag whole (``-iterations``), where click would name ``-i``.

    click reads ``-iterations`` as the short option ``-i`` followed by ``terations``; a
    Caffe user typing a flag that this command lacks should see the flag they typed.
    """
    known = {opt for param in command.get_params(ctx) if isinstance(param, click.Option)
             for opt in (*param.opts, *param.secondary_opts)}
    takes_value = {opt for param in command.get_params(ctx) if isinstance(param, click.Option)
                   and not param.is_flag and not param.count for opt in param.opts}
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in takes_value and "=" not in arg:
            skip = True
            continue
        if not arg.startswith("-") or arg.startswith("--") or len(name) <= 2 or name in known:
            continue
        if _is_number(arg) or all(f"-{c}" in known for c in name[1:]):
            continue  # a negative number, or bundled one-letter flags (-qv)
        close = difflib.get_close_matches(name.lstrip("-"), [o.lstrip("-") for o in known], n=1, cutoff=0.6)
        hint = f" (did you mean {next(o for o in known if o.lstrip('-') == close[0])}?)" if close else ""
        raise click.UsageError(f"no such option: {name}{hint}", ctx=ctx)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class DlsoftCommand(click.Command):
    """A command that names unknown single-dash flags whole (see :func:`check_single_dash_flags`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        check_single_dash_flags(self, ctx, args)
        return super().parse_args(ctx, args)


#: Caffe's tool names (and their spellings) as dlsoft commands: name -> (command, arguments it implies).
CAFFE_TOOL_ALIASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "device_query": ("device-query", ()),
    "convert_imageset": ("convert-imageset", ()),
    "compute_image_mean": ("compute-mean", ()),
    "convert_mnist_data": ("convert-mnist", ()),
    "extract_features": ("extract-features", ()),
    "upgrade_net_proto_text": ("convert", ("--kind", "net", "--to", "text")),
    "upgrade_net_proto_binary": ("convert", ("--kind", "net", "--to", "binary", "--with-blobs")),
    "upgrade_solver_proto_text": ("convert", ("--kind", "solver", "--to", "text")),
    "draw_net": ("draw", ()),
    "plot_training_log": ("plot", ()),
}


class DlsoftGroup(click.Group):
    """A click group whose errors are one line on stderr (exit 2 for user mistakes).

    Caffe's tool names (``device_query``, ``convert_imageset``, ``upgrade_net_proto_text``, ...)
    run the dlsoft command that does their job (:data:`CAFFE_TOOL_ALIASES`); any other
    ``snake_case`` spelling of a command works too.
    """

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] in CAFFE_TOOL_ALIASES:
            name, implied = CAFFE_TOOL_ALIASES[args[0]]
            args = [name, *implied, *args[1:]]
        elif args and "_" in args[0] and not args[0].startswith("-"):
            dashed = args[0].replace("_", "-")
            if dashed in self.commands:
                args = [dashed, *args[1:]]
        return super().resolve_command(ctx, args)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # the group's own flags come before the command: check only those
        head = []
        for arg in args:
            if not arg.startswith("-"):
                break
            head.append(arg)
        check_single_dash_flags(self, ctx, head)
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        settings.reset(debug=any(a in ("--debug", "-debug") for a in args))
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
            setattr(settings, name, value)
        return value
    return callback


def _no_cwd_modules(ctx, param, value):
    if value:
        os.environ["DLSOFT_NO_CWD_MODULES"] = "1"  # read by the Python layer when it imports
    return value


_COMMON_OPTIONS = (
    click.option("--debug", "-debug", is_flag=True, expose_value=False, callback=_set_flag("debug"),
                 help="Show the full traceback of an error (and debug log lines)."),
    click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=_set_flag("quiet"),
                 help="Only errors and final results: no log lines, no progress bar."),
    click.option("--log-file", "-log_file", "log_file", type=click.Path(dir_okay=False), expose_value=False,
                 callback=_set_flag("log_file"), help="Also write the log lines to this file."),
    click.option("--no-cwd-modules", is_flag=True, expose_value=False, callback=_no_cwd_modules,
                 help="Python layers may not import modules from the working directory "
                      "(as DLSOFT_NO_CWD_MODULES=1)."),
)


def global_options(f):
    """Add --debug/--quiet/--log-file (declared once, in ``_COMMON_OPTIONS``) to a command or group."""
    for option in reversed(_COMMON_OPTIONS):
        f = option(f)
    return f


def _with_common_options(f):
    """Accept --debug/--quiet/--log-file after the subcommand too, and set up logging before running."""
    @functools.wraps(f)
    def run(*args, **kwargs):
        configure_logging()
        return f(*args, **kwargs)
    return global_options(run)


def command(group: click.Group, name: str, **kwargs):
    """``group.command(name)`` with the common options and an example-carrying help text."""
    def decorate(f):
        kwargs.setdefault("cls", DlsoftCommand)
        return group.command(name, context_settings=CONTEXT_SETTINGS, **kwargs)(_with_common_options(f))
    return decorate


@click.group(cls=DlsoftGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="dlsoft")
@global_options
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
