"""The Extensions tab's service, its REST routes under /studio/v1 and its Gradio events: listing what loaded and
what failed, enable/disable persisted, install/update/remove from a local bare repo behind an https rewrite, the
index, restart, and the refusal on an exposed server (REST 403, Gradio events and service alike)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from tests import gradio_events
from tests.conftest import make_settings
from tests.extension_repos import BASE_URL, FAILING, WORKING, make_repo, manifest, push_commit, write_gitconfig
from webui.errors import InvalidRequest
from webui.extensions.host import ExtensionHost
from webui.extensions.installer import InstallRequest
from webui.server import create_app
from webui.services.container import build_services
from webui.services.extensions import ExtensionAccessDenied, ExtensionsService

LAN = "http://192.168.1.5:7860"
FLAG = "--enable-insecure-extension-access"


def write_extension(root: Path, name: str, code: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text(manifest(name), encoding="utf-8")
    (folder / "main.py").write_text(code, encoding="utf-8")


@pytest.fixture(scope="module")
def git_env(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("git")
    make_repo(root / "bare", "hello", {"extension.toml": manifest("hello"), "main.py": WORKING})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GIT_CONFIG_GLOBAL", str(write_gitconfig(root / "gitconfig", root / "bare")))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        yield root


@pytest.fixture(scope="module")
def local(tmp_path_factory, git_env) -> Iterator[tuple[TestClient, Path]]:
    data = tmp_path_factory.mktemp("local") / "data"
    write_extension(data / "extensions", "good", WORKING)
    write_extension(data / "extensions", "broken", FAILING)
    index = data / "index.json"
    index.write_text(json.dumps({"tags": {}, "extensions": [
        {"name": "Hello", "url": BASE_URL + "hello.git", "description": "says hello", "tags": ["script"]},
        {"name": "Other", "url": BASE_URL + "other.git", "description": "another one", "tags": ["tab"]}]}))
    services = build_services(make_settings(data, extensions_index=str(index)))
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            yield client, data
    finally:
        services.queue.shutdown()


@pytest.fixture(scope="module")
def exposed(tmp_path_factory) -> Iterator[tuple[TestClient, Path]]:
    data = tmp_path_factory.mktemp("exposed") / "data"
    write_extension(data / "extensions", "good", WORKING)
    services = build_services(make_settings(data, host="0.0.0.0", insecure_no_auth=True))
    try:
        with TestClient(create_app(services), base_url=LAN) as client:
            yield client, data
    finally:
        services.queue.shutdown()


def row(client: TestClient, name: str) -> dict:
    return next(r for r in client.get("/studio/v1/extensions").json() if r["name"] == name)


def test_list_shows_loaded_and_failed_with_error_and_traceback(local):
    client, _ = local
    good, broken = row(client, "good"), row(client, "broken")
    assert (good["status"], good["version"], good["api"], good["error"]) == ("loaded", "1.0.0", ">=1.0,<2", "")
    assert broken["status"] == "failed"
    assert broken["error"] == "RuntimeError: this extension is broken on purpose"
    assert "Traceback" in broken["traceback"] and "main.py" in broken["traceback"]


def test_disable_and_enable_are_persisted_and_pending_a_restart(local):
    client, data = local
    answer = client.post("/studio/v1/extensions/good/disable")
    assert answer.status_code == 200 and answer.json()["pending"] == "disabled after restart"
    assert json.loads((data / "extensions.json").read_text())["disabled"] == ["good"]
    assert row(client, "good")["status"] == "loaded"  # until the restart
    client.post("/studio/v1/extensions/good/enable")
    assert json.loads((data / "extensions.json").read_text())["disabled"] == []
    assert row(client, "good")["pending"] == ""
    missing = client.post("/studio/v1/extensions/nope/enable")
    assert missing.status_code == 422 and missing.json()["error"].startswith("name: no extension named 'nope'")


def test_install_check_update_and_remove_over_rest(local, git_env):
    client, data = local
    bad = client.post("/studio/v1/extensions/install", json={"url": "--upload-pack=touch /tmp/x"})
    assert bad.status_code == 422 and bad.json()["error"].startswith("url: ")
    bad = client.post("/studio/v1/extensions/install", json={"url": BASE_URL + "hello.git", "folder": "../up"})
    assert bad.status_code == 422 and bad.json()["error"].startswith("folder: ")
    assert sorted(p.name for p in (data / "extensions").iterdir()) == ["broken", "good"]

    plan = client.post("/studio/v1/extensions/check", json={"url": BASE_URL + "hello.git"}).json()
    assert plan["folder"] == "hello" and plan["manifest"]["name"] == "hello" and plan["requirements"] == []
    assert not (data / "extensions" / "hello").exists()

    done = client.post("/studio/v1/extensions/install", json={"url": BASE_URL + "hello.git"})
    assert done.status_code == 200, done.text
    assert (data / "extensions" / "hello" / "main.py").is_file()
    hello = row(client, "hello")
    assert (hello["status"], hello["pending"]) == ("not loaded", "installed: loads after restart")

    index = client.get("/studio/v1/extensions/index", params={"q": "hello"}).json()
    assert index["message"] == "" and [(e["name"], e["installed"]) for e in index["extensions"]] == [("Hello", True)]

    push_commit(git_env / "work-hello", "main.py", WORKING + "# v2\n", "v2: says hello twice")
    pending = client.get("/studio/v1/extensions/hello/updates").json()["commits"]
    assert len(pending) == 1 and pending[0].endswith("v2: says hello twice")
    assert client.post("/studio/v1/extensions/hello/update").json()["commits"] == pending
    assert (data / "extensions" / "hello" / "main.py").read_text().endswith("# v2\n")
    push_commit(git_env / "work-hello", "main.py", WORKING + "# v3\n", "v3: louder")
    stream = gradio_events.call(client, "extensions_check_all", [])  # the tab's "Check all for updates"
    assert "hello has 1 new commit(s)" in stream and "v3: louder" in stream

    assert client.delete("/studio/v1/extensions/hello").status_code == 200
    assert not (data / "extensions" / "hello").exists()
    assert all(r["name"] != "hello" for r in client.get("/studio/v1/extensions").json())


def test_restart_without_a_restarter_says_so(local):
    client, _ = local
    answer = client.post("/studio/v1/restart")
    assert answer.status_code == 409 and "restart the server by hand" in answer.json()["error"]


def test_gradio_event_disables_and_refuses_bad_url(local):
    client, data = local
    stream = gradio_events.call(client, "extensions_disable", ["good"])
    assert "good: disabled" in stream
    assert json.loads((data / "extensions.json").read_text())["disabled"] == ["good"]
    gradio_events.call(client, "extensions_enable", ["good"])
    stream = gradio_events.call(client, "extensions_install", ["file:///etc", "", ""])
    assert "studio-error" in stream and "only https://" in stream


def test_exposed_server_refuses_every_change_over_rest(exposed):
    client, data = exposed
    assert client.get("/studio/v1/extensions").status_code == 200  # reading stays open
    for method, path, body in [("post", "/studio/v1/extensions/install", {"url": BASE_URL + "hello.git"}),
                               ("post", "/studio/v1/extensions/check", {"url": BASE_URL + "hello.git"}),
                               ("post", "/studio/v1/extensions/good/disable", None),
                               ("post", "/studio/v1/extensions/good/enable", None),
                               ("get", "/studio/v1/extensions/good/updates", None),
                               ("post", "/studio/v1/extensions/good/update", None),
                               ("delete", "/studio/v1/extensions/good", None),
                               ("post", "/studio/v1/restart", None)]:
        answer = client.request(method.upper(), path, json=body)
        assert answer.status_code == 403, path
        assert FLAG in answer.json()["error"]
    assert (data / "extensions" / "good").is_dir() and not (data / "extensions.json").exists()


def test_exposed_server_refuses_over_gradio_events(exposed):
    client, data = exposed
    for api_name, args in [("extensions_disable", ["good"]), ("extensions_remove", ["good", True]),
                           ("extensions_install", [BASE_URL + "hello.git", "", ""]), ("extensions_restart", [])]:
        stream = gradio_events.call(client, api_name, args)
        assert "studio-error" in stream and FLAG in stream, api_name
    assert (data / "extensions" / "good").is_dir() and not (data / "extensions.json").exists()


def test_the_flag_allows_changes_while_exposed(tmp_path):
    calls = []
    settings = make_settings(tmp_path, host="0.0.0.0")
    refused = ExtensionsService(settings, ExtensionHost([]), restart=lambda: calls.append(1))
    with pytest.raises(ExtensionAccessDenied):
        refused.restart()
    allowed = ExtensionsService(make_settings(tmp_path, host="0.0.0.0", enable_insecure_extension_access=True),
                                ExtensionHost([]), restart=lambda: calls.append(1))
    allowed.restart()
    assert calls == [1]
    with pytest.raises(InvalidRequest, match="url: only https"):
        allowed.install(InstallRequest("ssh://example.test/x.git"))


def test_gradio_events_search_the_index_and_remove_asks_to_confirm(local):
    client, data = local
    stream = gradio_events.call(client, "extensions_index", ["another"])
    assert "1 extension(s)" in stream and "Other" in stream and "says hello" not in stream
    stream = gradio_events.call(client, "extensions_remove", ["good", False])
    assert "studio-error" in stream and "Tick" in stream
    assert (data / "extensions" / "good").is_dir()


def test_no_index_configured_is_one_line(exposed):
    client, _ = exposed
    answer = client.get("/studio/v1/extensions/index").json()
    assert answer["extensions"] == [] and answer["message"].startswith("No extension index configured")


def test_pending_changes_of_loaded_extensions(tmp_path):
    from webui.extensions.host import DISABLED, ExtensionRecord
    from webui.extensions.manifest import read_manifest

    settings = make_settings(tmp_path)
    root = settings.extensions_dir
    write_extension(root, "kept", WORKING)
    write_extension(root, "gone", WORKING)
    host = ExtensionHost([ExtensionRecord("kept", root / "kept", manifest=read_manifest(root / "kept"),
                                          status=DISABLED),
                          ExtensionRecord("gone", root / "gone", manifest=read_manifest(root / "gone"))])
    service = ExtensionsService(settings, host)
    service.remove("gone")
    assert not (root / "gone").exists() and sorted(p.name for p in root.iterdir()) == ["kept"]
    service.set_enabled("kept", True)
    pending = {r.name: (r.status, r.pending) for r in service.installed()}
    assert pending == {"kept": ("disabled", "enabled after restart"), "gone": ("loaded", "removed: gone after restart")}
    with pytest.raises(InvalidRequest, match="not installed"):
        service.remove("gone")
