"""Only files that were uploaded through Gradio may be named by a Gradio event.

A Gradio event carries files as ``FileData`` objects (``{"path": ..., "meta": {"_type": "gradio.FileData"}}``).
Gradio copies the named file into its cache before our handler runs, and serves its cache at
``/gradio_api/file=``: so an event naming ``/etc/passwd`` would publish that file. Gradio's own check for this
("only uploaded files") is skipped when the Blocks are mounted with ``gr.mount_gradio_app`` instead of launched
(it only runs once ``Blocks.has_launched`` is set, which only ``launch()`` does). This middleware enforces the rule
itself, before Gradio sees the request, on every event route (``/gradio_api/call``, ``/run``, ``/queue/join`` ...).
"""

from __future__ import annotations

import json
import os
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_DEPTH = 32  # real event payloads nest a few levels; deeper is an attack on the walker itself
DEFAULT_MAX_BODY = 64 * 1024 * 1024


class UnsafeFileReference(ValueError):
    """An event payload names a file that was not uploaded to this server."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def check_payload(value: Any, upload_root: str, depth: int = 0) -> None:
    """Raise UnsafeFileReference for any file reference outside ``upload_root`` (after following symlinks)."""
    if depth > MAX_DEPTH:
        raise UnsafeFileReference("the request nests too deeply")
    if isinstance(value, list):
        for item in value:
            check_payload(item, upload_root, depth + 1)
    elif isinstance(value, dict):
        path = value.get("path")
        meta = value.get("meta")
        is_file = isinstance(meta, dict) and meta.get("_type") == "gradio.FileData"
        if is_file or (isinstance(path, str) and ("url" in value or "orig_name" in value)):
            _check_path(path, upload_root)
        for item in value.values():
            check_payload(item, upload_root, depth + 1)


def _check_path(path: Any, upload_root: str) -> None:
    if path is None:
        return
    if not isinstance(path, str) or not path or "\0" in path:
        raise UnsafeFileReference("a file reference has no valid path")
    if "://" in path or path.startswith("//"):
        # Gradio would fetch a URL given as a path: a request forgery toward the local network.
        raise UnsafeFileReference("files must be uploaded, not named by URL")
    resolved = os.path.realpath(path)
    if not _inside(resolved, upload_root) or not os.path.isfile(resolved):
        raise UnsafeFileReference("only files uploaded to this server can be used; upload the file instead")


def _refuse(message: str) -> JSONResponse:
    # Same shape as the API's errors; says nothing about which server paths exist.
    return JSONResponse({"error": message, "detail": [{"loc": ["body"], "msg": message, "type": "file_error"}]},
                        status_code=403)


class UploadGuardMiddleware:
    """Refuse Gradio event requests whose JSON names a file outside Gradio's upload folder."""

    def __init__(self, app: ASGIApp, upload_root: str, skip_prefixes: tuple[str, ...] = (),
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.upload_root = os.path.realpath(upload_root)
        self.skip_prefixes = skip_prefixes
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH") or self._skipped(scope):
            await self.app(scope, receive, send)
            return
        content_type = Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()
        if content_type.startswith("multipart/") or content_type == "application/x-www-form-urlencoded":
            await self.app(scope, receive, send)  # uploads create files in the upload folder; nothing to name
            return
        body, messages = await self._read(receive)
        if body is None:
            await _refuse("request body too large")(scope, receive, send)
            return
        try:
            payload = json.loads(body) if body.strip() else None
        except (ValueError, RecursionError):
            payload = None  # not JSON: Gradio refuses it on its own, and it cannot name a file either
        try:
            check_payload(payload, self.upload_root)
        except UnsafeFileReference as exc:
            await _refuse(str(exc))(scope, receive, send)
            return
        await self.app(scope, _replay(messages, receive), send)

    def _skipped(self, scope: Scope) -> bool:
        path = scope["path"]
        return any(path == p or path.startswith(p + "/") for p in self.skip_prefixes)

    async def _read(self, receive: Receive) -> tuple[bytes | None, list[Message]]:
        chunks: list[bytes] = []
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None, messages
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive() that hands the already-read body to the app again, then carries on with the real one."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
