"""What a zoo entry is: a folder (or an index record) describing a net and its weights.

An entry folder holds ``zoo.yaml``::

    name: lenet_mnist
    description: Caffe's LeNet trained on the bundled digits.
    task: image classification (10 classes)
    input: {blob: data, shape: [N, 1, 28, 28], preprocessing: {scale: 0.00390625, ...}}
    outputs: [prob]
    licence: BSD-2-Clause
    files:                      # role -> file; sha256 and size let anyone verify them
      deploy: {path: deploy.prototxt, sha256: ..., size: 1234}
      weights: {path: lenet_mnist.caffemodel, sha256: ..., size: 1724512}
    metrics:                    # what the weights reach, and on what data
      - {name: accuracy, value: 0.99, data: bundled digits test split (1,000 images)}
    produced_by: {dlsoft_version: 0.1.0, command: python scripts/train_zoo_entry.py lenet_mnist}
    weights: false              # only for entries that ship no weights; then
    fetch: {url: http://..., path: x.caffemodel, sha1: ...}   # says where they are

A folder holding Caffe's ``readme.md`` with YAML front matter (``name``, ``caffemodel``,
``caffemodel_url``, ``sha1``, ``license``) is read as an entry too. An index record (see
``index.py``) has the same fields, its file paths relative to the index.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import yaml

from ..errors import DlsoftError, one_line

ZOO_FILE = "zoo.yaml"
CAFFE_README = "readme.md"
#: The roles a file can play in an entry; ``model`` is another name for ``deploy``.
KINDS = ("deploy", "train_val", "solver", "weights")
KIND_ALIASES = {"model": "deploy", "caffemodel": "weights"}
#: File names a folder's files get when zoo.yaml does not name them.
DEFAULT_FILES = {"deploy": "deploy.prototxt", "train_val": "train_val.prototxt",
                 "solver": "solver.prototxt"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(name: str, where: str | None = None) -> str:
    """``name`` if it is a valid entry name: it becomes a folder of the cache, so no separators, no ``..``."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise DlsoftError(f"entry name {name!r} is not allowed: use letters, digits and '_', '.', '-' "
                          "(no path separators, no '..')", path=where)
    return name


def check_relative_path(value, what: str, where: str | None = None) -> str:
    """``value`` if it is a relative path that stays below its folder (no absolute path, no ``..``)."""
    text = str(value) if value is not None else ""
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not text or PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() \
            or PureWindowsPath(text).drive or ".." in parts:
        raise DlsoftError(f"{what}: path {text!r} is not allowed: it must be relative to the entry "
                          "(or index) folder and stay inside it (not absolute, no '..')", path=where)
    return text


def inside(root: Path, path: Path, what: str) -> Path:
    """``path`` if it resolves (links followed) to a place under ``root``; else a DlsoftError."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise DlsoftError(f"{what}: {path} resolves to {resolved}, outside {base}; refused")
    return path


def check_records(meta: dict, where: str | None, remote: bool = False) -> None:
    """Validate every file record of an entry: paths relative and inside, URLs http(s) only.

    ``file://`` URLs and absolute paths are refused everywhere: an entry (or an index
    someone shares) must not make the zoo copy local files into the cache.
    """
    name = meta.get("name", "?")
    records = [(f"entry '{name}' file '{role}'", rec) for role, rec in dict(meta.get("files") or {}).items()]
    if meta.get("fetch"):
        records.append((f"entry '{name}' fetch", meta["fetch"]))
    for what, record in records:
        if not isinstance(record, dict):
            raise DlsoftError(f"{what}: expected a mapping with path/url, sha256 and size", path=where)
        if record.get("path") is not None:
            check_relative_path(record["path"], what, where)
        url = record.get("url")
        if url is not None:
            scheme = str(url).split(":", 1)[0].lower() if ":" in str(url) else ""
            if scheme not in ("http", "https"):
                raise DlsoftError(f"{what}: url {url!r} is not allowed: only http:// and https:// URLs "
                                  "(not file:// or local paths)", path=where)
        size = record.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise DlsoftError(f"{what}: size {size!r} is not a byte count", path=where)


def canonical_kind(kind: str) -> str:
    kind = KIND_ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise DlsoftError(f"unknown zoo file kind '{kind}' (expected one of: model, {', '.join(KINDS)})")
    return kind


@dataclass
class Entry:
    """One zoo entry.

    ``meta`` is the zoo.yaml mapping. ``folder`` is where the entry's files lie when it
    is a local folder (built-in, or read from a path); ``base`` is the index location
    (path or URL) its file paths are relative to when it comes from an index.
    ``origin`` says where it came from: ``builtin``, a folder path, or an index location.
    """

    name: str
    meta: dict
    folder: Path | None = None
    base: str | None = None
    origin: str = "builtin"

    # ----------------------------------------------------------------- fields
    @property
    def description(self) -> str:
        return str(self.meta.get("description", "")).strip()

    @property
    def task(self) -> str:
        return str(self.meta.get("task", ""))

    @property
    def licence(self) -> str:
        return str(self.meta.get("licence", self.meta.get("license", "")))

    @property
    def metrics(self) -> list[dict]:
        """The recorded metrics: dicts with ``name``, ``value`` and ``data``."""
        metrics = self.meta.get("metrics") or []
        if isinstance(metrics, dict):  # tolerate the short form {accuracy: 0.98, data: ...}
            data = metrics.get("data", "")
            metrics = [{"name": k, "value": v, "data": data} for k, v in metrics.items() if k != "data"]
        return list(metrics)

    @property
    def files(self) -> dict[str, dict]:
        """Role -> file record (``path`` or ``url``, ``sha256``/``sha1``, ``size``)."""
        return dict(self.meta.get("files") or {})

    @property
    def ships_weights(self) -> bool:
        """True when the entry itself carries the weights (not only a URL to fetch them)."""
        return "weights" in self.files and self.meta.get("weights", True) is not False

    def file_record(self, kind: str) -> dict | None:
        """The record of the file playing ``kind`` (a KIND or an extra role named in
        ``files``), or None when the entry has none.

        Weights that the entry does not carry come from its ``fetch`` section.
        """
        kind = KIND_ALIASES.get(kind, kind)
        record = self.files.get(kind)
        if record is not None and not (kind == "weights" and not self.ships_weights):
            return dict(record)
        if kind == "weights" and self.meta.get("fetch"):
            fetch = dict(self.meta["fetch"])
            fetch.setdefault("path", _url_basename(fetch.get("url", "")) or f"{self.name}.caffemodel")
            return fetch
        return None

    def metric_summary(self) -> str:
        """The first recorded metric, e.g. ``accuracy 0.9870``."""
        for metric in self.metrics:
            value = metric.get("value")
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            return f"{metric.get('name', '?')} {shown}"
        return ""

    def weights_size(self) -> int | None:
        record = self.file_record("weights")
        return None if record is None else record.get("size")

    def to_dict(self) -> dict:
        """Everything known about the entry, for ``zoo show``."""
        out = {"name": self.name, "origin": self.origin}
        if self.folder is not None:
            out["folder"] = str(self.folder)
        out.update({k: v for k, v in self.meta.items() if k != "name"})
        return out

    # ---------------------------------------------------------------- reading
    @classmethod
    def from_folder(cls, folder: str | Path, origin: str | None = None) -> "Entry":
        """Read the entry in ``folder`` (its zoo.yaml, or else Caffe's readme.md)."""
        folder = Path(folder)
        if (folder / ZOO_FILE).is_file():
            meta = load_yaml(folder / ZOO_FILE)
            if not isinstance(meta, dict):
                raise DlsoftError("expected a mapping of entry fields", path=str(folder / ZOO_FILE))
        elif (folder / CAFFE_README).is_file():
            meta = meta_from_caffe_readme(folder / CAFFE_README)
        else:
            raise DlsoftError(f"{folder} is not a zoo entry: it holds neither {ZOO_FILE} nor {CAFFE_README}")
        name = str(meta.get("name") or folder.name)
        where = str(folder / (ZOO_FILE if (folder / ZOO_FILE).is_file() else CAFFE_README))
        check_name(name, where)
        meta["name"] = name
        check_records(meta, where)
        files = dict(meta.get("files") or {})
        for kind, file_name in DEFAULT_FILES.items():  # conventional names need no record
            if kind not in files and (folder / file_name).is_file():
                files[kind] = {"path": file_name}
        meta["files"] = files
        return cls(name=name, meta=meta, folder=folder, origin=origin or str(folder))


def meta_from_caffe_readme(path: Path) -> dict:
    """Map Caffe's model-zoo readme (YAML front matter between ``---`` lines) to zoo.yaml fields."""
    text = path.read_text(encoding="utf-8")
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n?(.*)$", text, re.S)
    if not match:
        raise DlsoftError("expected YAML front matter between '---' lines at the top", path=str(path))
    try:
        front = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise DlsoftError(f"front matter is not valid YAML: {one_line(exc)}", path=str(path)) from None
    if not isinstance(front, dict):
        raise DlsoftError("front matter must be a mapping", path=str(path))
    body = match.group(2).strip()
    first_paragraph = body.split("\n\n", 1)[0].replace("\n", " ") if body else ""
    meta: dict = {
        "name": path.parent.name,
        "title": front.get("name", path.parent.name),
        "description": " ".join(x for x in (str(front.get("name", "")), first_paragraph) if x),
        "licence": front.get("license", ""),
        "caffe_readme": {k: v for k, v in front.items()},
    }
    # YAML would read an all-digit sha1 as a number (losing leading zeros): take the text.
    sha1 = re.search(r"^sha1:\s*['\"]?([0-9a-fA-F]+)", match.group(1), re.M)
    caffemodel = front.get("caffemodel")
    if caffemodel:
        caffemodel = check_relative_path(caffemodel, "caffemodel", str(path))
        checksum = {"sha1": sha1.group(1).lower()} if sha1 else {}
        if (path.parent / caffemodel).is_file():
            meta["files"] = {"weights": {"path": caffemodel, **checksum}}
        if front.get("caffemodel_url"):
            meta["fetch"] = {"url": front["caffemodel_url"], "path": caffemodel, **checksum}
            if "files" not in meta:
                meta["weights"] = False
    return meta


# ------------------------------------------------------------------ small helpers
def load_yaml(path: Path):
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DlsoftError(f"not valid YAML: {one_line(exc)}", path=str(path),
                          line=None if mark is None else mark.line + 1) from None
    except OSError as exc:
        raise DlsoftError(f"cannot read: {exc.strerror}", path=str(path)) from None


def dump_yaml(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_of(record: dict) -> tuple[str, str] | None:
    """(algorithm, hex digest) recorded for a file, preferring sha256."""
    for algorithm, length in (("sha256", 64), ("sha1", 40)):
        if record.get(algorithm) is not None:
            value = str(record[algorithm]).lower()
            if not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
                raise DlsoftError(f"recorded {algorithm} {value!r} is not {length} hex digits (quote it in YAML)")
            return algorithm, value
    return None


def _url_basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
