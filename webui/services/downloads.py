"""Opt-in download of a default checkpoint (Stable Diffusion 1.5) for a first run with no model.

Nothing here runs on its own: the UI first asks :meth:`DefaultModelDownloader.availability` whether to offer the
download, and only calls :meth:`DefaultModelDownloader.download` when the user asks for it. Plain ``urllib`` keeps
this free of extra dependencies; the transfer goes to a ``.part`` file that later runs resume with an HTTP Range
request, and only a file whose sha256 matches is renamed into place.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.error import HTTPError
from urllib.parse import urlsplit

from webui.errors import Cancelled, DownloadError

ProgressCallback = Callable[[int, int | None], None]
StopCallback = Callable[[], bool]

# Network failures can surface as any of these: URLError/socket errors are OSErrors, a body cut short is an
# http.client.IncompleteRead, and a malformed URL is a ValueError.
_NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)
_USER_AGENT = "webui-default-model-downloader/1.0"


@dataclass(frozen=True)
class DownloadSpec:
    url: str
    filename: str
    sha256: str
    size_hint: int  # bytes; only for telling the user what to expect, never trusted over the server's answer


DEFAULT_MODEL = DownloadSpec(
    url="https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors",
    filename="v1-5-pruned-emaonly.safetensors",
    sha256="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    size_hint=4_265_146_304,  # about 4.27 GB
)


class _KeepMethodRedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib turns a redirected HEAD into a GET; Hugging Face redirects to its CDN, so the reachability check
    would start streaming 4 GB. Keep the original method instead."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.method = req.get_method()
        return new


_OPENER = urllib.request.build_opener(_KeepMethodRedirectHandler())


class _ProgressThrottle:
    """Forwards progress at most every ``interval`` seconds or 1 % of the total, so a UI isn't called per chunk."""

    def __init__(self, progress: ProgressCallback | None, total: int | None, interval: float = 0.25):
        self._progress = progress
        self._total = total
        self._interval = interval
        self._step = total // 100 if total else 0
        self._last_time = time.monotonic()
        self._last_done = -1

    def update(self, done: int) -> None:
        now = time.monotonic()
        by_time = now - self._last_time >= self._interval
        by_size = self._step > 0 and done - self._last_done >= self._step
        if by_time or by_size:
            self._emit(done, now)

    def finish(self, done: int) -> None:
        self._emit(done, time.monotonic())

    def _emit(self, done: int, now: float) -> None:
        self._last_time, self._last_done = now, done
        if self._progress is not None:
            self._progress(done, self._total)


class DefaultModelDownloader:
    """Downloads ``spec`` into ``target_dir`` on request; one download at a time per instance."""

    chunk_size: int = 1 << 20  # read size; tests shrink it to get many chunks out of a small file

    def __init__(
        self,
        target_dir: Path,
        spec: DownloadSpec = DEFAULT_MODEL,
        enabled: bool = True,
        timeout: float = 5.0,
    ):
        self.target_dir = Path(target_dir)
        self.spec = spec
        self.enabled = enabled
        self.timeout = timeout
        self._lock = threading.Lock()

    @property
    def final_path(self) -> Path:
        return self.target_dir / self.spec.filename

    @property
    def part_path(self) -> Path:
        return self.target_dir / f"{self.spec.filename}.part"

    @property
    def host(self) -> str:
        return urlsplit(self.spec.url).hostname or self.spec.url

    # ------------------------------------------------------------------ availability

    def availability(self) -> tuple[bool, str]:
        """``(True, "")`` when the download can be offered, else ``(False, one-line reason)``. Never raises."""
        if not self.enabled:
            return False, "Download disabled by --no-download."
        request = self._request(method="HEAD")
        try:
            with _OPENER.open(request, timeout=self.timeout):
                return True, ""
        except HTTPError as error:
            return False, f"Download unavailable: {self.host} answered HTTP {error.code}."
        except _NETWORK_ERRORS:
            return False, f"Download unavailable: no network connection to {self.host}."

    # ------------------------------------------------------------------ download

    def download(
        self,
        progress: ProgressCallback | None = None,
        should_stop: StopCallback | None = None,
    ) -> Path:
        """Download (or resume) the file, verify its sha256 and move it into place; returns the final path.

        Raises ``Cancelled`` when ``should_stop()`` turns true and ``DownloadError`` on network or checksum
        failures. The ``.part`` file is kept for a later resume except when its content is proven wrong.
        """
        # Existence only: re-hashing a 4 GB file on every start would cost far more than it protects.
        if self.final_path.is_file():
            return self.final_path
        if not self.enabled:
            raise DownloadError("Download disabled by --no-download.")
        if not self._lock.acquire(blocking=False):
            raise DownloadError(f"Download of {self.spec.filename} is already in progress.")
        try:
            self.target_dir.mkdir(parents=True, exist_ok=True)
            self._fetch(progress, should_stop or (lambda: False))
            self._verify()
            os.replace(self.part_path, self.final_path)  # atomic: readers never see a half-written checkpoint
            return self.final_path
        finally:
            self._lock.release()

    def _fetch(self, progress: ProgressCallback | None, should_stop: StopCallback) -> None:
        """Bring ``.part`` to the full file, resuming from its current size when the server allows it."""
        offset = self.part_path.stat().st_size if self.part_path.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = _OPENER.open(self._request(headers=headers), timeout=self.timeout)
        except HTTPError as error:
            if error.code == 416 and offset:
                # Nothing left past our offset: the .part is already whole (the sha256 check has the last word).
                _ProgressThrottle(progress, offset).finish(offset)
                return
            raise DownloadError(
                f"Download of {self.spec.filename} failed: {self.host} answered HTTP {error.code}.") from None
        except _NETWORK_ERRORS as error:
            raise self._network_error(error) from error

        with response:
            if offset and response.status != 206:
                offset = 0  # the server ignored Range and sends the whole file: start over
            total = _total_size(response, offset)
            mode = "ab" if offset else "wb"
            with self.part_path.open(mode) as out:
                done = self._copy(response, out, offset, _ProgressThrottle(progress, total), should_stop)
                out.flush()
                os.fsync(out.fileno())  # the rename that follows must not publish unflushed data
        if total is not None and done < total:
            raise DownloadError(
                f"Download of {self.spec.filename} failed: {self.host} closed the connection early "
                f"({done} of {total} bytes). Run it again to resume."
            )

    def _copy(
        self,
        response: http.client.HTTPResponse,
        out: BinaryIO,
        done: int,
        throttle: _ProgressThrottle,
        should_stop: StopCallback,
    ) -> int:
        """Stream the body into ``out``; returns the byte count of the file afterwards."""
        while True:
            if should_stop():
                raise Cancelled(f"Download of {self.spec.filename} cancelled; {done} bytes kept to resume later.")
            try:
                chunk = response.read(self.chunk_size)
            except _NETWORK_ERRORS as error:
                raise self._network_error(error) from error
            if not chunk:
                throttle.finish(done)
                return done
            out.write(chunk)
            done += len(chunk)
            throttle.update(done)

    def _verify(self) -> None:
        """Check the whole ``.part`` against the expected sha256; a wrong file is deleted, never resumed."""
        actual = _sha256_of(self.part_path)
        expected = self.spec.sha256.lower()
        if actual != expected:
            self.part_path.unlink(missing_ok=True)
            raise DownloadError(
                f"Downloaded {self.spec.filename} is corrupt: sha256 mismatch: expected {expected}, got {actual}. "
                "The file was removed; try again."
            )

    # ------------------------------------------------------------------ helpers

    def _request(self, method: str = "GET", headers: dict[str, str] | None = None) -> urllib.request.Request:
        return urllib.request.Request(
            self.spec.url, method=method, headers={"User-Agent": _USER_AGENT, **(headers or {})}
        )

    def _network_error(self, error: BaseException) -> DownloadError:
        reason = getattr(error, "reason", error)  # URLError wraps the socket error in .reason
        detail = " ".join(str(reason).split()) or type(error).__name__  # keep the message on one line
        return DownloadError(
            f"Download of {self.spec.filename} failed: lost connection to {self.host} ({detail}). "
            "Run it again to resume."
        )


def _total_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Full file size from the headers: Content-Range's total for a 206, else offset + Content-Length."""
    content_range = response.headers.get("Content-Range", "")
    if response.status == 206 and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _sha256_of(path: Path, block_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(block_size):
            digest.update(block)
    return digest.hexdigest()
