"""Who may talk to the server: credentials, HTTP Basic auth for the API, exposure checks, the origin guard, the
security headers, and ``install_security`` which puts every HTTP guard (hosts, body limit, CORS) around the app.

Pure Python plus Starlette's ASGI helpers (no gradio), so every rule here is testable without a server.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from webui.api.body_limit import BodyLimitMiddleware
from webui.api.hosts import HostGuardMiddleware, HostPolicy
from webui.api.http_errors import error_response
from webui.config import Settings

Credentials = tuple[tuple[str, str], ...]

API_PREFIXES = ("/sdapi", "/studio", "/ext")  # A1111's API, the project's own, extensions' routes
# FastAPI's interactive docs describe the API, so they sit behind the API's login.
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
DOCS_ASSETS = "/docs/assets"  # the docs pages' Swagger UI and ReDoc files, served by this server
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
    # Each side without a login needs its own explicit opt-out; --insecure-no-auth opts out of both.
    ui_opt_out = settings.insecure_no_auth or settings.insecure_ui_no_auth
    api_opt_out = settings.insecure_no_auth or settings.insecure_api_no_auth
    if not settings.gradio_auth and not settings.api_auth:
        if ui_opt_out and api_opt_out:
            warnings.append(f"{exposed} WITHOUT any login (--insecure-no-auth): anyone who can reach it can "
                            "generate images, switch models and read your outputs.")
        else:
            errors.append(f"Refusing to start: {exposed} without any login.\n"
                          "Anyone who can reach it could generate images, switch models and read your outputs.\n"
                          "Add --gradio-auth USER:PASS (web UI) and --api-auth USER:PASS (/sdapi API),\n"
                          "or pass --insecure-no-auth to serve on the network without any login (dangerous).")
    elif not settings.api_auth:
        if api_opt_out:
            warnings.append(f"{exposed}: the web UI asks for a login but the /sdapi API is open to anyone "
                            "(--insecure-api-no-auth): they can generate images and switch models.")
        else:
            errors.append(f"Refusing to start: {exposed} and the web UI asks for a login, but the /sdapi API "
                          "(and its /docs) would be open to anyone: they could generate images and switch "
                          "models.\nAdd --api-auth USER:PASS, or pass --insecure-api-no-auth to leave the API "
                          "open (dangerous).")
    elif not settings.gradio_auth:
        if ui_opt_out:
            warnings.append(f"{exposed}: the /sdapi API asks for a login but the web UI and its Gradio API are open "
                            "to anyone (--insecure-ui-no-auth): they can generate images and read your outputs.")
        else:
            errors.append(f"Refusing to start: {exposed} and the /sdapi API asks for a login, but the web UI "
                          "and its Gradio API would be open to anyone: they could generate images and read your "
                          "outputs.\nAdd --gradio-auth USER:PASS, or pass --insecure-ui-no-auth to leave the UI "
                          "open (dangerous).")
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

def is_api_path(path: str) -> bool:
    return path in DOCS_PATHS or path.startswith(DOCS_ASSETS + "/") or \
        any(path == prefix or path.startswith(prefix + "/") for prefix in API_PREFIXES)


class ApiAuthMiddleware:
    """HTTP Basic auth on every path under ``/sdapi`` and ``/studio`` (by prefix, so later routes are covered too)
    and on the API docs."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_api_path(scope["path"]) and not self._authorized(scope):
            response = error_response(401, "Authentication required: send HTTP Basic credentials (--api-auth).",
                                      ("header", "authorization"), {"WWW-Authenticate": f'Basic realm="{REALM}"'})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        given = basic_auth_credentials(Headers(scope=scope).get("authorization"))
        return given is not None and credentials_match(self.credentials, *given)


class OriginPolicy:
    """Which browser origins may send state-changing requests (and open websockets).

    Allowed: the exact address the request was sent to, once the Host policy accepts it (a page we served
    ourselves); a name the user listed (--allowed-hosts, the share link) over http or https with any port, since
    reverse proxies put their own in front; and the configured CORS origins. Comparing with the request's own
    Host alone would be useless against DNS rebinding, where Host is the attacker's name: it counts here only
    because the Host guard has refused such names before.
    """

    def __init__(self, hosts: HostPolicy, allow_origins: tuple[str, ...] = (),
                 allow_origin_regex: str | None = None) -> None:
        self.hosts = hosts
        # Matched exactly as Starlette's CORSMiddleware matches them, so both agree on every origin.
        self.allow_all = "*" in allow_origins
        self.allow_origins = frozenset(allow_origins)
        self.allow_origin_regex = re.compile(allow_origin_regex) if allow_origin_regex else None

    def allows(self, origin: str, scope: Scope) -> bool:
        return (self._own(origin, scope) or self._listed(origin) or self.allow_all or origin in self.allow_origins
                or bool(self.allow_origin_regex and self.allow_origin_regex.fullmatch(origin)))

    def _own(self, origin: str, scope: Scope) -> bool:
        host = Headers(scope=scope).get("host")
        return self.hosts.problem(host) is None and origin.lower() in _own_origins(scope)

    def _listed(self, origin: str) -> bool:
        try:
            parts = urlsplit(origin)
            hostname = parts.hostname
        except ValueError:  # a malformed port or IPv6 literal
            return False
        return parts.scheme.lower() in ("http", "https") and bool(hostname) and self.hosts.is_listed(hostname)


def _own_origins(scope: Scope) -> set[str]:
    """``scheme://Host`` of the request itself, as the page that served it would name it."""
    headers = Headers(scope=scope)
    host = headers.get("host", "").lower()
    # Behind a TLS proxy the page is https while we see http. A cross-site page cannot add X-Forwarded-Proto
    # without a preflight, and it only changes the scheme, never the host, so trusting it is safe.
    schemes = {scope.get("scheme", "http"), headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()}
    schemes = {{"ws": "http", "wss": "https"}.get(scheme, scheme) for scheme in schemes}  # websocket scopes
    return {f"{scheme}://{host}" for scheme in schemes if scheme}


class OriginGuardMiddleware:
    """Refuse state-changing requests and websockets opened by foreign web pages (CSRF, cross-site websocket
    hijacking); clients without an Origin (curl, scripts) pass, and so do reads, which CORS keeps unreadable."""

    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "websocket" or (scope["type"] == "http"
                                                   and scope["method"] in STATE_CHANGING_METHODS)
        origin = Headers(scope=scope).get("origin") if guarded else None
        if origin is not None and not self.policy.allows(origin, scope):
            if scope["type"] == "websocket":
                await WebSocketClose(code=1008, reason="Origin not allowed")(scope, receive, send)
            else:
                await error_response(403, f"Cross-origin request from {origin[:100]} refused: add it to "
                                          "--cors-allow-origins to allow it.", ("header", "origin"))(
                    scope, receive, send)
            return
        await self.app(scope, receive, send)


# Set on every response (UI, Gradio API, REST, errors) unless the response set its own value.
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",  # no framing: clickjacking the Generate or Settings buttons
    # Referrers reach only our own routes. Not no-referrer: under it the Fetch standard sends "Origin: null" on a
    # page's own non-CORS POSTs (forms), which the origin guard refuses.
    "referrer-policy": "same-origin",
    # Other sites cannot even embed our responses (<img src=".../gradio_api/file=...">); CORS fetches are unaffected.
    "cross-origin-resource-policy": "same-origin",
}
FRAME_ANCESTORS = "frame-ancestors 'none'"  # the CSP form of X-Frame-Options; no script policy (Gradio needs inline)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                policy = headers.get("content-security-policy")
                if policy is None:
                    headers["content-security-policy"] = FRAME_ANCESTORS
                elif "frame-ancestors" not in policy:
                    headers["content-security-policy"] = f"{policy.rstrip('; ')}; {FRAME_ANCESTORS}"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_security(app: Starlette, settings: Settings, hosts: HostPolicy | None = None) -> HostPolicy:
    """Add the HTTP guards to a Starlette/FastAPI ``app`` (the last added runs first) and return the Host policy,
    to which the share link's host can be added once it is known. Outermost first: security headers, Host check,
    CORS, body limit, origin guard, API auth."""
    hosts = hosts if hosts is not None else HostPolicy.from_settings(settings)
    if settings.api_auth:
        app.add_middleware(ApiAuthMiddleware, credentials=settings.api_auth)
    app.add_middleware(OriginGuardMiddleware,
                       policy=OriginPolicy(hosts, settings.cors_allow_origins, settings.cors_allow_origins_regex))
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_request_bytes)
    # Always installed, even with no origin allowed: Gradio then leaves CORS to it. Without it, Gradio's own CORS
    # middleware answers any origin with credentials whenever the Host is not a loopback name (e.g. with --listen,
    # a page on any site could read /config and the user's images through the LAN address).
    # Outside auth and the body limit, so preflights are answered before auth and refusals carry CORS headers.
    app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_allow_origins),
                       allow_origin_regex=settings.cors_allow_origins_regex, allow_credentials=True,
                       allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(HostGuardMiddleware, policy=hosts)
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: refusals by the guards above carry the headers too
    return hosts
