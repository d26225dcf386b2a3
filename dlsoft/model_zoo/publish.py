"""Publishing an entry folder: validate it, record checksums, add it to an index.

The folder holds the configs, the weights and a draft ``zoo.yaml`` (at least
``metrics``: what the weights reach and on what data) or Caffe's ``readme.md``.
Publishing checks that the configs parse and that the weights load into the deploy
net, then writes the completed ``zoo.yaml`` and adds the entry to an index file
(by default ``index.yaml`` next to the folder: the folder's parent is then a zoo
directory another user can add with ``dlsoft zoo add-index``).
"""
from __future__ import annotations

import numbers
import os
from pathlib import Path

from ..errors import DlsoftError
from ..fileio import atomic_write_text
from .entry import DEFAULT_FILES, NAME_RE, ZOO_FILE, Entry, dump_yaml, file_digest
from .index import INDEX_FILE, upsert_index_record

WEIGHT_SUFFIXES = (".caffemodel", ".h5")


def publish(entry_dir: str | Path, index: str | Path | None = None, onnx: bool = False) -> Entry:
    """Validate ``entry_dir``, write its zoo.yaml with checksums, and add it to ``index``.

    ``onnx``: also export the deploy net with its weights to ``<weights stem>.onnx`` beside
    the weights, recorded (and checksummed) as the entry's ``onnx`` file.

    Returns the published Entry. Raises DlsoftError naming what is missing or wrong.
    """
    import dlsoft
    from ..netdef.io import read_net, read_solver
    from ..netdef.net import Net

    folder = Path(entry_dir).resolve()
    draft = Entry.from_folder(folder)
    meta = dict(draft.meta)
    where = str(folder / ZOO_FILE)
    if not NAME_RE.match(draft.name):
        raise DlsoftError(f"entry name {draft.name!r} must be letters, digits, '_', '.' or '-'", path=where)

    files = {role: dict(rec) for role, rec in draft.files.items()}
    if meta.get("weights") is False:  # a Caffe readme whose weights are now here
        meta.pop("weights")
    if "weights" not in files:
        candidates = sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        if len(candidates) != 1:
            found = f"found {', '.join(candidates)}" if candidates else "found none"
            raise DlsoftError(f"publish needs exactly one weights file ({'/'.join(WEIGHT_SUFFIXES)}) "
                              f"or files: weights: path: in {ZOO_FILE}; {found}", path=str(folder))
        files["weights"] = {"path": candidates[0]}
    for role in ("deploy", "weights"):
        if role not in files:
            raise DlsoftError(f"publish needs a {role} file ({DEFAULT_FILES.get(role, 'files: ' + role)})",
                              path=str(folder))
    for role, record in files.items():
        if "path" not in record or not (folder / record["path"]).is_file():
            raise DlsoftError(f"files: {role}: {record.get('path')!r} is not a file in the entry", path=where)

    # Configs parse, and the weights fit the deploy net.
    for role in ("deploy", "train_val"):
        if role in files:
            read_net(folder / files[role]["path"])
    if "solver" in files:
        read_solver(folder / files["solver"]["path"])
    try:
        Net(str(folder / files["deploy"]["path"]), phase="TEST",
            weights=str(folder / files["weights"]["path"])).close()
    except DlsoftError as exc:
        raise DlsoftError(f"the weights do not load into the deploy net: {exc}", path=str(folder)) from None
    if onnx:
        from ..onnx import export_files
        onnx_path = (folder / files["weights"]["path"]).with_suffix(".onnx")
        try:
            export_files(folder / files["deploy"]["path"], folder / files["weights"]["path"], onnx_path)
        except DlsoftError as exc:
            raise DlsoftError(f"--onnx: {exc.detail}", path=str(folder)) from None
        files["onnx"] = {"path": onnx_path.relative_to(folder).as_posix()}

    metrics = draft.metrics
    if not metrics or not all(isinstance(m, dict) and m.get("name") and isinstance(m.get("value"), numbers.Number)
                              and m.get("data") for m in metrics):
        raise DlsoftError("metrics: record what the weights reach and on what data, e.g. "
                          "[{name: accuracy, value: 0.98, data: 'digits test split (1,000)'}]", path=where)

    for record in files.values():
        path = folder / record["path"]
        record.pop("sha1", None)
        record["sha256"] = file_digest(path)
        record["size"] = path.stat().st_size
    meta["files"] = files
    meta["metrics"] = metrics
    meta.setdefault("produced_by", {}).setdefault("dlsoft_version", dlsoft.__version__)
    meta["published_with"] = f"dlsoft {dlsoft.__version__}"
    atomic_write_text(folder / ZOO_FILE, dump_yaml(meta))

    index_path = Path(index).resolve() if index is not None else folder.parent / INDEX_FILE
    record = dict(meta)
    record["files"] = {role: {**rec, "path": _relative(folder / rec["path"], index_path.parent)}
                       for role, rec in files.items()}
    upsert_index_record(index_path, record)
    return Entry.from_folder(folder)


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start``, with '/' separators (it is joined to URLs too)."""
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive on Windows: only an absolute URL reaches it
        return path.as_uri()


def record_checksums(entry_dir: str | Path) -> Entry:
    """Fill in sha256 and size of every file the entry in ``entry_dir`` names, in its zoo.yaml.

    Unlike :func:`publish` this checks nothing and touches no index: it is how a built-in
    entry's record is refreshed after its files change (e.g. by scripts/train_zoo_entry.py).
    """
    folder = Path(entry_dir)
    entry = Entry.from_folder(folder)
    meta = dict(entry.meta)
    files = {}
    for role, record in entry.files.items():
        path = folder / record["path"]
        files[role] = {**record, "sha256": file_digest(path), "size": path.stat().st_size}
    meta["files"] = files
    atomic_write_text(folder / ZOO_FILE, dump_yaml(meta))
    return Entry.from_folder(folder)
