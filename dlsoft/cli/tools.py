"""File and dataset tools: ``convert`` (prototxt/YAML/binary), ``convert-imageset``, ``compute-mean``,
``convert-mnist``.
"""
from __future__ import annotations

import os

import click

from ..errors import DlsoftError
from .app import cli, command, log
from .options import require_file, resolve

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
    from ..netdef import io

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
    from ..errors import ParseError
    from ..netdef import io

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
    from ..data.tools import convert_imageset

    _lmdb_only(backend)
    if seed is not None:
        from ..random import set_seed
        set_seed(seed)
    require_file(list_file, "list file")
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
    from ..data.tools import compute_image_mean

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
    from ..data.tools import convert_mnist

    _lmdb_only(backend)
    require_file(images, "images file")
    require_file(labels, "labels file")
    count = convert_mnist(images, labels, db_path)
    click.echo(f"Wrote {count} images to {db_path}")
