"""A real HTTP server for acceptance tests: the app served by uvicorn in a daemon thread on a free localhost port.

Plain helpers (no pytest fixtures): the test modules wrap ``live_server`` in their own module-scoped fixtures.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import uvicorn

from tests.conftest import install, make_settings
from webui.models.manager import Loader
from webui.server import create_app
from webui.services.container import Services, build_services

START_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class LiveServer:
    services: Services
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.url}/sdapi/v1"


@contextmanager
def live_server(data_dir: Path, model_files: dict[str, Path], *, load: Loader | None = None,
                adapt: Callable[[Services], Services] | None = None, **settings_overrides) -> Iterator[LiveServer]:
    """Serve the app over ``data_dir`` (holding the "single" and "other" tiny checkpoints) until the block ends.

    ``load``: the session's shared tiny-model loader (the ``tiny_loader`` fixture), so no test reloads them.
    ``adapt``: returns the services the app is built over (e.g. ``dataclasses.replace`` with a cluster view)."""
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    services = build_services(make_settings(data_dir, **settings_overrides), load=load)
    try:
        services = adapt(services) if adapt else services  # the same queue: shut down below either way
        app = create_app(services)
        # Bind here and hand the socket to uvicorn: no window in which another process can take the port.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}",
                                  daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while not server.started:
                if not thread.is_alive():
                    raise RuntimeError("the test server exited before it started")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the test server did not start within {START_TIMEOUT_SECONDS}s")
                time.sleep(0.02)
            yield LiveServer(services, "127.0.0.1", port)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
    finally:
        services.queue.shutdown()
        if services.scaleout is not None:
            services.scaleout.close()
