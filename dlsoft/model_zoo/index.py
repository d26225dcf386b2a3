"""Zoo indexes: how one user's published entries reach another user.

An index is a YAML file::

    dlsoft_zoo_index: 1
    entries:
      - name: lenet_mine
        description: ...
        metrics: [{name: accuracy, value: 0.99, data: ...}]
        files:
          deploy: {path: lenet_mine/deploy.prototxt, sha256: ..., size: ...}
          weights: {path: lenet_mine/lenet_mine.caffemodel, sha256: ..., size: ...}

File paths are relative to the index (or absolute URLs), so a folder holding the index
and the entry folders can be served over HTTP, shared as a directory, or used through a
``file://`` URL. The indexes a user has added are recorded in
``$DLSOFT_CONFIG/zoo_indexes.yaml`` (``$DLSOFT_CONFIG`` may also name the file itself),
else ``$XDG_CONFIG_HOME/dlsoft/zoo_indexes.yaml``, else ``~/.config/dlsoft/zoo_indexes.yaml``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import DlsoftError
from ..fileio import atomic_write_text
from .entry import Entry, check_name, check_records, dump_yaml, load_yaml
from .fetch import cache_dir, download, is_url

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
INDEX_FILE = "index.yaml"


def config_file() -> Path:
    """Where the list of added indexes is kept."""
    configured = os.environ.get("DLSOFT_CONFIG")
    if configured:
        path = Path(configured).expanduser()
        return path if path.suffix in (".yaml", ".yml") else path / "zoo_indexes.yaml"
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".config") / "dlsoft" / "zoo_indexes.yaml"


def added_indexes() -> list[str]:
    """The index locations (absolute paths or URLs) the user has added, in order."""
    path = config_file()
    if not path.is_file():
        return []
    data = load_yaml(path) or {}
    return [str(x) for x in (data.get("indexes") or [])]


def normalise_location(path_or_url: str | Path) -> str:
    """An absolute path (a zoo directory means its index.yaml) or a URL, as recorded."""
    location = str(path_or_url)
    if is_url(location):
        return location
    path = Path(location).expanduser().resolve()
    if path.is_dir():
        path = path / INDEX_FILE
    return str(path)


def add_index(path_or_url: str | Path, timeout: float = 30) -> list[Entry]:
    """Record an index in the user config (after checking it can be read); returns its entries."""
    location = normalise_location(path_or_url)
    entries = index_entries(location, refresh=True, timeout=timeout)
    indexes = added_indexes()
    if location not in indexes:
        indexes.append(location)
        atomic_write_text(config_file(), dump_yaml({"indexes": indexes}))
    return entries


def remove_index(path_or_url: str | Path) -> bool:
    """Forget an added index; True when it was recorded."""
    location = normalise_location(path_or_url)
    indexes = added_indexes()
    if location not in indexes:
        return False
    indexes.remove(location)
    atomic_write_text(config_file(), dump_yaml({"indexes": indexes}))
    return True


def index_cache_dir(location: str) -> Path:
    """Where files of an index's entries are fetched to."""
    key = hashlib.sha256(location.encode()).hexdigest()[:16]
    return cache_dir() / "zoo" / "indexes" / key


def read_index(location: str, refresh: bool = False, timeout: float = 30) -> dict:
    """The index mapping. A local path or file URL is read live; an http(s) index is cached
    when added (``refresh=True``) and read from that copy afterwards."""
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme in ("http", "https"):
        copy = index_cache_dir(location) / INDEX_FILE
        if refresh or not copy.is_file():
            fresh = copy.with_name(INDEX_FILE + ".new")
            fresh.unlink(missing_ok=True)
            download(location, fresh, timeout=timeout)
            os.replace(fresh, copy)
        path = copy
    elif scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(location).path))
    else:
        path = Path(location)
    if not path.is_file():
        raise DlsoftError(f"zoo index {location} does not exist")
    data = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("entries", []), list):
        raise DlsoftError("not a zoo index: expected a mapping with an 'entries' list", path=location)
    return data


def index_entries(location: str, refresh: bool = False, timeout: float = 30) -> list[Entry]:
    """The entries an index lists, as Entry objects whose files are relative to the index."""
    entries = []
    for i, record in enumerate(read_index(location, refresh, timeout).get("entries") or []):
        name = str(record.get("name", "")) if isinstance(record, dict) else ""
        try:
            check_name(name)
        except DlsoftError as exc:
            raise DlsoftError(f"entry {i}: {exc.detail}", path=location) from None
        check_records(record, location)
        entries.append(Entry(name=name, meta=dict(record), base=location, origin=location))
    return entries


def upsert_index_record(index_path: Path, record: dict) -> None:
    """Add (or replace, by name) ``record`` in the local index file ``index_path``."""
    data = read_index(str(index_path)) if index_path.is_file() else {}
    entries = [e for e in data.get("entries") or [] if e.get("name") != record["name"]]
    entries.append(record)
    entries.sort(key=lambda e: e["name"])
    atomic_write_text(index_path, dump_yaml({"dlsoft_zoo_index": INDEX_FORMAT, "entries": entries}))

