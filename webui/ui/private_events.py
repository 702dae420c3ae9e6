"""The web UI's Gradio events are not a public API: refuse calling them by name.

Gradio serves every event under ``/gradio_api/call/<name>``, ``/run/<name>`` and ``/api/<name>`` with positional
parameters in widget-creation order, even events marked ``api_visibility="private"`` (hidden from its docs, still
callable). A client built on those would break whenever a widget is added. The browser joins the queue
(``/gradio_api/queue/join``) and never uses these routes; clients use the REST API (``/sdapi/v1``, ``/studio/v1``).
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

BY_NAME = ("/gradio_api/call/", "/gradio_api/run/", "/gradio_api/api/")
MESSAGE = ("The web UI's events are not an API. Use the REST API: /sdapi/v1 (A1111-compatible) and /studio/v1; "
           "see /docs.")


class PrivateEventsMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(BY_NAME):
            await JSONResponse({"error": MESSAGE}, status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)
