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
@click.option("--to", "to", type=click.Choice(["auto", "text", "yaml", "binary"]), default="auto", show_default=True,
              help="Write OUT in this encoding whatever its extension (auto: by the extension).")
def convert_command(source, dest, kind, with_blobs, to):
    """Convert a net or solver between prototxt, YAML and binary; upgrade Caffe's legacy (V1) forms.

    The format follows each file's extension (.prototxt/.txt text, .yaml/.yml YAML,
    .caffemodel/.pb binary). Writing a caffemodel's definition as text drops its
    weights, unless --with-blobs.
    """
    from ..netdef import io

    source_path = resolve(source, "model")
    message, what = _read_net_or_solver(source_path, kind)
    out_format = io.file_format(dest) if to == "auto" else to
    if what == "net" and out_format != "binary" and not with_blobs:
        dropped = sum(1 for layer in message.layer if layer.blobs)
        for layer in message.layer:
            layer.ClearField("blobs")
        if dropped:
            log.info("dropped the weights of %d layers (use --with-blobs to keep them)", dropped)
    if what == "solver" and out_format == "binary":
        raise DlsoftError(f"{dest}: solvers are written as text or YAML, not binary")
    if to == "auto":
        io.write_message(message, dest)
    else:
        data = {"binary": lambda: message.SerializeToString(),
                "yaml": lambda: io.message_to_yaml(message).encode("utf-8"),
                "text": lambda: str(message).encode("utf-8")}[to]()
        io.atomic_write_bytes(dest, data)
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


@command(cli, "convert-annoset", epilog="""
\b
Example (SSD's convert_annoset, VOC XML annotations):
  dlsoft convert-annoset VOCdevkit/ trainval.txt trainval_lmdb --label-map-file labelmap_voc.prototxt
""")
@click.argument("root", type=click.Path(file_okay=False))
@click.argument("list_file", metavar="LIST")
@click.argument("db_path", metavar="DB")
@click.option("--label-map-file", "--label_map_file", "-label_map_file", "label_map_file", required=True,
              metavar="FILE", help="LabelMap prototxt naming the classes.")
@click.option("--label-type", "--label_type", "-label_type", "label_type", type=click.Choice(["xml", "txt"]),
              default="xml", show_default=True, help="Annotation files: PASCAL VOC XML or 'label x1 y1 x2 y2' lines.")
@click.option("--anno-type", "--anno_type", "-anno_type", "anno_type", type=click.Choice(["detection"]),
              default="detection", show_default=True, help="Annotation type (boxes).")
@click.option("--resize-height", "--resize_height", "-resize_height", "resize_height", type=int, default=0)
@click.option("--resize-width", "--resize_width", "-resize_width", "resize_width", type=int, default=0)
@click.option("--encoded/--raw", "-encoded", "encoded", default=True, show_default=True,
              help="Store JPEG/PNG bytes (SSD's default) or raw pixels.")
@click.option("--encode-type", "--encode_type", "-encode_type", "encode_type", default="jpg", show_default=True)
@click.option("--shuffle", "-shuffle", "shuffle", is_flag=True, help="Shuffle the list first (seeded by --seed).")
@click.option("--seed", type=int, default=None, help="Seed of the shuffle.")
@_backend_option
def convert_annoset_command(root, list_file, db_path, label_map_file, label_type, anno_type, resize_height,
                            resize_width, encoded, encode_type, shuffle, seed, backend):
    """SSD's convert_annoset: `image annotation` lines into an LMDB of AnnotatedDatum (images with boxes)."""
    from ..data.annotated import convert_annoset

    _lmdb_only(backend)
    if seed is not None:
        from ..random import set_seed
        set_seed(seed)
    require_file(list_file, "list file")
    require_file(label_map_file, "label map")
    count = convert_annoset(root, list_file, db_path, label_map_file, label_type, resize_height, resize_width,
                            encoded, encode_type, shuffle)
    click.echo(f"Wrote {count} annotated images to {db_path}")


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


# ============================================================================ extract-features
@command(cli, "extract-features", epilog="""
\b
Caffe's argument order (extract_features works as a name too):
  dlsoft extract-features WEIGHTS NET BLOB[,BLOB] DB[,DB] NUM_BATCHES [lmdb] [CPU|GPU] [DEVICE_ID]
\b
Examples:
  dlsoft extract-features lenet.caffemodel lenet_train_test.prototxt ip1,ip2 ip1_lmdb,ip2_lmdb 10 lmdb
  dlsoft extract-features --weights lenet.caffemodel --model lenet_train_test.prototxt ip1 ip1_lmdb 10
""")
@click.argument("args", nargs=-1, metavar="[WEIGHTS NET] BLOBS DBS NUM_BATCHES [DB_TYPE] [CPU|GPU] [DEVICE_ID]")
@click.option("--model", "-model", "model_option", metavar="FILE", help="The net (instead of the NET argument).")
@click.option("--weights", "-weights", "weights_option", metavar="FILE",
              help="The trained weights (instead of the WEIGHTS argument).")
def extract_features_command(args, model_option, weights_option):
    """Write blobs' values for NUM_BATCHES batches of the TEST net into LMDBs, as Caffe's extract_features.

    Each image's features become one Datum (channels = features per image, height = width
    = 1, float_data) keyed by its 10-digit index, one database per blob.
    """
    import numpy as np

    from ..backend import to_numpy
    from ..data.lmdb_io import LMDBWriter
    from ..netdef.net import Net
    from ..protos import caffe_pb2
    from .options import net_file, parse_gpu

    args = list(args)
    needed = 3 + (weights_option is None) + (model_option is None)
    if len(args) < needed:
        raise click.UsageError(f"extract-features needs {needed} arguments before the optional ones, got {len(args)}: "
                               "WEIGHTS NET BLOBS DBS NUM_BATCHES (or --weights/--model with BLOBS DBS NUM_BATCHES)")
    weights = weights_option or args.pop(0)
    model = model_option or args.pop(0)
    blobs, dbs = args.pop(0).split(","), args.pop(0).split(",")
    try:
        batches = int(args.pop(0))
    except ValueError:
        raise click.UsageError("NUM_BATCHES must be a whole number") from None
    db_type = args.pop(0).lower() if args else "lmdb"
    mode = args.pop(0).upper() if args else "CPU"
    device_id = args.pop(0) if args else "0"
    if args:
        raise click.UsageError(f"unexpected extra arguments: {' '.join(args)}")
    _lmdb_only(db_type)
    if mode not in ("CPU", "GPU"):
        raise click.UsageError(f"the mode must be CPU or GPU, got '{mode}'")
    if len(blobs) != len(dbs):
        raise click.UsageError(f"{len(blobs)} blob name(s) but {len(dbs)} database name(s): give one database per blob")
    weights_path = require_file(resolve(weights, "weights"), "weights file")
    model_path = net_file(resolve(model, "train_val"), "extract-features")
    net = Net(model_path, phase="TEST", weights=weights_path,
              device=parse_gpu(device_id, "GPU mode") if mode == "GPU" else "cpu")
    try:
        missing = [b for b in blobs if b not in net.blobs]
        if missing:
            raise DlsoftError(f"net '{net.name}' has no blob {', '.join(map(repr, missing))} "
                              f"(its blobs: {', '.join(net.blobs)})", path=model_path)
        writers = [LMDBWriter(db) for db in dbs]
        index = 0
        try:
            for _ in range(batches):
                net.forward()
                values = [to_numpy(net.blobs[b].data) for b in blobs]
                for n in range(values[0].shape[0]):
                    for writer, value in zip(writers, values):
                        features = np.asarray(value[n], dtype=np.float32).ravel()
                        datum = caffe_pb2.Datum(channels=features.size, height=1, width=1)
                        datum.float_data.extend(features.tolist())
                        writer.put(f"{index + n:010d}", datum)
                index += values[0].shape[0]
                log.info("Extracted features of %d query images for %d feature blob(s)", index, len(blobs))
        finally:
            for writer in writers:
                writer.close()
    finally:
        net.close()
    click.echo(f"Wrote the features of {index} images: " + ", ".join(f"{b} -> {d}" for b, d in zip(blobs, dbs)))
