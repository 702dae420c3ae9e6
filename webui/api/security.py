"""Who may talk to the server: credentials, HTTP Basic auth for ``/sdapi``, exposure checks and the origin guard.

Pure Python plus Starlette's ASGI helpers (no gradio), so every rule here is testable without a server.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from webui.config import Settings

Credentials = tuple[tuple[str, str], ...]

API_PREFIXES = ("/sdapi", "/studio")  # A1111's API and the project's own
REALM = "Stable Studio API"
# Methods a browser lets any page send cross-site (forms, fetch no-cors): the ones a forged request can abuse.
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class CredentialError(ValueError):
    """A credential flag or file that cannot be read as ``user:password`` entries."""


# --- credentials ------------------------------------------------------------------------------------------------------

def parse_credentials(text: str, source: str) -> Credentials:
    """Read comma-separated ``user:password`` entries; ``source`` (a flag or ``file:line``) names them in errors."""
    pairs = []
    for index, item in enumerate(text.split(","), start=1):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            # The entry itself is not echoed: it may well be a password.
            raise CredentialError(f"{source}: entry {index} must look like user:password")
        pairs.append((user, password))
    return tuple(pairs)


def read_credentials_file(path: Path) -> Credentials:
    """One or more ``user:password`` entries per line (comma-separated); blank lines and ``#`` comments skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"cannot read credentials file {path}: {exc}") from None
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            pairs.extend(parse_credentials(line, source=f"{path}:{number}"))
    if not pairs:
        raise CredentialError(f"credentials file {path} holds no user:password entry")
    return tuple(pairs)


def credentials_match(credentials: Credentials, user: str, password: str) -> bool:
    """Constant-time check: every pair is compared, user and password alike, so timing leaks neither."""
    given_user, given_password = user.encode(), password.encode()  # compare_digest only takes ASCII str
    found = False
    for known_user, known_password in credentials:
        user_ok = secrets.compare_digest(known_user.encode(), given_user)
        password_ok = secrets.compare_digest(known_password.encode(), given_password)
        found |= user_ok & password_ok
    return found


def basic_auth_credentials(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic ...`` header, or None when absent or garbled."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


# --- exposure ---------------------------------------------------------------------------------------------------------

def exposure_problems(settings: Settings) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` about who can reach the server; any error means: refuse to start."""
    errors: list[str] = []
    warnings: list[str] = []
    if "*" in settings.cors_allow_origins:
        warnings.append("--cors-allow-origins '*' lets every web page you visit call this server from your browser.")
    exposed = _exposure(settings)
    if not exposed:
        return errors, warnings
    if not settings.gradio_auth and not settings.api_auth:
        if settings.insecure_no_auth:
            warnings.append(f"{exposed} WITHOUT any login (--insecure-no-auth): anyone who can reach it can "
                            "generate images, switch models and read your outputs.")
        else:
            errors.append(f"Refusing to start: {exposed} without any login.\n"
                          "Anyone who can reach it could generate images, switch models and read your outputs.\n"
                          "Add --gradio-auth USER:PASS (web UI) and --api-auth USER:PASS (/sdapi API),\n"
                          "or pass --insecure-no-auth to serve on the network without any login (dangerous).")
    elif not settings.api_auth:
        warnings.append(f"{exposed}: the web UI asks for a login but the /sdapi API is open to anyone "
                        "(add --api-auth USER:PASS).")
    elif not settings.gradio_auth:
        warnings.append(f"{exposed}: the /sdapi API asks for a login but the web UI and its Gradio API are open "
                        "to anyone (add --gradio-auth USER:PASS).")
    return errors, warnings


def _exposure(settings: Settings) -> str | None:
    """How the server is reachable beyond this machine, in words, or None when it is local only."""
    ways = []
    if settings.host not in LOCAL_HOSTS:
        ways.append(f"--listen serves on all network interfaces ({settings.host})")
    if settings.share:
        ways.append("--share opens a public link")
    return " and ".join(ways) or None


# --- HTTP -------------------------------------------------------------------------------------------------------------

def error_response(status: int, message: str, header: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # Same shape as the API's other errors ({"error", "detail": [...]}) so clients parse them alike.
    detail = [{"loc": ["header", header], "msg": message, "type": "security_error"}]
    return JSONResponse({"error": message, "detail": detail}, status_code=status, headers=headers)


def is_api_path(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in API_PREFIXES)


class ApiAuthMiddleware:
    """HTTP Basic auth on every path under ``/sdapi`` and ``/studio``: by prefix, so later routes are covered too."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_api_path(scope["path"]) and not self._authorized(scope):
            response = error_response(401, "Authentication required: send HTTP Basic credentials (--api-auth).",
                                      "authorization", {"WWW-Authenticate": f'Basic realm="{REALM}"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = basic_auth_credentials(Headers(scope=scope).get("authorization"))
        return given is not None and credentials_match(self.credentials, *given)


class OriginPolicy:
    """Which browser origins may send state-changing requests: the server's own, plus the configured CORS ones."""

    def __init__(self, allow_origins: tuple[str, ...] = (), allow_origin_regex: str | None = None) -> None:
        # Matched exactly as Starlette's CORSMiddleware matches them, so both agree on every origin.
        self.allow_all = "*" in allow_origins
        self.allow_origins = frozenset(allow_origins)
        self.allow_origin_regex = re.compile(allow_origin_regex) if allow_origin_regex else None

    def allows(self, origin: str, scope: Scope) -> bool:
        return (origin.lower() in _own_origins(scope) or self.allow_all or origin in self.allow_origins
                or bool(self.allow_origin_regex and self.allow_origin_regex.fullmatch(origin)))


def _own_origins(scope: Scope) -> set[str]:
    """``scheme://Host`` of the request itself, as the page that served it would name it."""
    headers = Headers(scope=scope)
    host = headers.get("host", "").lower()
    # Behind a TLS proxy the page is https while we see http. A cross-site page cannot add X-Forwarded-Proto
    # without a preflight, and it only changes the scheme, never the host, so trusting it is safe.
    schemes = {scope.get("scheme", "http"), headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()}
    return {f"{scheme}://{host}" for scheme in schemes if scheme}


class OriginGuardMiddleware:
    """Refuse state-changing requests sent by foreign web pages (CSRF); clients without an Origin pass."""

    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = Headers(scope=scope).get("origin") if scope["type"] == "http" else None
        if origin is not None and scope["method"] in STATE_CHANGING_METHODS and not self.policy.allows(origin, scope):
            response = error_response(403, f"Cross-origin request from {origin} refused: add it to "
                                           "--cors-allow-origins to allow it.", "origin")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install_security(app: Starlette, settings: Settings) -> None:
    """Add the middlewares to a Starlette/FastAPI ``app``; the last added runs first."""
    if settings.api_auth:
        app.add_middleware(ApiAuthMiddleware, credentials=settings.api_auth)
    app.add_middleware(OriginGuardMiddleware,
                       policy=OriginPolicy(settings.cors_allow_origins, settings.cors_allow_origins_regex))
    if settings.cors_allow_origins or settings.cors_allow_origins_regex:
        # Outermost, so preflights are answered before auth and refusals still carry CORS headers.
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_allow_origins),
                           allow_origin_regex=settings.cors_allow_origins_regex, allow_credentials=True,
                           allow_methods=["*"], allow_headers=["*"])
