"""The model zoo: named, shareable nets with verified pretrained weights.

``import dlsoft; net = dlsoft.zoo.load("lenet_mnist")`` gives a ready TEST-phase Net.
``zoo:NAME`` (or ``zoo:NAME/deploy.prototxt``) works wherever a model, solver or
weights file is expected: commands pass such references through :func:`resolve`.

Entries come from the package (``dlsoft/model_zoo/entries/``) and from indexes the user
has added with :func:`add_index`. Weights an entry does not ship are downloaded, only
when asked for, into the user cache (``$DLSOFT_CACHE``, ``$XDG_CACHE_HOME/dlsoft`` or
``~/.cache/dlsoft``) and verified against their recorded checksum.

Nothing here prints: downloads report through ``progress(done_bytes, total_bytes_or_None)``.
"""
from __future__ import annotations

import difflib
import logging
import shutil
from pathlib import Path

from ..errors import DlsoftError
from ..fileio import atomic_write_text
from ..zoo_ref import is_zoo_ref, parse_zoo_ref
from .entry import (CAFFE_README, KINDS, NAME_RE, ZOO_FILE, Entry, KIND_ALIASES,
                    check_name, checksum_of, dump_yaml, file_digest, inside)
from .fetch import Progress, cache_dir, download, join_location
from .index import add_index, added_indexes, config_file, index_cache_dir, index_entries, remove_index
from .publish import publish

log = logging.getLogger(__name__)

BUILTIN_DIR = Path(__file__).resolve().parent / "entries"

__all__ = ["Entry", "list_entries", "get_entry", "resolve", "load", "copy_entry", "fetch", "publish",
           "add_index", "remove_index", "added_indexes", "is_downloaded", "local_path", "cache_dir",
           "weights_status", "summary_row", "builtin_entries", "add_weights",
           "config_file", "BUILTIN_DIR"]


# ------------------------------------------------------------------ discovery
def builtin_entries() -> list[Entry]:
    """The entries shipped in the package."""
    return [Entry.from_folder(folder, origin="builtin") for folder in sorted(BUILTIN_DIR.iterdir())
            if (folder / ZOO_FILE).is_file() or (folder / CAFFE_README).is_file()]


def list_entries() -> list[Entry]:
    """Built-in entries, then those of added indexes (a name already taken is skipped)."""
    entries = builtin_entries()
    seen = {e.name for e in entries}
    for location in added_indexes():
        try:
            from_index = index_entries(location)
        except DlsoftError as exc:  # one unreachable index must not hide the others
            log.warning("skipping zoo index %s: %s", location, exc)
            continue
        for entry in from_index:
            if entry.name in seen:
                log.warning("zoo index %s: entry '%s' is shadowed by an earlier one", location, entry.name)
                continue
            seen.add(entry.name)
            entries.append(entry)
    return entries


def get_entry(name: str) -> Entry:
    """The entry called ``name`` (``zoo:`` prefix allowed), or a folder path holding an entry."""
    name = parse_zoo_ref(name)[0] if is_zoo_ref(name) else name
    if name in (".", ".."):  # never a name; a folder is written with a separator ("../")
        raise DlsoftError(f"'{name}' is not a zoo entry name (for the folder, write '{name}/')")
    if "/" in name or not NAME_RE.match(name):
        if Path(name).is_dir():
            return Entry.from_folder(Path(name))
        raise DlsoftError(f"'{name}' is not a zoo entry name or an entry folder")
    if (BUILTIN_DIR / name).is_dir():
        return Entry.from_folder(BUILTIN_DIR / name, origin="builtin")
    entries = list_entries()
    for entry in entries:
        if entry.name == name:
            return entry
    names = [e.name for e in entries]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known entries: {', '.join(names)}"
    raise DlsoftError(f"no zoo entry named '{name}'; {hint}")


# ------------------------------------------------------------------ files
def _record(entry: Entry, key: str) -> tuple[str, dict]:
    """(role, record) for a role name or a file name of ``entry``."""
    record = entry.file_record(key)
    if record is not None:
        return KIND_ALIASES.get(key, key), record
    for role in list(entry.files) + ["weights"]:
        candidate = entry.file_record(role)
        if candidate and Path(str(candidate.get("path") or candidate.get("url", ""))).name == key:
            return role, candidate
    known = sorted(set(entry.files) | ({"weights"} if entry.file_record("weights") else set()))
    if KIND_ALIASES.get(key, key) == "weights":
        raise DlsoftError(f"zoo entry '{entry.name}' has no weights (configs only: train it from "
                          f"its solver, e.g. `dlsoft zoo get {entry.name} DIR`)")
    raise DlsoftError(f"zoo entry '{entry.name}' has no file '{key}' (it has: {', '.join(known)})")


def _cache_path(entry: Entry, record: dict) -> Path:
    file_name = Path(str(record.get("path") or record.get("url"))).name
    base = index_cache_dir(entry.base) if entry.base else cache_dir() / "zoo"
    check_name(entry.name)
    if file_name in ("", ".", ".."):
        raise DlsoftError(f"zoo entry '{entry.name}': no file name in {record}")
    base.mkdir(parents=True, exist_ok=True)
    return inside(base, base / entry.name / file_name, f"zoo entry '{entry.name}'")


_verified: set[tuple] = set()


def _check_local(path: Path, record: dict) -> None:
    """Verify a file lying in an entry folder against its record (once per process)."""
    checksum = checksum_of(record)
    if checksum is None:
        return
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return
    algorithm, expected = checksum
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DlsoftError(f"{path} does not match its recorded {algorithm} ({actual}, expected {expected}); "
                          f"the file was changed or is corrupt")
    _verified.add(key)


def local_path(entry: Entry, key: str, *, download_missing: bool = False, progress: Progress | None = None,
               timeout: float = 30, allow_unverified: bool = False) -> Path:
    """The local file of ``entry`` playing ``key`` (a role or file name).

    A file missing locally is downloaded only with ``download_missing``; otherwise a
    DlsoftError says how to fetch it. Weights without a recorded checksum are
    downloaded only with ``allow_unverified``.
    """
    role, record = _record(entry, key)
    if entry.folder is not None and record.get("path"):
        path = inside(entry.folder, entry.folder / record["path"], f"zoo entry '{entry.name}' {role}")
        if path.is_file():
            _check_local(path, record)
            return path
    location = record.get("url") or (join_location(entry.base, record["path"]) if entry.base else None)
    if location is None:
        raise DlsoftError(f"zoo entry '{entry.name}': file {record.get('path')} is missing from {entry.folder}")
    dest = _cache_path(entry, record)
    if dest.is_file():
        return dest
    if not download_missing:
        raise DlsoftError(f"the {role} of zoo entry '{entry.name}' is not downloaded yet: "
                          f"run `dlsoft zoo fetch {entry.name}`")
    if role == "weights" and checksum_of(record) is None and not allow_unverified:
        raise DlsoftError(f"the weights of zoo entry '{entry.name}' have no recorded checksum, so they "
                          f"cannot be verified: fetch them with `dlsoft zoo fetch {entry.name} "
                          "--allow-unverified` (allow_unverified=True) if you trust the source")
    return download(location, dest, record, progress=progress, timeout=timeout)


def add_weights(name: str, file: str | Path) -> Path:
    """Register weights downloaded by hand for entry ``name`` (nothing can be fetched here, say).

    The file must match the checksum the entry records for its weights; it is then
    copied to where ``fetch`` would have put it, and the entry's weights resolve to it.
    """
    entry = get_entry(name)
    _, record = _record(entry, "weights")
    source = Path(file)
    if not source.is_file():
        raise DlsoftError("no such file", path=str(source))
    checksum = checksum_of(record)
    if checksum is None:
        raise DlsoftError(f"zoo entry '{entry.name}' records no checksum for its weights: {source} cannot be checked")
    algorithm, expected = checksum
    actual = file_digest(source, algorithm)
    if actual != expected:
        raise DlsoftError(f"is not the weights of zoo entry '{entry.name}': its {algorithm} is {actual}, the "
                          f"entry's is {expected}", path=str(source))
    if entry.folder is not None and record.get("path") and (entry.folder / record["path"]).is_file():
        return entry.folder / record["path"]  # the entry ships them already
    dest = _cache_path(entry, record)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".adding")
    shutil.copyfile(source, partial)
    partial.replace(dest)
    return dest


def is_downloaded(entry: Entry, key: str = "weights") -> bool:
    """Whether the file is available locally without a download."""
    try:
        local_path(entry, key)
        return True
    except DlsoftError:
        return False


def weights_status(entry: Entry) -> str:
    """``shipped``, ``downloaded``, ``fetchable`` (a URL, not downloaded yet) or ``none``."""
    if entry.file_record("weights") is None:
        return "none"
    if not is_downloaded(entry):
        return "fetchable"
    return "shipped" if entry.ships_weights and entry.folder is not None else "downloaded"


def summary_row(entry: Entry) -> dict:
    """One row of ``zoo list``: name, task, metric, weights size in bytes (or None), weights status."""
    return {"name": entry.name, "task": entry.task, "metric": entry.metric_summary(),
            "size": entry.weights_size(), "weights": weights_status(entry)}


def resolve(ref, kind: str = "model", *, download_missing: bool | None = None,
            progress: Progress | None = None, timeout: float = 30):
    """Turn ``zoo:NAME`` or ``zoo:NAME/FILE`` into a local path; other values come back unchanged.

    ``kind`` is ``model`` (= ``deploy``), ``deploy``, ``train_val``, ``solver`` or
    ``weights``. Config files of index entries are downloaded as needed; weights are
    downloaded only because the reference asks for them (``kind="weights"`` or
    ``zoo:NAME/weights``); ``download_missing=False`` refuses any download instead.
    """
    parsed = parse_zoo_ref(ref)
    if parsed is None:
        return ref
    if KIND_ALIASES.get(kind, kind) not in KINDS:
        raise DlsoftError(f"unknown zoo file kind '{kind}' (expected model, {', '.join(KINDS)})")
    name, file_key = parsed
    entry = get_entry(name)
    download_missing = True if download_missing is None else download_missing
    return local_path(entry, file_key or kind, download_missing=download_missing, progress=progress,
                      timeout=timeout)


def fetch(name: str, progress: Progress | None = None, timeout: float = 30, allow_unverified: bool = False) -> Path:
    """Download what ``name`` needs that is not here yet (weights, and an index entry's configs).

    Returns the local weights path. Verified against the recorded checksum; a partial
    download is resumed; a mismatch is refused and nothing corrupt is kept.
    """
    entry = get_entry(name)
    for role in entry.files:
        if role != "weights":
            local_path(entry, role, download_missing=True, timeout=timeout)
    return local_path(entry, "weights", download_missing=True, progress=progress, timeout=timeout,
                      allow_unverified=allow_unverified)


def load(name: str, device="cpu", progress: Progress | None = None, timeout: float = 30):
    """The entry's deploy net in TEST phase with its weights (downloaded if needed)."""
    from ..netdef.net import Net

    entry = get_entry(name)
    deploy = local_path(entry, "deploy", download_missing=True, timeout=timeout)
    weights = local_path(entry, "weights", download_missing=True, progress=progress, timeout=timeout)
    return Net(str(deploy), phase="TEST", weights=str(weights), device=device)


def copy_entry(name: str, dest_dir: str | Path, *, weights: bool = True, fetch_weights: bool = False,
               overwrite: bool = False, progress: Progress | None = None, timeout: float = 30,
               allow_unverified: bool = False) -> list[Path]:
    """Copy an entry's configs (and weights, when here or ``fetch_weights``) to ``dest_dir``.

    The copy is an entry folder of its own (with zoo.yaml) to edit, retrain and publish.
    Refuses to overwrite existing files unless ``overwrite``. Returns the written paths.
    """
    entry = get_entry(name)
    dest = Path(dest_dir)
    sources: dict[str, Path] = {}
    weights_record = entry.file_record("weights") or {}
    weights_name = Path(str(weights_record.get("path") or weights_record.get("url", ""))).name
    if entry.folder is not None:  # a folder entry is self-contained: take all of it
        for path in sorted(entry.folder.iterdir()):
            if path.is_file() and not path.name.endswith(".part") and path.name != weights_name:
                sources[path.name] = path
    for role in list(entry.files) + ["weights"]:
        if role == "weights" and (not weights or entry.file_record("weights") is None):
            continue
        _, record = _record(entry, role)
        file_name = Path(str(record.get("path") or record.get("url"))).name
        if file_name in sources:
            continue
        try:
            sources[file_name] = local_path(entry, role, download_missing=role != "weights" or fetch_weights,
                                            progress=progress, timeout=timeout,
                                            allow_unverified=allow_unverified)
        except DlsoftError:
            if role != "weights":
                raise
            log.info("weights of '%s' are not downloaded: copied configs only", entry.name)
    clashes = [n for n in sources if (dest / n).exists()]
    if clashes and not overwrite:
        raise DlsoftError(f"{dest} already holds {', '.join(clashes)}; choose another folder or overwrite")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, source in sources.items():
        shutil.copyfile(source, dest / file_name)
        written.append(dest / file_name)
    if entry.folder is None:  # an index record: write it as the copy's zoo.yaml
        meta = dict(entry.meta)
        meta["files"] = {role: {**rec, "path": Path(str(rec.get("path") or rec.get("url"))).name}
                         for role, rec in entry.files.items()}
        for rec in meta["files"].values():
            rec.pop("url", None)
        atomic_write_text(dest / ZOO_FILE, dump_yaml(meta))
        written.append(dest / ZOO_FILE)
    return written
