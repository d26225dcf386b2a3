"""Looking at nets and runs: ``device-query``, ``draw``, ``plot``, ``summary``, ``layers``."""
from __future__ import annotations

import os
import platform

import click

from ..errors import DlsoftError
from .app import cli, command
from .options import (
    level_option, net_file, phase_option, pick_net, require_file, resolve, stage_names, stage_option,
)

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

    from ..backend import gpu_count

    lines = [(f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores), "
              f"{platform.system()} {platform.release()}"),
             f"numpy {np.__version__}, BLAS: {_blas_name()}"]
    count = gpu_count()
    if count == 0:
        lines.append("GPU: none (CPU only; for GPUs install dlsoft[gpu] on a machine with an NVIDIA GPU)")
        if only_gpu is not None:
            raise DlsoftError(f"--gpu {only_gpu}: no GPU is available")
        return lines
    from ..backend import cupy_module

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
@click.argument("model", metavar="NET", required=False)
@click.argument("out", metavar="OUT.{dot,svg,png,pdf}", required=False)
@click.option("--model", "-model", "model_option", metavar="FILE", help="The net (instead of NET).")
@phase_option("TRAIN", allow_all=True)
@click.option("--rankdir", "-rankdir", "rankdir", type=click.Choice(["LR", "RL", "TB", "BT"]), default="LR",
              show_default=True, help="Direction of the graph.")
@click.option("--shapes/--no-shapes", default=True, show_default=True,
              help="Build the net to show blob shapes and parameter counts.")
def draw_command(model, out, model_option, phase, rankdir, shapes):
    """Draw the net's graph: DOT always; SVG/PNG/PDF with Graphviz's `dot` installed."""
    from ..netdef.draw import draw_net

    if model_option and out is None:  # `draw --model NET OUT`: the one argument is OUT
        model, out = None, model
    model = pick_net(model, model_option)
    if out is None:
        raise click.UsageError("no output file given: dlsoft draw NET OUT.{dot,svg,png,pdf}")
    path = draw_net(net_file(resolve(model, "model"), "draw"), out, phase=phase, rankdir=rankdir, shapes=shapes)
    click.echo(f"Wrote {path}")


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
    from ..plot import load_curves, plot_curves

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
@click.argument("model", metavar="NET", required=False)
@click.option("--model", "-model", "model_option", metavar="FILE", help="The net (instead of NET).")
@phase_option("TRAIN")
@click.option("--weights", "-weights", "weights", metavar="FILE", help="Load weights (checks they fit).")
@stage_option
@level_option
def summary_command(model, model_option, phase, weights, stages, level):
    """Print the layer table: top shapes and parameter counts."""
    from ..netdef.net import Net

    model = pick_net(model, model_option)
    weights_path = require_file(resolve(weights, "weights"), "weights file") if weights else None
    with Net(net_file(resolve(model, "model"), "summary"), phase=phase.upper(), weights=weights_path, stages=stage_names(stages),
             level=level) as net:
        click.echo(net.summary())


@command(cli, "layers", epilog="""
\b
Example:
  dlsoft layers --verbose
""")
@click.option("--verbose", "-v", is_flag=True, help="Also show each layer's one-line description.")
def layers_command(verbose):
    """List every layer type dlsoft has (Caffe's type names) and where each comes from.

    A type is built in, comes from a plugin package (an installed distribution with an
    entry point in the group 'dlsoft.layers'), or from a Python module that registered it.
    """
    from ..layers.registry import layer_class, layer_origin, registered_types

    types = registered_types()
    width = max(len(t) for t in types)
    origins = {name: layer_origin(name) for name in types}
    origin_width = max(len(o) for o in origins.values())
    for name in types:
        line = f"{name.ljust(width)}  {origins[name]}"
        if verbose:
            try:
                doc = (layer_class(name).__doc__ or "").strip().splitlines()
            except DlsoftError as exc:  # a plugin that does not load: say so in its row
                doc = [f"(does not load: {exc.detail})"]
            line = f"{name.ljust(width)}  {origins[name].ljust(origin_width)}  {doc[0] if doc else ''}"
        click.echo(line.rstrip())
