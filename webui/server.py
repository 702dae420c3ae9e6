"""One FastAPI app serving the REST API and the Gradio UI on the same port, over the same services."""

from __future__ import annotations

import gradio as gr
from gradio.utils import get_upload_folder as gradio_upload_folder
from fastapi import APIRouter, FastAPI
from fastapi_offline import FastAPIOffline

from webui import VERSION
from webui.api.extensions import build_extensions_router
from webui.api.extra_networks import build_extra_networks_router
from webui.api.extras import build_extras_router
from webui.api.hosts import HostPolicy
from webui.api.jobs import build_jobs_router
from webui.api.listings import build_listings_router
from webui.api.sdapi import build_router, install_error_handlers
from webui.api.security import API_PREFIXES, DOCS_ASSETS, install_security
from webui.api.studio import build_studio_router
from webui.api.training import build_training_router
from webui.api.merge import build_merge_router
from webui.api.replicas import build_replicas_router
from webui.extensions.hooks import Hooks
from webui.services.container import Services
from webui.ui.app import CSS, build_ui
from webui.ui.private_events import PrivateEventsMiddleware
from webui.ui.prompt_tools import page_js
from webui.ui.upload_guard import UploadGuardMiddleware


def create_app(services: Services, hosts: HostPolicy | None = None) -> FastAPI:
    """The whole app; ``hosts`` (built from the settings when None) is the Host allow-list, which the caller keeps
    to add the share link's host once it is known."""
    # FastAPIOffline: /docs and /redoc load Swagger UI and ReDoc from this server; FastAPI's own pages load them from
    # a CDN, so they were blank offline.
    app = FastAPIOffline(title="Stable Studio API", version=VERSION, static_url=DOCS_ASSETS,
                         description="A1111-compatible `/sdapi/v1` routes over the same job queue as the web UI.")
    install_error_handlers(app)
    app.include_router(build_router(services))
    app.include_router(build_listings_router(services))
    app.include_router(build_extras_router(services))
    app.include_router(build_studio_router(services))  # all routers before the Gradio mount at "/", which catches the rest
    app.include_router(build_jobs_router(services))
    app.include_router(build_training_router(services))
    app.include_router(build_merge_router(services))
    app.include_router(build_extra_networks_router(services))
    app.include_router(build_extensions_router(services))
    app.include_router(build_replicas_router(services))
    if services.extensions is not None:  # /ext/<name>/ (a raising on_app_started is logged; the app starts)
        Hooks(services.extensions).app_started(app, APIRouter)
    demo = build_ui(services)
    demo.queue(max_size=services.settings.limits.queue_size * 4)
    auth = list(services.settings.gradio_auth) or None
    app = gr.mount_gradio_app(app, demo, path="/", auth=auth, css=CSS, show_error=True,
                              js=page_js(api_auth=bool(services.settings.api_auth)),
                              run_history=False,  # Gradio's run history can upload runs to a Hub bucket: never
                              server_name=services.settings.host, server_port=services.settings.port,
                              max_file_size=services.settings.limits.max_upload_bytes)
    # Gradio events may only name files uploaded to Gradio (see upload_guard for why Gradio does not check here).
    app.add_middleware(PrivateEventsMiddleware)  # inside the upload guard: a bad file reference is still a 403
    app.add_middleware(UploadGuardMiddleware, upload_root=gradio_upload_folder(), skip_prefixes=API_PREFIXES,
                       max_body=services.settings.limits.max_request_bytes)
    # Around the whole app, Gradio included: Host check, body limit, API auth by path, origin guard, headers.
    install_security(app, services.settings, hosts)
    return app
