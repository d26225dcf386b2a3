"""The ``dlsoft`` command line: Caffe's ``caffe`` tool and its companions, as subcommands.

Caffe's flags keep working with their single-dash spellings (``dlsoft train -solver
s.prototxt -gpu 0``), next to the usual ``--solver``. Every file argument also accepts
a model-zoo reference (``zoo:lenet_mnist``, ``zoo:lenet_mnist/deploy.prototxt``).

A user mistake (missing file, bad flag, parse error, any DlsoftError) ends the command
with exit status 2 and one line ``error: ...`` on stderr; ``--debug`` adds the
traceback. Log lines (Caffe's format) go to stderr and to ``--log-file``; ``--quiet``
leaves only errors and the final results (on stdout).

Layout: ``app`` (the group, global flags declared once, logging, errors), ``options``
(shared helpers and options), ``configure`` (solver settings from flags), and one module
per group of commands: ``train`` (train/test/time), ``tools`` (convert, convert-imageset,
compute-mean, convert-mnist), ``zoo`` and ``inspection`` (device-query, draw, plot,
summary, layers).

Adding a command, from any module imported below (or imported before ``main`` runs)::

    from dlsoft.cli import cli, command

    @command(cli, "my-command", epilog="Example: dlsoft my-command x")
    @click.argument("x")
    def my_command(x):
        '''One line of help.'''

``command`` gives it the global flags (--debug/--quiet/--log-file, also accepted after
the subcommand), logging and the one-line error handling.
"""
from __future__ import annotations

from .app import cli, command, main, settings

# Each module registers its commands on import.
from . import inspection, onnx_commands, tools, train, zoo  # noqa: E402,F401  isort: skip

__all__ = ["cli", "command", "main", "settings"]
