"""Downloading files into the user cache: resumable, verified, never leaving a corrupt file.

A download goes to ``<file>.part``; an interrupted one is resumed with an HTTP Range
request (the ``.part`` is kept for that). Only once the size and checksum match is the
``.part`` renamed, atomically, to the final name, so a file under its final name has
always been verified. A checksum mismatch deletes the ``.part``.
"""
from __future__ import annotations

import logging
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from ..errors import DlsoftError
from .entry import checksum_of, file_digest

log = logging.getLogger(__name__)

Progress = Callable[[int, "int | None"], None]
CHUNK = 1 << 16
USER_AGENT = "dlsoft-zoo"
#: The most bytes a download without a recorded size may bring (``$DLSOFT_ZOO_MAX_BYTES``
#: changes it): a record's ``size`` is the limit when it has one.
DEFAULT_MAX_BYTES = 4 << 30


def max_bytes() -> int:
    value = os.environ.get("DLSOFT_ZOO_MAX_BYTES", "")
    return int(value) if value.isdigit() else DEFAULT_MAX_BYTES


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s): a server must not send the download to ftp:// or file://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)).scheme
        if scheme not in ("http", "https"):
            raise DlsoftError(f"cannot fetch {req.full_url}: the server's redirect to {newurl} leaves "
                              "http(s); refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_opener = urllib.request.build_opener(_HttpOnlyRedirects)


def cache_dir() -> Path:
    """The user cache: ``$DLSOFT_CACHE``, else ``$XDG_CACHE_HOME/dlsoft``, else ``~/.cache/dlsoft``."""
    if os.environ.get("DLSOFT_CACHE"):
        return Path(os.environ["DLSOFT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dlsoft"


def is_url(location: str) -> bool:
    return urllib.parse.urlsplit(str(location)).scheme in ("http", "https", "file")


def join_location(base: str, relative: str) -> str:
    """``relative`` (a path or URL) taken relative to ``base`` (an index's path or URL)."""
    if is_url(relative) or os.path.isabs(relative):
        return relative
    if is_url(base):
        return urllib.parse.urljoin(base, relative)
    return str(Path(base).parent / relative)


def download(location: str, dest: str | Path, record: dict | None = None, *,
             progress: Progress | None = None, timeout: float = 30, retries: int = 2) -> Path:
    """Fetch ``location`` (http(s)/file URL or local path) to ``dest``, verified by ``record``.

    ``record`` may carry ``sha256`` or ``sha1`` and ``size``. An interrupted transfer that
    made progress is resumed up to ``retries`` times before giving up (the ``.part`` stays
    for a later call to resume). Returns ``dest``.
    """
    verify = record is not None  # an index file has no checksum to check against
    record = record or {}
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    expected_size = record.get("size")
    attempts = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _transfer(location, part, expected_size, progress, timeout)
            break
        except _TooLarge as exc:
            part.unlink(missing_ok=True)
            what = (f"more than the recorded {exc.limit:,} bytes" if expected_size is not None else
                    f"more than {exc.limit:,} bytes, the cap for files of no recorded size "
                    "($DLSOFT_ZOO_MAX_BYTES changes it)")
            raise DlsoftError(f"refused {location}: the server sent {what}; the download was deleted") from None
        except _Interrupted as exc:
            got = part.stat().st_size if part.exists() else 0
            attempts += 1
            if got <= before or attempts > retries:
                raise DlsoftError(f"download of {location} was interrupted at {got} bytes ({exc.reason}); "
                                  f"run the fetch again to resume") from None
            log.info("download of %s interrupted at %d bytes (%s); resuming", location, got, exc.reason)
    _verify_part(location, part, record, warn_unverified=verify)
    os.replace(part, dest)
    return dest


class _TooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(limit)
        self.limit = limit


class _Interrupted(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _transfer(location: str, part: Path, expected_size: int | None, progress: Progress | None,
              timeout: float) -> None:
    """Append the missing bytes of ``location`` to ``part``."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset >= expected_size:
        return  # complete already (a larger file is caught by verification)
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme in ("", "file"):
        source = urllib.request.url2pathname(urllib.parse.urlsplit(location).path) if scheme else location
        try:
            total = os.path.getsize(source)
            with open(source, "rb") as src, open(part, "ab") as out:
                src.seek(offset)
                limit = expected_size if expected_size is not None else max_bytes()
                _copy(src, out, offset, total, progress, limit)
        except OSError as exc:
            raise DlsoftError(f"cannot fetch {location}: {exc.strerror or exc}") from None
        return
    if scheme not in ("http", "https"):
        raise DlsoftError(f"cannot fetch {location}: unsupported URL scheme '{scheme}' (use http, https or file)")

    request = urllib.request.Request(location, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = _opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after offset: the .part is complete
            return
        raise DlsoftError(f"cannot fetch {location}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise DlsoftError(f"cannot fetch {location}: {_reason(exc.reason, timeout)}") from None
    except (TimeoutError, socket.timeout):
        raise DlsoftError(f"cannot fetch {location}: {_reason(TimeoutError(), timeout)}") from None
    except OSError as exc:
        raise DlsoftError(f"cannot fetch {location}: {_reason(exc, timeout)}") from None
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if offset and response.status == 206:
            total = _total_from_content_range(response.headers.get("Content-Range"))
            mode = "ab"
        else:  # the server sent the whole file (no range support): start over
            offset, total, mode = 0, length, "wb"
        if total is None and expected_size is not None:
            total = expected_size
        limit = expected_size if expected_size is not None else max_bytes()
        with open(part, mode) as out:
            try:
                done = _copy(response, out, offset, total, progress, limit)
            except (TimeoutError, socket.timeout):
                raise _Interrupted(f"no data for {timeout:g} s: the server stalled") from None
            except OSError as exc:
                raise _Interrupted(str(exc) or type(exc).__name__) from None
        if total is not None and done < total:
            raise _Interrupted(f"connection closed after {done} of {total} bytes")


def _copy(src, out, done: int, total: int | None, progress: Progress | None, limit: int | None = None) -> int:
    if progress:
        progress(done, total)
    while True:
        try:
            chunk = src.read(CHUNK if limit is None else max(0, min(CHUNK, limit + 1 - done)))
        except Exception as exc:  # http.client.IncompleteRead and friends
            if isinstance(exc, (TimeoutError, socket.timeout, OSError)):
                raise
            raise _Interrupted(type(exc).__name__) from None
        if not chunk:
            return done
        if limit is not None and done + len(chunk) > limit:
            raise _TooLarge(limit)
        out.write(chunk)
        done += len(chunk)
        if progress:
            progress(done, total)


def _verify_part(location: str, part: Path, record: dict, warn_unverified: bool = True) -> None:
    size = part.stat().st_size
    expected_size = record.get("size")
    checksum = checksum_of(record)
    problem = None
    if expected_size is not None and size != expected_size:
        problem = f"size {size} bytes, expected {expected_size}"
    elif checksum is not None:
        algorithm, expected = checksum
        actual = file_digest(part, algorithm)
        if actual != expected:
            problem = f"{algorithm} {actual}, expected {expected}"
    elif warn_unverified:
        log.warning("%s has no recorded checksum: it was not verified", location)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise DlsoftError(f"refused {location}: checksum mismatch ({problem}); the download was deleted")


def _total_from_content_range(value: str | None) -> int | None:
    # "bytes 100-199/200"
    if value and "/" in value:
        total = value.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    return None


def _reason(reason, timeout: float) -> str:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s (the server stalled)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)
