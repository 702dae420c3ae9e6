"""One FastAPI app serving the REST API and the Gradio UI on the same port, over the same services."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from webui import VERSION
from webui.api.hosts import HostPolicy
from webui.api.listings import build_listings_router
from webui.api.sdapi import build_router, install_error_handlers
from webui.api.security import install_security
from webui.api.studio import build_studio_router
from webui.services.container import Services
from webui.ui.app import CSS, build_ui


def create_app(services: Services, hosts: HostPolicy | None = None) -> FastAPI:
    """The whole app; ``hosts`` (built from the settings when None) is the Host allow-list, which the caller keeps
    to add the share link's host once it is known."""
    app = FastAPI(title="Stable Studio API", version=VERSION,
                  description="A1111-compatible `/sdapi/v1` routes over the same job queue as the web UI.")
    install_error_handlers(app)
    app.include_router(build_router(services))
    app.include_router(build_listings_router(services))
    app.include_router(build_studio_router(services))  # all routers before the Gradio mount at "/", which catches the rest
    demo = build_ui(services)
    demo.queue(max_size=services.settings.limits.queue_size * 4)
    auth = list(services.settings.gradio_auth) or None
    app = gr.mount_gradio_app(app, demo, path="/", auth=auth, css=CSS, show_error=True,
                              server_name=services.settings.host, server_port=services.settings.port,
                              max_file_size=services.settings.limits.max_upload_bytes)
    # Around the whole app, Gradio included: Host check, body limit, API auth by path, origin guard, headers.
    install_security(app, services.settings, hosts)
    return app
