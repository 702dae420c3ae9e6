"""Who may talk to the server: API auth on every /sdapi route, the UI login, credential files, the refusal to
serve on the network without a login, and the cross-origin guard."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from webui.api.security import (CredentialError, basic_auth_credentials, credentials_match, exposure_problems,
                                read_credentials_file)
from webui.cli import parse_settings
from webui.server import create_app
from webui.services.container import build_services

REPO_ROOT = Path(__file__).resolve().parent.parent
API_LOGIN = (("alice", "s3cret"),)
UI_LOGIN = (("bob", "hunter2"),)
SELF = "http://127.0.0.1:7860"  # the origin the test clients' requests come from (a Host the server accepts)
FOREIGN = "https://evil.example"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@contextmanager
def serve(data_dir: Path, **settings) -> Iterator[TestClient]:
    """The whole app over services with no checkpoint: every route answers fast (generation is a quick 409)."""
    services = build_services(make_settings(data_dir, **settings))
    try:
        with TestClient(create_app(services), base_url=SELF) as client:
            yield client
    finally:
        services.queue.shutdown()


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[TestClient]:
    with serve(tmp_path_factory.mktemp("secured"), api_auth=API_LOGIN, gradio_auth=UI_LOGIN) as client:
        yield client


def sdapi_routes(app: FastAPI) -> list[tuple[str, str]]:
    """``(method, path)`` of every route under /sdapi, included routers flattened; path parameters filled in."""
    routes = []
    for route in iter_route_contexts(app.routes):
        if route.path and route.path.startswith("/sdapi") and route.methods:
            routes.append((sorted(route.methods)[0], re.sub(r"\{[^}]+\}", "1", route.path)))
    return routes


def call(client: TestClient, method: str, path: str, headers: dict[str, str] | None = None):
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return client.request(method, path, headers=headers, **body)


# --- API auth ---------------------------------------------------------------------------------------------------------

def test_route_listing_sees_the_api(secured):
    paths = {path for _, path in sdapi_routes(secured.app)}
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/options", "/sdapi/v1/interrupt"} <= paths


@pytest.mark.parametrize("headers", [None, basic("alice", "wrong"), basic("mallory", "s3cret"), basic(*UI_LOGIN[0]),
                                     {"Authorization": "Basic %%%"}, {"Authorization": "Bearer s3cret"}],
                         ids=["none", "wrong-password", "wrong-user", "ui-login", "garbled", "not-basic"])
def test_every_sdapi_route_refuses_missing_or_wrong_credentials(secured, headers):
    answers = {(m, p): call(secured, m, p, headers) for m, p in sdapi_routes(secured.app)}
    assert {key: r.status_code for key, r in answers.items() if r.status_code != 401} == {}
    for response in answers.values():
        assert response.headers["www-authenticate"] == 'Basic realm="Stable Studio API"'
        body = response.json()
        assert "--api-auth" in body["error"]
        assert body["detail"][0]["loc"] == ["header", "authorization"] and body["detail"][0]["msg"]


def test_every_sdapi_route_accepts_the_right_credentials(secured):
    answers = {(m, p): call(secured, m, p, basic(*API_LOGIN[0])).status_code for m, p in sdapi_routes(secured.app)}
    assert {key: code for key, code in answers.items() if code == 401} == {}
    assert answers[("GET", "/sdapi/v1/samplers")] == 200


def test_paths_under_sdapi_without_a_route_are_protected_too(secured):
    assert secured.get("/sdapi/v2/not-yet-written").status_code == 401
    assert secured.get("/sdapi").status_code == 401


def test_ui_login_does_not_open_the_api(tmp_path):
    with serve(tmp_path, api_auth=API_LOGIN, gradio_auth=UI_LOGIN) as client:
        assert client.post("/login", data={"username": "bob", "password": "hunter2"}).status_code == 200
        assert client.get("/config").status_code == 200  # logged in to the UI...
        assert client.get("/sdapi/v1/options").status_code == 401  # ...but not to the API


def test_no_api_auth_leaves_the_api_open(tmp_path):
    with serve(tmp_path) as client:
        assert client.get("/sdapi/v1/options").status_code == 200


# --- UI login (Gradio's own) ------------------------------------------------------------------------------------------

def test_ui_requires_a_login_when_gradio_auth_is_set(secured):
    page = secured.get("/")
    # Gradio 6 answers the page itself, holding a config that asks for a login and carries no components.
    assert page.status_code == 200
    config = json.loads(re.search(r"window\.gradio_config = (\{.*?\});?\s*</script>", page.text, re.S).group(1))
    assert config["auth_required"] is True and not config["components"]
    for path in ("/config", "/gradio_api/info"):
        assert secured.get(path).status_code == 401
    assert secured.post("/login", data={"username": "bob", "password": "nope"}).status_code == 400


def test_gradio_login_works_from_its_own_page_and_not_from_a_foreign_one(tmp_path):
    login = {"username": "bob", "password": "hunter2"}
    with serve(tmp_path, gradio_auth=UI_LOGIN) as client:
        assert client.post("/login", data=login, headers={"Origin": FOREIGN}).status_code == 403
        assert client.get("/config").status_code == 401
        assert client.post("/login", data=login, headers={"Origin": SELF}).status_code == 200
        assert client.get("/config").status_code == 200


# --- credential parsing -----------------------------------------------------------------------------------------------

def test_credentials_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "logins.txt"
    path.write_text("# who may log in\n\nalice:s3cret\n  bob:hunter2 , carol:pa:ss  \n   # indented comment\n")
    assert read_credentials_file(path) == (("alice", "s3cret"), ("bob", "hunter2"), ("carol", "pa:ss"))


@pytest.mark.parametrize("text, line", [("alice:s3cret\n\njust-a-password\n", 3), ("a:b,:nouser\n", 1),
                                        ("# ok\nalice:\n", 2)])
def test_malformed_credentials_file_names_file_and_line(tmp_path, text, line):
    path = tmp_path / "logins.txt"
    path.write_text(text)
    with pytest.raises(CredentialError, match=re.escape(f"{path}:{line}:")) as caught:
        read_credentials_file(path)
    assert "just-a-password" not in str(caught.value)  # a malformed entry may be a secret: never echoed


@pytest.mark.parametrize("text", [None, "# only a comment\n\n"])
def test_missing_or_empty_credentials_file_is_an_error_naming_it(tmp_path, text):
    path = tmp_path / "logins.txt"
    if text is not None:
        path.write_text(text)
    with pytest.raises(CredentialError, match=re.escape(str(path))):
        read_credentials_file(path)


def test_command_line_merges_inline_and_file_logins(tmp_path):
    (tmp_path / "api.txt").write_text("carol:pw3\n")
    (tmp_path / "ui.txt").write_text("dave:pw4\n")
    settings = parse_settings(["--api-auth", "alice:pw1,bob:pw2", "--api-auth-file", str(tmp_path / "api.txt"),
                               "--gradio-auth-path", str(tmp_path / "ui.txt"),
                               "--cors-allow-origins", "https://a.example, http://b.example:8080",
                               "--cors-allow-origins-regex", r"https://.*\.example"])
    assert settings.api_auth == (("alice", "pw1"), ("bob", "pw2"), ("carol", "pw3"))
    assert settings.gradio_auth == (("dave", "pw4"),)
    assert settings.cors_allow_origins == ("https://a.example", "http://b.example:8080")
    assert settings.cors_allow_origins_regex == r"https://.*\.example" and not settings.insecure_no_auth


@pytest.mark.parametrize("argv, message", [
    (["--api-auth-file", "{dir}/bad.txt"], "{dir}/bad.txt:2"),
    (["--gradio-auth-path", "{dir}/missing.txt"], "{dir}/missing.txt"),
    (["--api-auth", "alice"], "--api-auth: entry 1"),
    (["--cors-allow-origins", "https://a.example/"], "not an origin"),
    (["--cors-allow-origins-regex", "("], "--cors-allow-origins-regex"),
])
def test_bad_security_flags_are_argparse_errors(tmp_path, capsys, argv, message):
    (tmp_path / "bad.txt").write_text("alice:pw\nbroken\n")
    with pytest.raises(SystemExit) as caught:
        parse_settings([arg.format(dir=tmp_path) for arg in argv])
    assert caught.value.code == 2
    assert message.format(dir=tmp_path) in capsys.readouterr().err


def test_credentials_match_checks_user_and_password_together():
    logins = (("alice", "s3cret"), ("bob", "hunter2"), ("zoë", "mot de passe é"))
    assert credentials_match(logins, "bob", "hunter2") and credentials_match(logins, "zoë", "mot de passe é")
    for user, password in [("alice", "hunter2"), ("bob", "s3cret"), ("alice", ""), ("", ""), ("carol", "x")]:
        assert not credentials_match(logins, user, password)


@pytest.mark.parametrize("header, expected", [
    ("Basic " + base64.b64encode(b"alice:a:b").decode(), ("alice", "a:b")),
    ("basic " + base64.b64encode(b"alice:").decode(), ("alice", "")),
    ("Basic " + base64.b64encode(b"no-colon").decode(), None),
    ("Basic !!!", None), ("Bearer abc", None), ("", None), (None, None),
])
def test_basic_auth_header_parsing(header, expected):
    assert basic_auth_credentials(header) == expected


# --- exposure ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("listen, share, ui, api, opt_out, error, warning", [
    (False, False, False, False, (), None, None),
    (False, False, False, False, ("insecure_no_auth",), None, None),
    (True, False, False, False, (), "--listen", None),
    (False, True, False, False, (), "--share", None),
    (True, True, False, False, (), "--listen serves on all network interfaces (0.0.0.0) and --share", None),
    (True, False, False, False, ("insecure_no_auth",), None, "WITHOUT any login"),
    (False, True, False, False, ("insecure_no_auth",), None, "WITHOUT any login"),
    (True, False, False, False, ("insecure_api_no_auth",), "--insecure-no-auth", None),  # one opt-out, both open
    (True, False, False, False, ("insecure_api_no_auth", "insecure_ui_no_auth"), None, "WITHOUT any login"),
    # One login only: the other side refuses to start unless opted out explicitly.
    (True, False, True, False, (), "--insecure-api-no-auth", None),
    (False, True, True, False, (), "--insecure-api-no-auth", None),
    (False, True, True, False, ("insecure_ui_no_auth",), "--insecure-api-no-auth", None),  # the wrong opt-out
    (True, False, True, False, ("insecure_api_no_auth",), None, "/sdapi API is open"),
    (False, True, True, False, ("insecure_no_auth",), None, "/sdapi API is open"),
    (True, False, False, True, (), "--insecure-ui-no-auth", None),
    (False, True, False, True, (), "--insecure-ui-no-auth", None),
    (True, False, False, True, ("insecure_ui_no_auth",), None, "web UI and its Gradio API are open"),
    (False, True, False, True, ("insecure_no_auth",), None, "web UI and its Gradio API are open"),
    (True, True, True, True, (), None, None),
    (False, False, True, False, (), None, None),  # local only: one login is the user's choice
])
def test_exposure_matrix(tmp_path, listen, share, ui, api, opt_out, error, warning):
    settings = make_settings(tmp_path, host="0.0.0.0" if listen else "127.0.0.1", share=share,
                             gradio_auth=UI_LOGIN if ui else (), api_auth=API_LOGIN if api else (),
                             **{flag: True for flag in opt_out})
    errors, warnings = exposure_problems(settings)
    if error is None:
        assert errors == []
    else:
        assert len(errors) == 1 and error in errors[0] and errors[0].startswith("Refusing to start")
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0]


def test_cors_wildcard_is_warned_about(tmp_path):
    assert "every web page" in exposure_problems(make_settings(tmp_path, cors_allow_origins=("*",)))[1][0]


@pytest.mark.parametrize("argv, opt_out", [(["--listen"], "--insecure-no-auth"),
                                           (["--share", "--gradio-auth", "bob:pw"], "--insecure-api-no-auth")])
def test_app_refuses_to_expose_an_open_side_before_loading_anything(tmp_path, argv, opt_out):
    data_dir = tmp_path / "data"
    result = subprocess.run([sys.executable, "app.py", *argv, "--data-dir", str(data_dir)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert opt_out in result.stderr and "Refusing to start" in result.stderr
    assert not data_dir.exists()  # services (which create the folders and load models) were never built


# --- cross-origin requests --------------------------------------------------------------------------------------------

def test_foreign_origin_cannot_change_state(tmp_path):
    with serve(tmp_path) as client:
        refused = client.post("/sdapi/v1/interrupt", headers={"Origin": FOREIGN})
        assert refused.status_code == 403
        assert FOREIGN in refused.json()["error"] and refused.json()["detail"][0]["loc"] == ["header", "origin"]
        assert client.post("/sdapi/v1/interrupt", headers={"Origin": SELF}).status_code == 200
        assert client.post("/sdapi/v1/interrupt").status_code == 200  # curl, Python clients: no Origin header
        # Behind a TLS proxy the page is https while the proxy talks http to us.
        assert client.post("/sdapi/v1/interrupt", headers={"Origin": "https://127.0.0.1:7860",
                                                           "X-Forwarded-Proto": "https"}).status_code == 200
        read = client.get("/sdapi/v1/samplers", headers={"Origin": FOREIGN})
        assert read.status_code == 200 and "access-control-allow-origin" not in read.headers


def test_configured_origins_get_cors_headers_and_others_do_not(tmp_path):
    allowed = "https://app.example"
    with serve(tmp_path, api_auth=API_LOGIN, cors_allow_origins=(allowed,),
               cors_allow_origins_regex=r"https://[a-z]+\.tools\.example") as client:
        # Browsers send preflights without credentials: they must be answered before auth.
        preflight = client.options("/sdapi/v1/interrupt", headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == allowed
        for origin in (allowed, "https://lab.tools.example"):
            response = client.post("/sdapi/v1/interrupt", headers={"Origin": origin, **basic(*API_LOGIN[0])})
            assert response.status_code == 200 and response.headers["access-control-allow-origin"] == origin
        assert client.post("/sdapi/v1/interrupt", headers={"Origin": FOREIGN, **basic(*API_LOGIN[0])}) \
            .status_code == 403
        read = client.get("/sdapi/v1/samplers", headers={"Origin": FOREIGN, **basic(*API_LOGIN[0])})
        assert read.status_code == 200 and "access-control-allow-origin" not in read.headers
