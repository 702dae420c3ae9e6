"""Stable Studio entry point: parse flags, build the services, serve UI and API on one port.

Run through ``./launch.sh`` (which prepares the virtual environment); ``./launch.sh --help`` lists the flags.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from urllib.parse import urlsplit


def report_exposure(errors: list[str], warnings: list[str]) -> None:
    """Print exposure problems to stderr in a banner nobody scrolls past."""
    rule = "=" * 100
    for label, messages in (("ERROR", errors), ("WARNING", warnings)):
        for message in messages:
            print(f"{rule}\n{label}: {message}\n{rule}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from webui.api.security import exposure_problems
    from webui.cli import parse_settings

    settings = parse_settings(argv)  # --help exits here, before the heavy imports below
    if settings.scale_out is not None:
        from webui.scaleout.requirements import missing_ray

        if (problem := missing_ray()) is not None:
            print(problem, file=sys.stderr, flush=True)
            return 2
    # Decide before loading models or binding the port, so a refusal is immediate.
    errors, warnings = exposure_problems(settings)
    report_exposure(errors, warnings)
    if errors:
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from webui.api.hosts import HostError, HostPolicy
    from webui.errors import StudioError
    from webui.server import create_app
    from webui.services.container import build_services
    from webui.services.runtime_info import describe_runtime
    from webui.share import open_share_link

    restart_requested = threading.Event()

    def stop_server() -> None:
        server.should_exit = True
        # A graceful shutdown waits for open connections (pages keep event streams open): not for long.
        threading.Timer(5.0, lambda: setattr(server, "force_exit", True)).start()

    def restart() -> None:
        # "Apply and restart UI": end the server like Ctrl+C, then exec this same command line again (below).
        # Not at once: the reply saying so travels on an event stream the page may still be opening, and a
        # server that is shutting down accepts no new connections.
        restart_requested.set()
        threading.Timer(2.0, stop_server).start()

    try:
        services = build_services(settings, restart=restart)
    except StudioError as exc:  # e.g. --ray-address: the cluster or its replicas could not be reached or started
        report_exposure([str(exc)], [])
        return 2
    logging.getLogger("webui").info("Running on %s", describe_runtime(services))

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:  # type: ignore[no-untyped-def]
            # uvicorn waits for running requests before it returns; a refresh hashing a large checkpoint
            # would hold the exit for minutes, so stop hashing as soon as the signal arrives.
            services.registry.close()
            super().handle_exit(sig, frame)

    hosts = HostPolicy.from_settings(settings)  # kept here: the share link's host joins it once known
    server = Server(uvicorn.Config(create_app(services, hosts), host=settings.host, port=settings.port,
                                   log_level="warning"))
    shown_host = "127.0.0.1" if settings.host in ("127.0.0.1", "0.0.0.0") else settings.host
    url = f"http://{shown_host}:{settings.port}"

    def announce() -> None:
        print(f"Stable Studio running on {url}  (API docs: {url}/docs)", flush=True)
        if settings.host == "0.0.0.0":
            print("Listening on all network interfaces (--listen): reach it by this machine's IP address"
                  + (f" or by {', '.join(settings.allowed_hosts)}" if settings.allowed_hosts else
                     "; to use a host name, list it with --allowed-hosts"), flush=True)
        elif settings.allowed_hosts:
            print(f"Also answering to: {', '.join(settings.allowed_hosts)} (--allowed-hosts)", flush=True)
        if not services.registry.list():
            print(f"No checkpoint yet: put a .safetensors file in {settings.checkpoints_dir}", flush=True)
        if settings.share:
            try:
                link = open_share_link(settings.port)
                # The tunnel forwards the public name as Host: answer to it (and accept it as an Origin).
                hosts.add(urlsplit(link).hostname or "")
                print(f"Public share link: {link}", flush=True)
            except (RuntimeError, HostError) as exc:
                print(f"Could not create a share link ({exc}); serving locally only.", flush=True)

    def announce_when_started() -> None:
        while not server.started and not server.should_exit:
            threading.Event().wait(0.1)
        if server.started:
            announce()

    threading.Thread(target=announce_when_started, name="announce", daemon=True).start()
    try:
        server.run()
    finally:
        services.queue.shutdown()
        if services.scaleout is not None:
            services.scaleout.close()  # the replicas hold GPUs: removed with the front
        services.registry.close()  # also when run() ended without a signal
        services.jobs_store.close()
    if restart_requested.is_set():
        print("Restarting Stable Studio...", flush=True)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # keeps the interpreter's own options
    return 0


if __name__ == "__main__":
    sys.exit(main())
