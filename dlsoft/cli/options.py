"""Helpers and options shared by the commands: zoo references, --gpu, --phase, --stage, --level."""
from __future__ import annotations

import os

import click

from ..errors import DlsoftError
from .app import log

ZOO_PREFIX = "zoo:"


# ============================================================================ shared helpers
def resolve(ref: str | None, kind: str) -> str | None:
    """A local path for ``ref``: ``zoo:`` references go through the model zoo, others come back as they are."""
    if ref is None or not ref.startswith(ZOO_PREFIX):
        return ref
    from .. import model_zoo

    return str(model_zoo.resolve(ref, kind))


def require_file(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise DlsoftError(f"{what} not found", path=path)
    if os.path.isdir(path):
        raise DlsoftError(f"{what} is a directory, not a file", path=path)
    return path


def parse_gpu(spec: str | None) -> str:
    """Caffe's ``-gpu`` value (``0``, ``1,2`` or ``all``) as a device: the first GPU (multi-GPU is not supported)."""
    if spec is None or spec == "":
        return "cpu"
    from ..backend import gpu_count

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


def phase_option(default: str, allow_all: bool = False):
    choices = ["TRAIN", "TEST"] + (["ALL"] if allow_all else [])
    return click.option("--phase", "-phase", "phase", type=click.Choice(choices, case_sensitive=False),
                        default=default, show_default=True, help="Which phase's layers to use.")


gpu_option = click.option("--gpu", "-gpu", "gpu", metavar="N|N,M|all",
                           help="Run on this GPU (Caffe's -gpu); the first one when several are given.")

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
