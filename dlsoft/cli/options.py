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


def parse_gpus(spec: str | None) -> list[int]:
    """Caffe's ``-gpu`` value (``0``, ``1,2`` or ``all``) as GPU numbers ([] for none)."""
    if spec is None or spec == "":
        return []
    from ..backend import gpu_count

    spec = spec.strip().lower()
    if spec == "all":
        count = gpu_count()
        if count == 0:
            raise DlsoftError("--gpu all: no GPU is available (install dlsoft[gpu] on a machine with an NVIDIA GPU)")
        return list(range(count))
    try:
        ids = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise DlsoftError(f"--gpu expects a GPU number, a comma-separated list or 'all', got '{spec}'") from None
    if not ids or any(i < 0 for i in ids):
        raise DlsoftError(f"--gpu expects non-negative GPU numbers, got '{spec}'")
    return ids


def parse_gpu(spec: str | None) -> str:
    """Caffe's ``-gpu`` value as one device: the first GPU when several are given (``train`` uses them all)."""
    ids = parse_gpus(spec)
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
