"""Ray's token authentication for the front's connection (no Ray import here: it must run before Ray's)."""

from __future__ import annotations

import os


def use_token_if_present(address: str) -> None:
    """Join a cluster with token authentication when a token is at hand, as ``ray start`` does for the head.

    Without this, a front joining a cluster that requires the token retries forever, printing "InvalidAuthToken".
    Ray reads its authentication mode from the environment once, when it is imported, so this runs before the
    first ``import ray``; an explicit ``RAY_AUTH_MODE`` is left as the user set it. ``local`` starts its own
    cluster, which Ray protects with a token by default."""
    if address == "local" or os.environ.get("RAY_AUTH_MODE"):
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(path):
        os.environ["RAY_AUTH_MODE"] = "token"
