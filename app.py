"""Stable Studio entry point: parse flags, build the services, serve UI and API on one port.

Run through ``./launch.sh`` (which prepares the virtual environment); ``./launch.sh --help`` lists the flags.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from webui.cli import parse_settings

    settings = parse_settings(argv)  # --help exits here, before the heavy imports below
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from webui.server import create_app
    from webui.services.container import build_services

    services = build_services(settings)
    app = create_app(services)
    url = f"http://{'127.0.0.1' if settings.host == '127.0.0.1' else settings.host}:{settings.port}"
    print(f"Stable Studio running on {url}  (API docs: {url}/docs)", flush=True)
    if not services.registry.list():
        print(f"No checkpoint yet: put a .safetensors file in {settings.checkpoints_dir}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    services.queue.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
