"""The HTTP surface as a web page in the user's browser would try it: DNS rebinding (Host), foreign origins,
cross-origin reads, framing and sniffing (headers), the API docs behind the API login, and bodies too large to
parse. Every test goes through the whole app (Gradio mounted in FastAPI) built by ``create_app``."""

from __future__ import annotations

import re

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from tests.conftest import make_settings
from tests.test_security import API_LOGIN, UI_LOGIN, basic
from webui.api.hosts import HostPolicy
from webui.cli import parse_settings
from webui.config import Limits
from webui.server import create_app
from webui.services.container import build_services

LOOPBACK = "http://127.0.0.1:7860"
LAN = "http://192.168.1.5:7860"  # what a LAN user types to reach a --listen server
REQUEST_LIMIT = 64 * 1024
UPLOAD_LIMIT = 1024
CHUNK = 16 * 1024
PAGES = ["/", "/config", "/gradio_api/info", "/sdapi/v1/options", "/docs"]
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY",
                    "content-security-policy": "frame-ancestors 'none'", "referrer-policy": "same-origin",
                    "cross-origin-resource-policy": "same-origin"}


@contextmanager
def serve(data_dir: Path, base_url: str = LOOPBACK, hosts: HostPolicy | None = None,
          **settings) -> Iterator[TestClient]:
    limits = Limits(max_width=512, max_height=512, queue_size=8, max_request_bytes=REQUEST_LIMIT,
                    max_upload_bytes=UPLOAD_LIMIT)
    services = build_services(make_settings(data_dir, limits=limits, **settings))
    try:
        with TestClient(create_app(services, hosts), base_url=base_url) as client:
            yield client
    finally:
        services.queue.shutdown()


@pytest.fixture(scope="module")
def share_hosts() -> HostPolicy:
    return HostPolicy()


@pytest.fixture(scope="module")
def local(tmp_path_factory, share_hosts) -> Iterator[TestClient]:
    """The default: bound to loopback, no login."""
    with serve(tmp_path_factory.mktemp("local"), hosts=share_hosts) as client:
        yield client


@pytest.fixture(scope="module")
def listening(tmp_path_factory) -> Iterator[TestClient]:
    with serve(tmp_path_factory.mktemp("listening"), base_url=LAN, host="0.0.0.0", insecure_no_auth=True,
               allowed_hosts=("studio.lan", ".example.org")) as client:
        yield client


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[TestClient]:
    with serve(tmp_path_factory.mktemp("secured"), api_auth=API_LOGIN, gradio_auth=UI_LOGIN) as client:
        yield client


def assert_refused(response, status: int, loc: list[str], *words: str) -> None:
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert body["detail"][0]["loc"] == loc
    for word in words:
        assert word in body["error"]


# --- DNS rebinding: the Host header -----------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "localhost.evil.example",
                                  "evil.example:7860", "testserver", "studio.lan", "192.168.1.5:7860", "[::2]:7860",
                                  "[fe80::1]"])
def test_loopback_server_refuses_foreign_host_names_on_every_surface(local, host):
    for path in PAGES:
        response = local.get(path, headers={"Host": host})
        assert_refused(response, 421, ["header", "host"], "--allowed-hosts", "rebinding")
        assert "gradio_config" not in response.text and "components" not in response.text


@pytest.mark.parametrize("host", ["127.0.0.1:7860", "127.0.0.1", "localhost:7860", "localhost:3000", "LOCALHOST:7860",
                                  "localhost.:7860", "[::1]:7860", "[::1]", "127.0.0.2:7860"])
def test_loopback_server_answers_loopback_hosts_with_any_port(local, host):
    for path in PAGES:
        assert local.get(path, headers={"Host": host}).status_code == 200, path


@pytest.mark.parametrize("host", ["", "localhost:port", "[::1", "[::1]x", "::1", "a b", "local/host", "[evil]:80",
                                  ".example.org"])
def test_malformed_host_is_a_clear_400(local, host):
    assert_refused(local.get("/config", headers={"Host": host}), 400, ["header", "host"], "Host header")


def test_missing_host_is_refused(local):
    status, body, _ = asgi_call(local, "GET", "/config", [], [])
    assert status == 400 and "Host header missing" in json.loads(body)["error"]


def test_rebinding_page_cannot_change_options_or_call_gradio_events(local):
    before = local.get("/sdapi/v1/options").json()
    rebind = {"Host": "rebind.example:7860", "Origin": "http://rebind.example:7860"}
    assert_refused(local.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}, headers=rebind),
                   421, ["header", "host"])
    for path in ("/gradio_api/queue/join", "/gradio_api/call/png_info", "/gradio_api/run/png_info",
                 "/gradio_api/upload"):
        assert local.post(path, json={"data": []}, headers=rebind).status_code == 421, path
    assert local.get("/sdapi/v1/options").json() == before


def test_logins_do_not_open_a_rebound_host(secured):
    # A rebinding page runs in the user's browser, which holds the UI cookie and may hold the API login.
    assert secured.post("/login", data={"username": "bob", "password": "hunter2"}).status_code == 200
    try:
        for path in ("/config", "/gradio_api/info", "/sdapi/v1/options", "/docs"):
            assert secured.get(path, headers=basic(*API_LOGIN[0])).status_code == 200, path  # logged in to both
            rebound = secured.get(path, headers={"Host": "rebind.example:7860", **basic(*API_LOGIN[0])})
            assert_refused(rebound, 421, ["header", "host"])
    finally:
        secured.cookies.clear()  # the module's other tests expect a client without the UI login


def test_websockets_are_checked_for_host_and_origin(local):
    for headers in ({"Host": "rebind.example:7860"}, {"Origin": "https://evil.example"}, {"Origin": "null"}):
        with pytest.raises(WebSocketDisconnect) as refused:
            with local.websocket_connect("/gradio_api/ws", headers=headers):
                pass
        assert refused.value.code == 1008, headers


@pytest.mark.parametrize("host", ["192.168.1.5:7860", "10.0.0.7", "[fe80::1]:7860", "studio.lan:7860", "STUDIO.LAN.",
                                  "example.org", "a.b.example.org:443", "localhost:7860", "127.0.0.1"])
def test_listen_accepts_ip_addresses_and_the_listed_names(listening, host):
    for path in PAGES:
        assert listening.get(path, headers={"Host": host}).status_code == 200, path


@pytest.mark.parametrize("host", ["evil.example", "studio.lan.evil.example", "notexample.org", "example.org.evil",
                                  "192.168.1.5.nip.io:7860", "studiolan"])
def test_listen_refuses_names_that_are_not_listed(listening, host):
    for path in PAGES:
        assert_refused(listening.get(path, headers={"Host": host}), 421, ["header", "host"])


def test_share_host_is_answered_once_registered_at_run_time(local, share_hosts):
    share = "d1e2f3a4b5.gradio.live"
    assert local.get("/config", headers={"Host": share}).status_code == 421
    share_hosts.add(share)  # what app.py does once open_share_link returns
    assert local.get("/config", headers={"Host": share}).status_code == 200
    # The page served through the link posts with its own origin, and the tunnel may keep or rewrite Host.
    for host in (share, "127.0.0.1:7860"):
        response = local.post("/sdapi/v1/interrupt", headers={"Host": host, "Origin": f"https://{share}"})
        assert response.status_code == 200
    assert local.get("/config", headers={"Host": "other.gradio.live"}).status_code == 421


# --- Origin: who may change state -------------------------------------------------------------------------------------

@pytest.mark.parametrize("origin, status", [
    ("http://127.0.0.1:7860", 200),  # the page we served
    (None, 200),  # curl and scripts send no Origin
    ("http://rebind.example:7860", 403),  # a rebinding page whose Host was rewritten by a proxy
    ("http://localhost:7860", 403),  # another loopback name: not the address this request was sent to
    ("http://127.0.0.1:3000", 403),  # another local web app
    ("null", 403),  # sandboxed iframes, file:// pages
    ("https://evil.example", 403),
    ("http://127.0.0.1:7860.evil.example", 403),
])
def test_origin_must_be_the_served_address_or_a_listed_one(local, origin, status):
    headers = {"Origin": origin} if origin else {}
    response = local.post("/sdapi/v1/interrupt", headers=headers)
    assert response.status_code == status
    if status == 403:
        assert_refused(response, 403, ["header", "origin"], "--cors-allow-origins")
    # The same rule holds for Gradio's own routes (the login form, event calls).
    login = local.post("/login", data={"username": "x", "password": "y"}, headers=headers)
    assert (login.status_code == 403) == (status == 403)


@pytest.mark.parametrize("host, origin, status", [
    ("192.168.1.5:7860", "http://192.168.1.5:7860", 200),  # the page we served, by IP
    ("127.0.0.1:7860", "https://studio.lan", 200),  # a TLS proxy named studio.lan that rewrites Host
    ("studio.lan", "http://studio.lan:8080", 200),  # a listed name, any port
    ("192.168.1.5:7860", "https://photos.example.org", 200),  # .example.org covers subdomains
    ("192.168.1.5:7860", "http://203.0.113.9:7860", 403),  # any page served by IP: IPs are Hosts, never origins
    ("192.168.1.5:7860", "ftp://studio.lan", 403),
    ("192.168.1.5:7860", "http://studio.lan.evil.example", 403),
    ("192.168.1.5:7860", "http://[::1", 403),  # malformed
])
def test_listen_origins_are_the_served_address_and_the_listed_names(listening, host, origin, status):
    response = listening.post("/sdapi/v1/interrupt", headers={"Host": host, "Origin": origin})
    assert response.status_code == status


def test_foreign_pages_cannot_read_gradio_routes_through_a_lan_address(listening):
    # Gradio's own CORS middleware echoes any Origin with credentials when Host is not a loopback name; it must
    # not be the one answering.
    foreign = {"Origin": "https://evil.example"}
    for path in ("/config", "/gradio_api/info", "/sdapi/v1/options"):
        response = listening.get(path, headers=foreign)
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers, path
    preflight = listening.options("/gradio_api/queue/join", headers={**foreign,
                                                                     "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


# --- security headers -------------------------------------------------------------------------------------------------

def test_security_headers_on_ui_api_gradio_and_error_responses(local):
    upload = local.post("/gradio_api/upload", files={"files": ("a.txt", b"hello", "text/plain")})
    assert upload.status_code == 200
    responses = {
        "ui": local.get("/"),
        "gradio config": local.get("/config"),
        "gradio api": local.get("/gradio_api/info"),
        "gradio file": local.get(f"/gradio_api/file={upload.json()[0]}"),
        "rest": local.get("/sdapi/v1/samplers"),
        "422": local.post("/sdapi/v1/txt2img", json={"width": 100}),
        "404": local.get("/sdapi/v1/no-such-route"),
        "421": local.get("/", headers={"Host": "evil.example"}),
        "403": local.post("/sdapi/v1/interrupt", headers={"Origin": "https://evil.example"}),
        "413": local.post("/sdapi/v1/txt2img", content=b"x" * (REQUEST_LIMIT + 1)),
    }
    assert responses["gradio file"].status_code == 200 and responses["gradio file"].content == b"hello"
    assert responses["422"].status_code == 422 and responses["404"].status_code == 404
    for name, response in responses.items():
        assert {key: response.headers.get(key) for key in SECURITY_HEADERS} == SECURITY_HEADERS, name


def test_security_headers_on_login_refusals(secured):
    for response in (secured.get("/sdapi/v1/options"), secured.get("/config")):
        assert response.status_code == 401
        assert response.headers["x-frame-options"] == "DENY"


# --- the API docs -----------------------------------------------------------------------------------------------------

DOCS = ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/docs/assets/swagger-ui-bundle.js"]


def test_api_docs_need_the_api_login(secured):
    for path in DOCS:
        assert_refused(secured.get(path), 401, ["header", "authorization"], "--api-auth")
        assert secured.get(path, headers=basic(*UI_LOGIN[0])).status_code == 401
        assert secured.get(path, headers=basic(*API_LOGIN[0])).status_code == 200
    assert "/sdapi/v1/txt2img" in secured.get("/openapi.json", headers=basic(*API_LOGIN[0])).json()["paths"]


def test_api_docs_are_as_open_as_the_api(local):
    for path in DOCS:
        assert local.get(path).status_code == 200


def test_api_docs_load_nothing_from_outside_the_server(local):
    """Offline, a CDN-hosted Swagger UI is a blank page: every script and stylesheet comes from this server."""
    page = local.get("/docs").text
    assets = re.findall(r'(?:src|href)=["\']([^"\']+)', page)
    assert assets and all(url.startswith("/") for url in assets), assets
    for url in assets:
        assert local.get(url).status_code == 200, url
    assert "SwaggerUIBundle" in local.get("/docs/assets/swagger-ui-bundle.js").text
    redoc = local.get("/redoc").text
    assert "/docs/assets/redoc.standalone.js" in redoc and "cdn." not in redoc


# --- request bodies ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/sdapi/v1/png-info", "/studio/v1/style-transfer",
                                  "/gradio_api/queue/join", "/gradio_api/upload", "/login"])
def test_declared_body_over_the_limit_is_refused_unread(local, path):
    response = local.post(path, content=b"x" * (REQUEST_LIMIT + 1), headers={"Content-Type": "application/json"})
    assert_refused(response, 413, ["header", "content-length"], "--max-request-mb", "0.0625 MiB")


def test_body_at_the_limit_reaches_the_route(local):
    prompt = "a" * (REQUEST_LIMIT - 100)
    response = local.post("/sdapi/v1/txt2img", json={"prompt": prompt, "width": 100})
    assert response.status_code == 422 and "width" in response.json()["error"]


@pytest.mark.parametrize("path", ["/sdapi/v1/txt2img", "/studio/v1/style-transfer", "/gradio_api/queue/join"])
def test_chunked_body_is_cut_off_at_the_limit(local, path):
    sent = 4 * 1024 * 1024  # what the client would send if nobody stopped reading
    status, body, pulled = asgi_call(local, "POST", path, [(b"host", b"127.0.0.1:7860"),
                                                           (b"content-type", b"application/json"),
                                                           (b"transfer-encoding", b"chunked")],
                                     (b"x" * CHUNK for _ in range(sent // CHUNK)))
    assert status == 413 and "--max-request-mb" in json.loads(body)["error"]
    assert pulled <= REQUEST_LIMIT + CHUNK  # reading stopped at the first chunk past the limit


def test_upload_over_the_file_limit_gets_a_clear_413(local):
    response = local.post("/gradio_api/upload", files={"files": ("big.png", b"\0" * (UPLOAD_LIMIT + 1), "image/png")})
    assert response.status_code == 413
    assert f"maximum allowed size of {UPLOAD_LIMIT} bytes" in response.text


def asgi_call(client: TestClient, method: str, path: str, headers: list[tuple[bytes, bytes]],
              chunks: Iterable[bytes]) -> tuple[int, bytes, int]:
    """Call the app as a server would, feeding the body chunk by chunk (TestClient reads a streamed body whole
    before the app sees it); returns status, body and how many body bytes the app pulled."""
    pulled = 0

    async def run() -> tuple[int, bytes]:
        nonlocal pulled
        pending = iter(chunks)
        messages = []

        async def receive():
            nonlocal pulled
            chunk = next(pending, None)
            if chunk is None:
                return {"type": "http.request", "body": b"", "more_body": False}
            pulled += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": True}

        async def send(message):
            messages.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 7860), "state": {}}
        await client.app(scope, receive, send)
        start = next(m for m in messages if m["type"] == "http.response.start")
        return start["status"], b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")

    status, body = client.portal.call(run)
    return status, body, pulled


# --- flags ------------------------------------------------------------------------------------------------------------

def test_flags_set_hosts_and_limits():
    settings = parse_settings(["--listen", "--allowed-hosts", "Studio.LAN., .example.org, 192.168.1.5, [FE80::0001]",
                               "--max-request-mb", "8", "--max-upload-mb", "2", "--insecure-api-no-auth",
                               "--insecure-ui-no-auth"])
    assert settings.allowed_hosts == ("studio.lan", ".example.org", "192.168.1.5", "fe80::1")
    assert settings.limits.max_request_bytes == 8 * 1024 * 1024 and settings.limits.max_upload_bytes == 2 * 1024 * 1024
    assert settings.insecure_api_no_auth and settings.insecure_ui_no_auth and not settings.insecure_no_auth
    hosts = HostPolicy(settings.allowed_hosts)  # as bound to loopback: listed addresses only
    assert hosts.problem("[fe80::1]:7860") is None and hosts.problem("192.168.1.5") is None
    assert hosts.problem("192.168.1.6")[0] == 421
    defaults = parse_settings([])
    assert defaults.allowed_hosts == () and defaults.limits.max_request_bytes == Limits().max_request_bytes


@pytest.mark.parametrize("argv, message", [
    (["--allowed-hosts", "http://studio.lan"], "--allowed-hosts: 'http://studio.lan' is not a host name"),
    (["--allowed-hosts", "studio.lan:8080"], "is not a host name"),
    (["--allowed-hosts", "*.example.org"], "is not a host name"),
    (["--allowed-hosts", "a/b"], "is not a host name"),
    (["--max-request-mb", "0"], "--max-request-mb must be at least 1"),
    (["--max-upload-mb", "-1"], "--max-upload-mb must be at least 1"),
])
def test_bad_http_flags_are_argparse_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as caught:
        parse_settings(argv)
    assert caught.value.code == 2 and message in capsys.readouterr().err
