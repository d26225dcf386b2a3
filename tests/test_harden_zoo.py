"""Hardening of the model zoo: nothing an entry, an index or a server says makes dlsoft
read or write outside its folders (issue 12). Servers run on 127.0.0.1 only."""
from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from dlsoft import zoo
from dlsoft.errors import DlsoftError
from dlsoft.model_zoo import fetch as zoo_fetch
from dlsoft.model_zoo.fetch import download

ROOT = Path(__file__).resolve().parent.parent
BODY = bytes(range(256)) * 256  # 65,536 bytes


class Server:
    """Serves ``routes``: path -> (status, headers, body); bodies without Content-Length when asked."""

    def __init__(self, routes: dict):
        self.routes = routes
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # a body without Content-Length ends when the connection closes

            def log_message(self, *args):
                pass

            def do_GET(self):
                status, headers, body = outer.routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:  # the client stopped reading (the size cap did its job)
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def isolated_user(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSOFT_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("DLSOFT_CACHE", str(tmp_path / "cache"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_folder_entry_name_cannot_leave_the_cache(tmp_path):
    with Server({"/w.caffemodel": (200, {"Content-Length": str(len(BODY))}, BODY)}) as server:
        folder = tmp_path / "entry"
        folder.mkdir()
        (folder / "zoo.yaml").write_text(yaml.safe_dump({
            "name": "../../escaped", "weights": False,
            "fetch": {"url": f"{server.url}/w.caffemodel", "sha256": sha256(BODY), "size": len(BODY)}}))
        with pytest.raises(DlsoftError, match=r"name '\.\./\.\./escaped' is not allowed"):
            zoo.fetch(str(folder))
    assert not (tmp_path / "escaped").exists() and files_under(tmp_path / "cache") == set()


def test_caffe_readme_caffemodel_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "outside.caffemodel").write_bytes(b"someone else's file")
    folder = tmp_path / "caffe_entry"
    folder.mkdir()
    (folder / "readme.md").write_text("---\nname: x\ncaffemodel: ../outside.caffemodel\n---\nA net.\n")
    with pytest.raises(DlsoftError, match=r"\.\./outside\.caffemodel"):
        zoo.local_path(zoo.get_entry(str(folder)), "weights")


def test_folder_entry_file_path_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.prototxt").write_text("name: 'secret'\n")
    folder = tmp_path / "entry"
    folder.mkdir()
    (folder / "zoo.yaml").write_text(yaml.safe_dump({"name": "entry",
                                                     "files": {"deploy": {"path": "../secret.prototxt"}}}))
    with pytest.raises(DlsoftError, match="secret.prototxt"):
        zoo.local_path(zoo.get_entry(str(folder)), "deploy")


def served_index(entries: list) -> bytes:
    return yaml.safe_dump({"dlsoft_zoo_index": 1, "entries": entries}).encode()


@pytest.mark.parametrize("weights_record, what", [
    ({"path": "SECRET"}, "absolute"),
    ({"url": "file://SECRET"}, "file://"),
    ({"path": "../../SECRET_NAME"}, ".."),
])
def test_http_index_cannot_point_at_local_files(tmp_path, weights_record, what):
    secret = tmp_path / "secret.caffemodel"
    secret.write_bytes(b"private")
    record = {k: v.replace("SECRET_NAME", secret.name).replace("SECRET", str(secret))
              for k, v in weights_record.items()}
    record["sha256"] = sha256(b"private")
    index = served_index([{"name": "evil", "files": {"weights": record}}])
    with Server({"/index.yaml": (200, {"Content-Length": str(len(index))}, index)}) as server:
        with pytest.raises(DlsoftError) as info:
            zoo.add_index(f"{server.url}/index.yaml")
            zoo.fetch("evil")
    assert what in str(info.value) and "evil" in str(info.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.read_bytes() == b"private"]


@pytest.mark.parametrize("name", ["..", ".", "a/b", "/abs", ""])
def test_index_entry_names_are_validated(tmp_path, name):
    index = tmp_path / "index.yaml"
    index.write_bytes(served_index([{"name": name, "files": {}}]))
    with pytest.raises(DlsoftError, match="name"):
        zoo.add_index(index)


def test_get_entry_dotdot_is_not_the_parent_folder(tmp_path, monkeypatch):
    (tmp_path / "zoo.yaml").write_text("name: parent\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    with pytest.raises(DlsoftError, match="not a zoo entry name"):
        zoo.get_entry("..")


def test_redirect_to_ftp_is_refused(tmp_path):
    routes = {"/w.caffemodel": (302, {"Location": "ftp://127.0.0.1/w.caffemodel", "Content-Length": "0"}, b"")}
    with Server(routes) as server:
        with pytest.raises(DlsoftError, match="redirect.*ftp"):
            download(f"{server.url}/w.caffemodel", tmp_path / "w.caffemodel", {"sha256": sha256(BODY)})
    assert files_under(tmp_path) == set()


def test_redirect_within_http_is_followed(tmp_path):
    routes = {"/old": (301, {"Location": "/w.caffemodel", "Content-Length": "0"}, b""),
              "/w.caffemodel": (200, {"Content-Length": str(len(BODY))}, BODY)}
    with Server(routes) as server:
        download(f"{server.url}/old", tmp_path / "w.caffemodel", {"sha256": sha256(BODY)})
    assert (tmp_path / "w.caffemodel").read_bytes() == BODY


def test_download_without_content_length_stops_at_the_recorded_size(tmp_path):
    with Server({"/w.caffemodel": (200, {}, BODY * 16)}) as server:  # 1 MiB, no length
        with pytest.raises(DlsoftError, match="more than the recorded 1,000 bytes"):
            download(f"{server.url}/w.caffemodel", tmp_path / "w.caffemodel",
                     {"sha256": sha256(BODY[:1000]), "size": 1000})
    assert all(os.path.getsize(tmp_path / f) <= 1000 for f in files_under(tmp_path))


def test_download_without_any_size_stops_at_the_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSOFT_ZOO_MAX_BYTES", "100000")
    with Server({"/w.caffemodel": (200, {}, BODY * 16)}) as server:
        with pytest.raises(DlsoftError, match="DLSOFT_ZOO_MAX_BYTES"):
            download(f"{server.url}/w.caffemodel", tmp_path / "w.caffemodel", {"sha256": sha256(BODY)})
    assert files_under(tmp_path) == set()


def unverified_index(tmp_path: Path) -> Path:
    (tmp_path / "zoo" / "net").mkdir(parents=True)
    (tmp_path / "zoo" / "net" / "w.caffemodel").write_bytes(BODY)
    index = tmp_path / "zoo" / "index.yaml"
    index.write_bytes(served_index([{"name": "unverified", "files": {"weights": {"path": "net/w.caffemodel"}}}]))
    return index


def test_unverified_weights_are_refused_without_the_flag(tmp_path):
    zoo.add_index(unverified_index(tmp_path))
    with pytest.raises(DlsoftError, match="no recorded checksum.*--allow-unverified"):
        zoo.fetch("unverified")
    assert files_under(tmp_path / "cache") == {p for p in files_under(tmp_path / "cache")
                                               if not p.endswith(".caffemodel")}
    path = zoo.fetch("unverified", allow_unverified=True)
    assert path.read_bytes() == BODY


def test_cli_refuses_unverified_weights_even_with_quiet(tmp_path):
    index = unverified_index(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), DLSOFT_CONFIG=str(tmp_path / "config"),
               DLSOFT_CACHE=str(tmp_path / "cache"))
    run = lambda *args: subprocess.run([sys.executable, "-m", "dlsoft", *args], env=env, capture_output=True,  # noqa: E731
                                       text=True, timeout=120)
    assert run("zoo", "add-index", str(index)).returncode == 0
    refused = run("--quiet", "zoo", "fetch", "unverified")
    assert refused.returncode == 2 and "--allow-unverified" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "internal error" not in refused.stderr
    accepted = run("--quiet", "zoo", "fetch", "unverified", "--allow-unverified")
    assert accepted.returncode == 0, accepted.stderr
