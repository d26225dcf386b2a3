"""``dlsoft export`` and ``dlsoft import``: a Caffe net to ONNX and back (needs dlsoft[onnx])."""
from __future__ import annotations

import click

from .app import cli, command
from .options import require_file, resolve


@command(cli, "export", epilog="""
\b
Examples:
  dlsoft export deploy.prototxt weights.caffemodel model.onnx
  dlsoft export zoo:lenet_mnist/deploy.prototxt zoo:lenet_mnist lenet.onnx --static-batch
  dlsoft export ssd_deploy.prototxt ssd.caffemodel ssd.onnx --output mbox_loc --output mbox_conf_flatten
""")
@click.argument("model", metavar="NET.prototxt")
@click.argument("weights", metavar="WEIGHTS.caffemodel")
@click.argument("output", metavar="OUT.onnx", type=click.Path(dir_okay=False))
@click.option("--static-batch", is_flag=True, help="Fix the batch size to the net's (default: a symbolic 'batch').")
@click.option("--output", "-o", "outputs", multiple=True, metavar="BLOB",
              help="Cut the graph at this blob (repeatable; default: the net's outputs).")
def export_command(model, weights, output, static_batch, outputs):
    """Export a deploy net and its weights to ONNX (opset 17), with Caffe's exact semantics.

    The inputs are the net's Input layer tops, the outputs its output blobs; onnxruntime
    computes what dlsoft computes. A layer with no ONNX form stops the export, naming it.
    """
    from ..onnx import export_files

    model = require_file(resolve(model, "deploy"), "net definition")
    weights = require_file(resolve(weights, "weights"), "weights file")
    result = export_files(model, weights, output, static_batch=static_batch, outputs=list(outputs) or None)
    graph = result.graph
    click.echo(f"Wrote {output} (ONNX opset {result.opset_import[0].version}, {len(graph.node)} nodes; inputs: "
               f"{', '.join(v.name for v in graph.input)}; outputs: {', '.join(v.name for v in graph.output)})")


@command(cli, "import", epilog="""
\b
Example:
  dlsoft import resnet18.onnx resnet18/
""")
@click.argument("model", metavar="MODEL.onnx")
@click.argument("outdir", metavar="OUTDIR", type=click.Path(file_okay=False))
@click.option("--name", metavar="NAME", help="Base name of the written files (default: the model file's).")
def import_command(model, outdir, name):
    """Write OUTDIR/NAME.prototxt and NAME.caffemodel for an ONNX model.

    Graphs of Conv, ConvTranspose, Gemm, MatMul(+Add), MaxPool/AveragePool/Global*Pool,
    Relu/LeakyRelu/PRelu/Elu/Sigmoid/Tanh, BatchNormalization, Add/Mul/Max/Sum, Concat,
    Split, Reshape/Flatten/Transpose, Softmax, LRN, Dropout and Pad (folded into Conv or
    average pooling) import; any other operator stops the import, naming the node.
    """
    from ..onnx import import_model

    prototxt, caffemodel = import_model(require_file(model, "ONNX model"), outdir, name=name)
    click.echo(f"Wrote {prototxt} and {caffemodel}")
