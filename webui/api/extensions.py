"""``/studio/v1/extensions``: the Extensions tab as REST (A1111 has no such routes). Thin over ExtensionsService.

Changes answer 403 on a server reachable from the network without ``--enable-insecure-extension-access``, and
422 naming the field for a bad URL, branch, folder or name.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable

import anyio
from fastapi import APIRouter, BackgroundTasks
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from webui.api.http_errors import error_response
from webui.errors import InvalidRequest, StudioError
from webui.extensions.installer import InstallRequest
from webui.services.container import Services
from webui.services.extensions import RESTART_NOTE, ExtensionAccessDenied, ExtensionsService


class InstallBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="https git URL of the extension's repository")
    branch: str = Field("", description="branch to clone; empty: the repository's default")
    folder: str = Field("", description="folder name in extensions/; empty: the URL's last part without .git")
    install_requirements: bool = Field(False, description="pip-install the manifest's requirements into the app's "
                                                          "environment (see POST .../check for what that adds)")


async def _run(call: Callable[..., Any], *args: Any) -> Any:
    """The service call in a worker thread (git and pip take a while); its refusals as HTTP errors."""
    try:
        return await anyio.to_thread.run_sync(call, *args)
    except ExtensionAccessDenied as exc:
        return error_response(403, str(exc), ("extensions",))
    except InvalidRequest:
        raise  # the API's 422 handler names the field
    except StudioError as exc:
        return error_response(409, str(exc), ("extensions",))


def _manifest(manifest) -> dict[str, Any]:
    return {"name": manifest.name, "version": manifest.version, "api": manifest.api,
            "description": manifest.description, "url": manifest.url, "requirements": list(manifest.requirements),
            "tags": list(manifest.tags), "license": manifest.license}


def build_extensions_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/studio/v1", tags=["extensions"])

    def admin() -> ExtensionsService:
        if services.extension_admin is None:
            raise StudioError("extensions are not available in this process")
        return services.extension_admin

    @router.get("/extensions", summary="Installed extensions: status, load time, errors, and changes pending a restart")
    async def listing() -> Any:
        rows = await _run(lambda: admin().installed())
        return rows if isinstance(rows, JSONResponse) else [asdict(r) for r in rows]

    @router.get("/extensions/index", summary="Available extensions from the configured index (--extensions-index)")
    async def index(q: str = "", refresh: bool = False) -> Any:
        found = await _run(lambda: admin().available(q, refresh))
        if isinstance(found, JSONResponse):
            return found
        return {"message": found.message, "extensions": [asdict(e) for e in found.entries]}

    @router.post("/extensions/check", summary="Clone to a temp folder and show the manifest and what pip would "
                                              "install; nothing is kept")
    async def check(body: InstallBody) -> Any:
        plan = await _run(lambda: admin().check_install(InstallRequest(**body.model_dump())))
        if isinstance(plan, JSONResponse):
            return plan
        return {"folder": plan.folder, "manifest": _manifest(plan.manifest),
                "requirements": list(plan.requirements.lines), "would_install": list(plan.requirements.would_install),
                "note": plan.requirements.note}

    @router.post("/extensions/install", summary="Install from an https git URL (loads after a restart)")
    async def install(body: InstallBody) -> Any:
        done = await _run(lambda: admin().install(InstallRequest(**body.model_dump())))
        if isinstance(done, JSONResponse):
            return done
        return {"folder": done.folder, "manifest": _manifest(done.manifest),
                "requirements_installed": list(done.requirements_installed),
                "requirements_skipped": list(done.requirements_skipped), "pending": "installed: loads after restart"}

    @router.post("/extensions/{name}/enable", summary="Enable (persisted; applies after a restart)")
    async def enable(name: str) -> Any:
        row = await _run(lambda: admin().set_enabled(name, True))
        return row if isinstance(row, JSONResponse) else asdict(row)

    @router.post("/extensions/{name}/disable", summary="Disable without uninstalling (persisted; after a restart)")
    async def disable(name: str) -> Any:
        row = await _run(lambda: admin().set_enabled(name, False))
        return row if isinstance(row, JSONResponse) else asdict(row)

    @router.get("/extensions/{name}/updates", summary="git fetch, then the commits an update would bring")
    async def updates(name: str) -> Any:
        found = await _run(lambda: admin().updates(name))
        return found if isinstance(found, JSONResponse) else {"name": name, "commits": list(found.commits)}

    @router.post("/extensions/{name}/update", summary="git fetch and fast-forward; the commits that came in")
    async def update(name: str) -> Any:
        found = await _run(lambda: admin().update(name))
        return found if isinstance(found, JSONResponse) else {"name": name, "commits": list(found.commits)}

    @router.delete("/extensions/{name}", summary="Remove a user extension's folder")
    async def remove(name: str) -> Any:
        done = await _run(lambda: admin().remove(name))
        return done if isinstance(done, JSONResponse) else {"name": name, "pending": "removed: gone after restart"}

    @router.post("/restart", status_code=202, summary=f"Apply and restart: {RESTART_NOTE}")
    async def restart(tasks: BackgroundTasks) -> Any:
        refused = await _run(lambda: admin().check_access())
        if isinstance(refused, JSONResponse):
            return refused
        if not admin().restart_available:
            return error_response(409, "Restarting is not available in this process; restart the server by hand",
                                  ("restart",))
        tasks.add_task(admin().restart)  # after the answer is sent
        return {"restarting": True, "note": RESTART_NOTE}

    return router
