"""Refuse request bodies over a size limit before anything parses them (413 with the usual JSON error).

A declared ``Content-Length`` over the limit is refused before one byte is read; a body sent without one (chunked)
is counted as the application reads it, and reading stops at the first chunk past the limit. Nothing here buffers
the body: the application still streams it, this only watches the count.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webui.api.http_errors import error_response

log = logging.getLogger(__name__)
MIB = 1024 * 1024


class BodyTooLarge(Exception):
    """Raised into the application from ``receive`` once the body passes the limit."""


# Without it the server would keep reading (and discarding) the rest of the body to reuse the connection.
CLOSE = {"Connection": "close"}


def too_large(limit: int) -> str:
    return (f"Request body too large: the limit is {limit / MIB:g} MiB (--max-request-mb); "
            "send smaller images or raise the limit.")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status, message = (413, too_large(self.max_bytes)) if declared.isdigit() else \
                (400, "Content-Length header is not a number.")
            await error_response(status, message, ("header", "content-length"), CLOSE)(scope, receive, send)
            return

        received = 0
        exceeded = False
        started = False  # whether the application had begun its response before the limit was passed

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(too_large(self.max_bytes))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # whatever the application answers to the aborted read (400, 500), the 413 replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:  # noqa: BLE001 - frameworks wrap BodyTooLarge in their own errors or exception groups
            if not exceeded:
                raise
            log.debug("request body over %d bytes aborted", self.max_bytes, exc_info=True)
        if exceeded and not started:
            await error_response(413, too_large(self.max_bytes), ("body",), CLOSE)(scope, receive, send)
