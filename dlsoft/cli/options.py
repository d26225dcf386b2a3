"""Helpers and options shared by the commands: zoo references, --gpu, --phase, --stage, --level."""
from __future__ import annotations

import os

import click

from ..errors import DlsoftError
from ..zoo_ref import is_zoo_ref
from .app import log


class LazyChoice(click.Choice):
    """A ``click.Choice`` whose choices are computed when first needed, so building the
    command line does not import what they come from (the solver registry, say)."""

    def __init__(self, get_choices, case_sensitive: bool = True):
        self._get_choices = get_choices
        self.case_sensitive = case_sensitive

    @property
    def choices(self):
        return tuple(self._get_choices())


# ============================================================================ shared helpers
def resolve(ref: str | None, kind: str) -> str | None:
    """A local path for ``ref``: ``zoo:`` references go through the model zoo, others come back as they are."""
    if not is_zoo_ref(ref):
        return ref
    from .. import model_zoo

    return str(model_zoo.resolve(ref, kind))


def require_file(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise DlsoftError(f"{what} not found", path=path)
    if os.path.isdir(path):
        raise DlsoftError(f"{what} is a directory, not a file", path=path)
    return path


def pick_net(model: str | None, model_option: str | None, required: bool = True) -> str | None:
    """The net given as the NET argument or as ``--model``/``-model`` (not both)."""
    if model and model_option and model != model_option:
        raise click.UsageError("give the net either as an argument or with --model, not both")
    model = model or model_option
    if model is None and required:
        raise click.UsageError("no net given: pass NET (or --model FILE, Caffe's -model)")
    return model


def net_file(path: str, command: str) -> str:
    """``path``, after checking that it is not a solver file given where a net is expected.

    ``dlsoft train solver.prototxt`` (or ``test -model solver.prototxt``) is a common slip
    from Caffe's ``-solver``/``-model`` pair; the net parser would only report an unknown
    field ``base_lr``.
    """
    from ..errors import ParseError
    from ..netdef import io

    if not os.path.isfile(path) or io.file_format(path) == "binary":
        return path
    try:
        io.read_net(path)
    except ParseError as net_error:
        try:
            solver = io.read_solver(path)
        except DlsoftError:
            raise net_error from None
        trains = next((getattr(solver, f) for f in ("net", "train_net") if solver.HasField(f)), None)
        if command == "train":
            advice = f"train with it as `dlsoft train --solver {path}`"
        else:
            advice = f"give its net{f' ({trains})' if trains else ''} instead"
        raise DlsoftError(f"is a solver definition, not a net: {advice}", path=path) from None
    return path


def parse_gpus(spec: str | None, flag: str = "--gpu") -> list[int]:
    """Caffe's ``-gpu`` value (``0``, ``1,2`` or ``all``) as GPU numbers ([] for none).

    A GPU that is not there is an error naming the flag, before any file is read.
    """
    if spec is None or spec == "":
        return []
    from ..backend import gpu_count

    spec = spec.strip().lower()
    count = gpu_count()
    if spec == "all":
        if count == 0:
            raise DlsoftError(f"{flag} all: no GPU is available (install dlsoft[gpu] on a machine with an NVIDIA GPU)")
        return list(range(count))
    try:
        ids = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise DlsoftError(f"{flag} expects a GPU number, a comma-separated list or 'all', got '{spec}'") from None
    if not ids or any(i < 0 for i in ids):
        raise DlsoftError(f"{flag} expects non-negative GPU numbers, got '{spec}'")
    missing = [i for i in ids if i >= count]
    if missing:  # the flag named, before any file is read (the distributed launcher says it the same way)
        raise DlsoftError(f"{flag} {spec}: GPU {missing[0]} is not present ({count} GPU(s) here"
                          + ("" if count else "; install dlsoft[gpu] on a machine with NVIDIA GPUs, or leave out "
                                              "the flag to run on the CPU") + ")")
    return ids


def parse_gpu(spec: str | None, flag: str = "--gpu") -> str:
    """Caffe's ``-gpu`` value as one device: the first GPU when several are given (``train`` uses them all)."""
    ids = parse_gpus(spec, flag)
    if not ids:
        return "cpu"
    if len(ids) > 1:
        log.warning("this command runs on one GPU: using GPU %d only (of %s)", ids[0], ", ".join(map(str, ids)))
    return f"gpu:{ids[0]}"


def phase_option(default: str, allow_all: bool = False):
    choices = ["TRAIN", "TEST"] + (["ALL"] if allow_all else [])
    return click.option("--phase", "-phase", "phase", type=click.Choice(choices, case_sensitive=False),
                        default=default, show_default=True, help="Which phase's layers to use.")


gpu_option = click.option("--gpu", "-gpu", "gpu", metavar="N|N,M|all",
                           help="Run on this GPU (Caffe's -gpu); train: several (or all) train "
                                "data-parallel, one process per GPU.")

stage_option = click.option("--stage", "-stage", "stages", multiple=True, metavar="NAME",
                             help="A NetState stage to include layers for (repeatable; or comma-separated).")

level_option = click.option("--level", "-level", "level", type=int, default=None, help="The NetState level.")


def stage_names(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(s for value in values for s in value.split(",") if s)


def format_number(value: float) -> str:
    return f"{value:.6g}"


def format_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_number(v) for v in value) + "]"
    return format_number(value)
