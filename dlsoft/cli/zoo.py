"""``dlsoft zoo``: list, show, get, fetch, publish and add-index."""
from __future__ import annotations

import sys

import click

from .app import CONTEXT_SETTINGS, cli, command, settings

# ============================================================================ zoo
@cli.group("zoo", cls=click.Group, context_settings=CONTEXT_SETTINGS, no_args_is_help=True, epilog="""
\b
Examples:
  dlsoft zoo list
  dlsoft zoo show lenet_mnist
  dlsoft zoo get lenet_mnist my_lenet
  dlsoft train zoo:lenet_mnist
""")
def zoo_group():
    """Named nets with verified pretrained weights: list, inspect, copy, fetch, publish."""


def progress_bar():
    """A download progress callback drawing a click progress bar (none with --quiet)."""
    if settings.quiet:
        return None, lambda: None
    state: dict = {}

    def progress(done: int, total: int | None) -> None:
        if "bar" not in state:
            state["bar"] = click.progressbar(length=total or 0, label="downloading", file=sys.stderr)
            state["bar"].__enter__()
            state["done"] = 0
        state["bar"].update(done - state["done"])
        state["done"] = done

    def close() -> None:
        if "bar" in state:
            state["bar"].__exit__(None, None, None)
    return progress, close


def _size(value) -> str:
    if not value:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


@command(zoo_group, "list", epilog="\b\nExample:\n  dlsoft zoo list")
def zoo_list_command():
    """List the zoo's entries: task, metric, weights size and whether they are here."""
    from .. import model_zoo

    rows = [("name", "task", "metric", "weights", "size")]
    for entry in model_zoo.list_entries():
        row = model_zoo.summary_row(entry)
        rows.append((row["name"], row["task"], row["metric"] or "-", row["weights"], _size(row["size"])))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@command(zoo_group, "show", epilog="\b\nExample:\n  dlsoft zoo show lenet_mnist")
@click.argument("name")
def zoo_show_command(name):
    """Show everything recorded about an entry (files, checksums, metrics, licence)."""
    from .. import model_zoo
    from ..model_zoo.entry import dump_yaml

    entry = model_zoo.get_entry(name)
    info = entry.to_dict()
    info["weights_status"] = model_zoo.weights_status(entry)
    click.echo(dump_yaml(info).rstrip())


@command(zoo_group, "get", epilog="\b\nExample:\n  dlsoft zoo get lenet_mnist my_lenet")
@click.argument("name")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--fetch", "fetch_weights", is_flag=True, help="Download the weights if they are not here yet.")
@click.option("--no-weights", is_flag=True, help="Copy the configs only.")
@click.option("--overwrite", is_flag=True, help="Replace files already in DEST.")
@click.option("--allow-unverified", is_flag=True,
              help="With --fetch: accept weights that have no recorded checksum.")
def zoo_get_command(name, dest, fetch_weights, no_weights, overwrite, allow_unverified):
    """Copy an entry's files into DEST, to edit, retrain or publish."""
    from .. import model_zoo

    progress, close = progress_bar()
    try:
        written = model_zoo.copy_entry(name, dest, weights=not no_weights, fetch_weights=fetch_weights,
                                       overwrite=overwrite, progress=progress, allow_unverified=allow_unverified)
    finally:
        close()
    for path in written:
        click.echo(f"Wrote {path}")


@command(zoo_group, "fetch", epilog="\b\nExample:\n  dlsoft zoo fetch bvlc_alexnet")
@click.argument("name")
@click.option("--timeout", type=float, default=30, show_default=True, help="Network timeout in seconds.")
@click.option("--allow-unverified", is_flag=True,
              help="Accept weights that have no recorded checksum (refused otherwise).")
def zoo_fetch_command(name, timeout, allow_unverified):
    """Download an entry's weights (verified against their checksum) into the cache."""
    from .. import model_zoo

    progress, close = progress_bar()
    try:
        path = model_zoo.fetch(name, progress=progress, timeout=timeout, allow_unverified=allow_unverified)
    finally:
        close()
    click.echo(f"Weights of {name}: {path}")


@command(zoo_group, "add-weights", epilog="""
\b
Example (a BVLC caffemodel downloaded by hand):
  dlsoft zoo add-weights bvlc_alexnet ~/Downloads/bvlc_alexnet.caffemodel
""")
@click.argument("name")
@click.argument("file", metavar="FILE")
def zoo_add_weights_command(name, file):
    """Use weights you downloaded yourself for an entry, checked against the entry's recorded checksum."""
    from .. import model_zoo

    path = model_zoo.add_weights(name, file)
    click.echo(f"Weights of {name}: {path} (checksum verified)")


@command(zoo_group, "publish", epilog="\b\nExample:\n  dlsoft zoo publish my_lenet --index my_zoo/index.yaml")
@click.argument("entry_dir", type=click.Path(file_okay=False))
@click.option("--index", "index", metavar="FILE", help="Index file to add the entry to (default: index.yaml "
                                                        "next to the folder).")
@click.option("--onnx", "onnx", is_flag=True, help="Also export the deploy net to ONNX beside the weights "
                                                   "(needs dlsoft[onnx]).")
def zoo_publish_command(entry_dir, index, onnx):
    """Validate an entry folder, record its checksums, and add it to an index."""
    from .. import model_zoo

    entry = model_zoo.publish(entry_dir, index=index, onnx=onnx)
    click.echo(f"Published {entry.name} from {entry_dir}")


@command(zoo_group, "add-index", epilog="\b\nExample:\n  dlsoft zoo add-index https://example.org/zoo/index.yaml")
@click.argument("location")
def zoo_add_index_command(location):
    """Add a zoo index (a path or URL) so its entries can be used by name."""
    from .. import model_zoo

    entries = model_zoo.add_index(location)
    click.echo(f"Added index {location} ({len(entries)} entries: "
               f"{', '.join(e.name for e in entries) or 'none'})")
