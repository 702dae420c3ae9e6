"""Public share links through Gradio's tunnel service, for ``--share``."""

from __future__ import annotations

import secrets


def open_share_link(local_port: int) -> str:
    """Return the public URL, or raise RuntimeError with a one-line reason (no internet, no frpc binary...)."""
    from gradio import networking

    try:
        return networking.setup_tunnel("127.0.0.1", local_port, secrets.token_urlsafe(32), None, None)
    except Exception as exc:  # noqa: BLE001 - gradio raises several unrelated types here
        cause = exc.__cause__ or exc
        raise RuntimeError(f"{exc} ({type(cause).__name__}: {cause})".splitlines()[0]) from None
