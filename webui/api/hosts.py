"""Which ``Host`` names the server answers to: the defence against DNS rebinding.

A rebinding page is served from a DNS name the attacker controls (``rebind.example``) that later resolves to
127.0.0.1, so the browser sends ``Host: rebind.example`` and treats our answers as that page's own. Refusing every
name we were not told about closes that door. IP literals cannot be rebound (the browser sends the address it
connected to), so they are only checked against the bind address. Ports are not checked: the attacker's page has to
use our port anyway, and proxies may put theirs in the header.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

from webui.api.http_errors import error_response
from webui.config import Settings

LOOPBACK_NAMES = frozenset({"localhost"})
# One DNS name (letters, digits, "-", "_", dots) with an optional leading "." meaning "and every subdomain".
NAME_PATTERN = re.compile(r"\.?[a-z0-9_-]+(\.[a-z0-9_-]+)*")
PORT_PATTERN = re.compile(r"[0-9]{1,5}")
MAX_SHOWN = 100  # characters of a refused Host echoed back in the error


class HostError(ValueError):
    """A ``--allowed-hosts`` entry or a share host that is not a host name or an IP address."""


def normalize_name(text: str) -> str:
    """Lower case, one trailing dot off (``studio.lan.`` is the same name), IP addresses in canonical form
    without brackets (``[FE80::0001]`` is ``fe80::1``)."""
    name = text.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    address = ip_literal(name)
    return str(address) if address is not None else name.removesuffix(".")


def ip_literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def parse_allowed_host(text: str) -> str:
    """One ``--allowed-hosts`` entry as stored: a name, ``.domain`` (it and its subdomains) or an IP address."""
    name = normalize_name(text)
    if ip_literal(name) is None and (not NAME_PATTERN.fullmatch(name) or name.startswith("*")):
        raise HostError(f"{text!r} is not a host name (like studio.lan or .example.com) or an IP address "
                        "(no scheme, port or path)")
    return name


def split_host_header(value: str) -> str | None:
    """The name or address of a ``Host`` header (port dropped), normalized; None when malformed."""
    value = value.strip()
    if value.startswith("["):  # [IPv6]:port
        address, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and PORT_PATTERN.fullmatch(rest[1:]))):
            return None
        return normalize_name(address) if isinstance(ip_literal(address), ipaddress.IPv6Address) else None
    name, colon, port = value.partition(":")
    if colon and not PORT_PATTERN.fullmatch(port):
        return None  # also refuses unbracketed IPv6, which no browser sends
    name = normalize_name(name)
    plain_name = NAME_PATTERN.fullmatch(name) is not None and not name.startswith(".")
    return name if plain_name or ip_literal(name) is not None else None


class HostPolicy:
    """The names this server answers to: loopback always, ``--allowed-hosts``, and share hosts added at run time.

    ``any_ip`` (set with ``--listen``) accepts every IP-literal Host, so LAN users can type the machine's address;
    bound to loopback only loopback addresses are accepted. ``add`` may be called from another thread (the share
    link is known only after start-up): it swaps in new frozen sets under a lock, and readers never lock.
    """

    def __init__(self, names: Iterable[str] = (), *, any_ip: bool = False) -> None:
        self.any_ip = any_ip
        self._lock = threading.Lock()
        self._exact: frozenset[str] = frozenset()
        self._suffixes: frozenset[str] = frozenset()
        for name in names:
            self.add(name)

    @classmethod
    def from_settings(cls, settings: Settings) -> HostPolicy:
        bind = ip_literal(settings.host)
        loopback = settings.host == "localhost" or (bind is not None and bind.is_loopback)
        return cls(settings.allowed_hosts, any_ip=not loopback)

    def add(self, host: str) -> None:
        """Answer to ``host`` too (a name, ``.domain`` or an IP address); raises HostError when it is none."""
        name = parse_allowed_host(host)
        with self._lock:
            if name.startswith("."):
                self._suffixes = self._suffixes | {name}
            else:
                self._exact = self._exact | {name}

    def is_listed(self, name: str) -> bool:
        """Whether ``name`` was configured by the user (flag or share link), as opposed to merely loopback."""
        name = normalize_name(name)
        return name in self._exact or any(name == suffix[1:] or name.endswith(suffix) for suffix in self._suffixes)

    def allows(self, name: str) -> bool:
        """Whether a request whose Host names ``name`` (already split from its port) may be answered."""
        address = ip_literal(name)
        if address is not None:
            return address.is_loopback or self.any_ip or name in self._exact
        return name in LOOPBACK_NAMES or self.is_listed(name)

    def problem(self, host_header: str | None) -> tuple[int, str] | None:
        """``(status, message)`` refusing a Host header value, or None when it is allowed."""
        if not host_header:
            return 400, "Host header missing: send the name you reach this server by."
        name = split_host_header(host_header)
        if name is None:
            return 400, f"Host header malformed: {host_header[:MAX_SHOWN]!r}."
        if not self.allows(name):
            # Not "unknown host": the message must help the user who typed a LAN name, not only refuse.
            return 421, (f"Host {name[:MAX_SHOWN]!r} is not served here (DNS rebinding protection): start with "
                         f"--allowed-hosts {name[:MAX_SHOWN]} to reach this server by that name.")
        return None


class HostGuardMiddleware:
    """Refuse HTTP requests and websockets whose ``Host`` the policy does not allow (421, or 400 when malformed)."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = self.policy.problem(Headers(scope=scope).get("host"))
            if refusal is not None:
                if scope["type"] == "websocket":
                    # 1008: policy violation; the reason stays short and fixed (close reasons are capped at 123 bytes).
                    await WebSocketClose(code=1008, reason="Host not allowed")(scope, receive, send)
                else:
                    await error_response(refusal[0], refusal[1], ("header", "host"))(scope, receive, send)
                return
        await self.app(scope, receive, send)
