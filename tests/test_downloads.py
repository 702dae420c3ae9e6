"""DefaultModelDownloader against a small loopback HTTP server with Range support; no real network."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from webui.errors import Cancelled, DownloadError
from webui.services.downloads import DEFAULT_MODEL, DefaultModelDownloader, DownloadSpec

BLOB = os.urandom(300 * 1024)
BLOB_SHA256 = hashlib.sha256(BLOB).hexdigest()
FILENAME = "model.safetensors"


@dataclass
class ServerState:
    ignore_range: bool = False
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)


class BlobHandler(BaseHTTPRequestHandler):
    """Serves BLOB at /blob (HEAD, GET, GET with Range) and redirects /redirect there."""

    state: ServerState  # set per server by make_server

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        self.state.requests.append((self.command, self.path, self.headers.get("Range")))
        if self.path == "/redirect":
            self._reply(302, {"Location": "/blob", "Content-Length": "0"})
            return
        if self.path != "/blob":
            self._reply(404, {"Content-Length": "0"})
            return
        start = self._range_start()
        if start is None:
            self._reply(200, {"Content-Length": str(len(BLOB))}, BLOB if send_body else b"")
        elif start >= len(BLOB):
            self._reply(416, {"Content-Range": f"bytes */{len(BLOB)}", "Content-Length": "0"})
        else:
            headers = {
                "Content-Range": f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}",
                "Content-Length": str(len(BLOB) - start),
            }
            self._reply(206, headers, BLOB[start:] if send_body else b"")

    def _range_start(self) -> int | None:
        header = self.headers.get("Range")
        if self.state.ignore_range or not header or not header.startswith("bytes="):
            return None
        return int(header[len("bytes=") :].split("-", 1)[0])

    def _reply(self, code: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client cancelled mid-body; expected in the cancel tests

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    handler = type("Handler", (BlobHandler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _spec(base_url: str, path: str = "/blob", sha256: str = BLOB_SHA256) -> DownloadSpec:
    return DownloadSpec(url=base_url + path, filename=FILENAME, sha256=sha256, size_hint=len(BLOB))


def _downloader(tmp_path: Path, spec: DownloadSpec, **kwargs: object) -> DefaultModelDownloader:
    downloader = DefaultModelDownloader(tmp_path, spec, timeout=2.0, **kwargs)  # type: ignore[arg-type]
    downloader.chunk_size = 16 * 1024  # many chunks from a small blob, so cancel/progress have something to do
    return downloader


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_default_spec_points_at_sd15() -> None:
    assert DEFAULT_MODEL.filename == "v1-5-pruned-emaonly.safetensors"
    assert DEFAULT_MODEL.url.endswith("/" + DEFAULT_MODEL.filename)
    assert len(DEFAULT_MODEL.sha256) == 64


def test_fresh_download(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    path = _downloader(tmp_path, _spec(url)).download()

    assert path == tmp_path / FILENAME
    assert path.read_bytes() == BLOB
    assert not (tmp_path / f"{FILENAME}.part").exists()
    assert state.requests == [("GET", "/blob", None)]


def test_resume_sends_range(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    (tmp_path / f"{FILENAME}.part").write_bytes(BLOB[: 100 * 1024])

    path = _downloader(tmp_path, _spec(url)).download()

    assert state.requests == [("GET", "/blob", f"bytes={100 * 1024}-")]
    assert path.read_bytes() == BLOB
    assert not (tmp_path / f"{FILENAME}.part").exists()


def test_server_ignoring_range_restarts_from_zero(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    state.ignore_range = True
    (tmp_path / f"{FILENAME}.part").write_bytes(BLOB[: 100 * 1024])

    path = _downloader(tmp_path, _spec(url)).download()

    assert path.read_bytes() == BLOB


def test_complete_part_answered_416_is_finalised(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, _ = server
    (tmp_path / f"{FILENAME}.part").write_bytes(BLOB)

    path = _downloader(tmp_path, _spec(url)).download()

    assert path.read_bytes() == BLOB
    assert not (tmp_path / f"{FILENAME}.part").exists()


def test_sha256_mismatch_removes_everything(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, _ = server
    with pytest.raises(DownloadError, match="sha256 mismatch: expected 0{64}, got " + BLOB_SHA256):
        _downloader(tmp_path, _spec(url, sha256="0" * 64)).download()

    assert not (tmp_path / f"{FILENAME}.part").exists()
    assert not (tmp_path / FILENAME).exists()


def test_should_stop_cancels_and_keeps_part(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, _ = server
    calls = 0

    def stop_after_three_chunks() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    with pytest.raises(Cancelled):
        _downloader(tmp_path, _spec(url)).download(should_stop=stop_after_three_chunks)

    part = tmp_path / f"{FILENAME}.part"
    assert 0 < part.stat().st_size < len(BLOB)
    assert part.read_bytes() == BLOB[: part.stat().st_size]
    assert not (tmp_path / FILENAME).exists()

    # ...and a later run picks up where it stopped.
    assert _downloader(tmp_path, _spec(url)).download().read_bytes() == BLOB


def test_progress_is_throttled_and_reports_the_total(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, _ = server
    calls: list[tuple[int, int | None]] = []
    downloader = _downloader(tmp_path, _spec(url))
    downloader.chunk_size = 1024  # 300 chunks: far more than the ~100 progress calls 1 % steps allow

    downloader.download(progress=lambda done, total: calls.append((done, total)))

    assert calls[-1] == (len(BLOB), len(BLOB))
    assert len(calls) <= 102
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_existing_final_file_is_returned_without_network(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"already here")
    downloader = _downloader(tmp_path, _spec(f"http://127.0.0.1:{_closed_port()}"))

    assert downloader.download() == tmp_path / FILENAME


def test_network_error_names_host_and_keeps_part(tmp_path: Path) -> None:
    part = tmp_path / f"{FILENAME}.part"
    part.write_bytes(BLOB[:1000])
    downloader = _downloader(tmp_path, _spec(f"http://127.0.0.1:{_closed_port()}"))

    with pytest.raises(DownloadError, match="127.0.0.1") as info:
        downloader.download()

    assert "\n" not in str(info.value)
    assert part.read_bytes() == BLOB[:1000]


def test_concurrent_download_is_refused(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, _ = server
    downloader = _downloader(tmp_path, _spec(url))
    started, release = threading.Event(), threading.Event()

    def hold_first_download() -> bool:
        started.set()
        release.wait(5)
        return False

    first = threading.Thread(target=lambda: downloader.download(should_stop=hold_first_download))
    first.start()
    try:
        assert started.wait(5)
        with pytest.raises(DownloadError, match="already in progress"):
            downloader.download()
    finally:
        release.set()
        first.join(5)
    assert (tmp_path / FILENAME).read_bytes() == BLOB


def test_availability_local_server(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    assert _downloader(tmp_path, _spec(url)).availability() == (True, "")
    assert state.requests == [("HEAD", "/blob", None)]


def test_availability_follows_redirect_with_head(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, state = server
    assert _downloader(tmp_path, _spec(url, path="/redirect")).availability() == (True, "")
    # A GET after the redirect would start streaming the (in real life 4 GB) body.
    assert state.requests == [("HEAD", "/redirect", None), ("HEAD", "/blob", None)]


def test_availability_http_error(tmp_path: Path, server: tuple[str, ServerState]) -> None:
    url, _ = server
    ok, message = _downloader(tmp_path, _spec(url, path="/missing")).availability()
    assert not ok
    assert "unavailable" in message and "404" in message


def test_availability_closed_port(tmp_path: Path) -> None:
    downloader = DefaultModelDownloader(tmp_path, _spec(f"http://127.0.0.1:{_closed_port()}"), timeout=0.5)
    ok, message = downloader.availability()
    assert not ok
    assert "unavailable" in message and "127.0.0.1" in message
    assert "\n" not in message


def test_disabled(tmp_path: Path) -> None:
    downloader = DefaultModelDownloader(tmp_path, _spec("http://127.0.0.1:9"), enabled=False)
    ok, message = downloader.availability()
    assert not ok and "disabled" in message
    with pytest.raises(DownloadError, match="disabled"):
        downloader.download()
