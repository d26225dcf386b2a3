"""``dlsoft optimize``: the deploy-net optimiser of :mod:`dlsoft.netdef.optimize` as a command."""
from __future__ import annotations

import click

from .app import cli, command
from .options import require_file, resolve


@command(cli, "optimize", epilog="""
\b
Example:
  dlsoft optimize deploy.prototxt model.caffemodel optimized/
""")
@click.argument("model", metavar="NET")
@click.argument("weights", metavar="WEIGHTS")
@click.argument("outdir", metavar="OUTDIR")
def optimize_command(model, weights, outdir):
    """Fold BatchNorm+Scale into Convolution/InnerProduct, drop Dropout/Split (TEST net): writes
    OUTDIR/<net>.prototxt and OUTDIR/<weights>.caffemodel, which Caffe and OpenCV read."""
    from ..netdef.optimize import optimize_files

    net_path, weights_path, report = optimize_files(require_file(resolve(model, "model"), "net file"),
                                                    require_file(resolve(weights, "weights"), "weights file"),
                                                    outdir)
    click.echo(report.format())
    click.echo(f"Wrote {net_path} and {weights_path}")
