"""Zoo downloads against a real HTTP server on 127.0.0.1 (and file:// URLs).

Nothing outside the loopback is contacted: every URL here points at the server the
test starts, or at a local file.
"""
from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from dlsoft.errors import DlsoftError
from dlsoft.model_zoo.fetch import download

PAYLOAD = bytes(range(256)) * 1000  # 256,000 bytes: several chunks


class ZooServer:
    """A ThreadingHTTPServer serving a folder, with Range support and scripted misbehaviour.

    ``misbehave[path]`` is a list of modes used by successive requests for that path:
    ``cut`` (send half the body, then close), ``stall`` (send nothing), ``stall_body``
    (send half the body, then nothing).
    """

    def __init__(self, root: Path):
        self.root = root
        self.misbehave: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append((path, self.headers.get("Range")))
                modes = server.misbehave.get(path) or []
                mode = modes.pop(0) if modes else None
                if mode == "stall":
                    server.release.wait(10)
                    return
                file = server.root / path.lstrip("/")
                if not file.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = file.read_bytes()
                start = 0
                range_header = self.headers.get("Range")
                if range_header and range_header.startswith("bytes="):
                    start = int(range_header[6:].split("-")[0])
                    if start >= len(data):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if mode in ("cut", "stall_body"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if mode == "stall_body":
                        server.release.wait(10)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "w.caffemodel").write_bytes(PAYLOAD)
    with ZooServer(root) as server:
        yield server


def record(data: bytes = PAYLOAD, **extra) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), **extra}


def test_full_http_download_reports_progress(served, tmp_path):
    dest = tmp_path / "cache" / "w.caffemodel"
    calls = []
    assert download(f"{served.url}/w.caffemodel", dest, record(), progress=lambda d, t: calls.append((d, t))) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("w.caffemodel.part").exists()
    assert calls[0] == (0, len(PAYLOAD)) and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))


def test_cut_connection_is_resumed_with_a_range_request(served, tmp_path):
    served.misbehave["/w.caffemodel"] = ["cut"]
    dest = tmp_path / "w.caffemodel"
    download(f"{served.url}/w.caffemodel", dest, record())
    assert dest.read_bytes() == PAYLOAD
    assert served.requests[0] == ("/w.caffemodel", None)
    assert served.requests[1] == ("/w.caffemodel", f"bytes={len(PAYLOAD) // 2}-")


def test_existing_part_file_is_resumed(served, tmp_path):
    dest = tmp_path / "w.caffemodel"
    dest.with_name("w.caffemodel.part").write_bytes(PAYLOAD[:1000])
    download(f"{served.url}/w.caffemodel", dest, record())
    assert dest.read_bytes() == PAYLOAD
    assert served.requests == [("/w.caffemodel", "bytes=1000-")]


def test_interruption_without_retries_keeps_the_part_for_later(served, tmp_path):
    served.misbehave["/w.caffemodel"] = ["cut"]
    dest = tmp_path / "w.caffemodel"
    with pytest.raises(DlsoftError, match="interrupted.*resume"):
        download(f"{served.url}/w.caffemodel", dest, record(), retries=0)
    part = dest.with_name("w.caffemodel.part")
    assert not dest.exists() and part.stat().st_size == len(PAYLOAD) // 2
    download(f"{served.url}/w.caffemodel", dest, record())
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_is_refused_and_nothing_is_left(served, tmp_path):
    dest = tmp_path / "w.caffemodel"
    wrong = {"sha256": "0" * 64, "size": len(PAYLOAD)}
    with pytest.raises(DlsoftError, match=r"refused .*w\.caffemodel: checksum mismatch"):
        download(f"{served.url}/w.caffemodel", dest, wrong)
    assert list(tmp_path.glob("w.caffemodel*")) == []


def test_sha1_is_checked_too(served, tmp_path):
    dest = tmp_path / "w.caffemodel"
    download(f"{served.url}/w.caffemodel", dest, {"sha1": hashlib.sha1(PAYLOAD).hexdigest()})
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DlsoftError, match="sha1"):
        download(f"{served.url}/w.caffemodel", tmp_path / "x.caffemodel", {"sha1": "1" * 40})


def test_404_names_the_url(served, tmp_path):
    url = f"{served.url}/missing.caffemodel"
    with pytest.raises(DlsoftError, match=f"cannot fetch {url}: HTTP 404"):
        download(url, tmp_path / "m.caffemodel", record())
    assert list(tmp_path.glob("m.caffemodel*")) == []


def test_stalled_server_times_out_with_a_clear_error(served, tmp_path):
    served.misbehave["/w.caffemodel"] = ["stall"]
    url = f"{served.url}/w.caffemodel"
    started = time.monotonic()
    with pytest.raises(DlsoftError, match=f"cannot fetch {url}: .*stalled"):
        download(url, tmp_path / "w.caffemodel", record(), timeout=0.3)
    assert time.monotonic() - started < 5


def test_server_stalling_mid_file_keeps_the_part(served, tmp_path):
    served.misbehave["/w.caffemodel"] = ["stall_body"]
    dest = tmp_path / "w.caffemodel"
    with pytest.raises(DlsoftError, match="stalled"):
        download(f"{served.url}/w.caffemodel", dest, record(), timeout=0.3, retries=0)
    assert not dest.exists() and dest.with_name("w.caffemodel.part").stat().st_size > 0
    download(f"{served.url}/w.caffemodel", dest, record(), timeout=5)
    assert dest.read_bytes() == PAYLOAD


def test_connection_refused(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/w.caffemodel"
    with pytest.raises(DlsoftError, match=f"cannot fetch {url}: connection refused"):
        download(url, tmp_path / "w.caffemodel", record(), timeout=2)


def test_file_urls(tmp_path):
    source = tmp_path / "src" / "w.caffemodel"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "dest" / "w.caffemodel"
    dest.parent.mkdir()
    dest.with_name("w.caffemodel.part").write_bytes(PAYLOAD[:500])  # resumes from a file too
    download(source.as_uri(), dest, record())
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(DlsoftError, match="checksum mismatch"):
        download(source.as_uri(), tmp_path / "dest" / "bad.caffemodel", {"sha256": "f" * 64})
    assert not list((tmp_path / "dest").glob("bad*"))
    with pytest.raises(DlsoftError, match="cannot fetch file://"):
        download((tmp_path / "nope").as_uri(), tmp_path / "dest" / "nope", {})
