"""No Gradio event may make the server read a file that was not uploaded to it.

Before the guard, ``POST /gradio_api/call/png_info`` with ``{"path": "/etc/hostname", "meta": {...}}`` made Gradio
copy that file into its cache and name the cache path in the error, and ``/gradio_api/file=`` then served it.
Every event route, every file-taking handler, with and without a UI login.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient
from gradio.utils import get_upload_folder
from PIL import Image, PngImagePlugin

from tests import gradio_events
from tests.conftest import make_settings
from tests.test_security import serve
from webui.server import create_app
from webui.services.container import build_services

BASE_URL = "http://127.0.0.1:7860"
SECRET = "top-secret-line-7c1f"


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory) -> Path:
    """A file outside every folder the app owns; also a PNG, so a decoder would happily read it."""
    path = tmp_path_factory.mktemp("private") / "holiday.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", SECRET)
    Image.new("RGB", (8, 8), "red").save(path, pnginfo=info)
    return path


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    with serve(tmp_path_factory.mktemp("data")) as c:
        yield c


@pytest.fixture(scope="module")
def logged_in(tmp_path_factory) -> Iterator[TestClient]:
    """A logged-in UI user (--gradio-auth) is as untrusted about files as anyone."""
    with serve(tmp_path_factory.mktemp("data-auth"), gradio_auth=(("ann", "pw-ann"),)) as c:
        response = c.post("/login", data={"username": "ann", "password": "pw-ann"})
        assert response.status_code == 200, response.text
        yield c


def _event_routes(client: TestClient, api_name: str, payload: list) -> list[tuple[str, dict]]:
    # The handlers are private events; the browser joins them by fn_index, and the named routes must be guarded
    # too, whether or not Gradio still answers them.
    fn_index = gradio_events.event(client.get("/config").json(), api_name)["id"]
    return [
        (f"/gradio_api/call/{api_name}", {"data": payload}),
        (f"/gradio_api/call/v2/{api_name}", {"data": payload}),
        (f"/gradio_api/run/{api_name}", {"data": payload}),
        (f"/gradio_api/api/{api_name}", {"data": payload}),
        ("/gradio_api/queue/join", {"data": payload, "fn_index": fn_index, "session_hash": "attacker",
                                    "trigger_id": 1}),
    ]


def _hostile_paths(secret_file: Path, tmp: Path) -> list[str]:
    upload = Path(get_upload_folder())
    upload.mkdir(parents=True, exist_ok=True)
    link = upload / f"link-{os.getpid()}.png"  # a symlink planted in the upload folder, pointing out of it
    if not link.is_symlink():
        link.symlink_to(secret_file)
    return [
        str(secret_file), "/etc/hostname", "/proc/self/environ", "/dev/zero",
        f"{upload}/../../{str(secret_file).lstrip('/')}", f"{upload}/%2e%2e/etc/hostname", str(link),
        "holiday.png", "file:///etc/hostname", "http://127.0.0.1:7860/gradio_api/info", "//evil.example/x.png",
    ]


@pytest.mark.parametrize("surface", ["anonymous", "logged in"])
def test_no_event_route_accepts_a_server_path(request, surface, secret_file, tmp_path):
    client = request.getfixturevalue("client" if surface == "anonymous" else "logged_in")
    for path in _hostile_paths(secret_file, tmp_path):
        for route, body in _event_routes(client, "png_info", [file_data(path)]):
            response = client.post(route, json=body)
            assert response.status_code == 403, (route, path, response.text)
            assert "uploaded" in response.json()["error"] or "URL" in response.json()["error"]
            assert SECRET not in response.text and "/gradio/" not in response.text


@pytest.mark.parametrize("api_name, payload", [
    ("img2img", lambda fd: [None] * 3 + [fd]),
    ("style_transfer", lambda fd: ["model", fd]),
])
def test_every_file_taking_handler_is_guarded(client, secret_file, api_name, payload):
    # File references anywhere in the payload count, not only where a widget expects one.
    for route, body in _event_routes(client, api_name, payload(file_data(str(secret_file)))):
        response = client.post(route, json=body)
        assert response.status_code == 403, (route, response.text)


def test_file_references_hidden_in_nested_values_are_found(client, secret_file):
    nested = [{"background": file_data(str(secret_file)), "layers": [], "composite": None}]
    response = client.post("/gradio_api/call/png_info", json={"data": nested})
    assert response.status_code == 403
    # Without meta, but shaped like a file (Gradio 6 rejects these itself; refuse them anyway).
    response = client.post("/gradio_api/call/png_info",
                           json={"data": [{"path": str(secret_file), "orig_name": "a.png"}]})
    assert response.status_code == 403


def test_absurdly_nested_payload_is_refused(client):
    payload: list = []
    for _ in range(200):
        payload = [payload]
    response = client.post("/gradio_api/call/png_info", json={"data": payload})
    assert response.status_code == 403
    assert "nests too deeply" in response.json()["error"]


def test_an_uploaded_file_still_works(client):
    """The real flow: upload through Gradio, then name the upload in the event."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse\nSteps: 5, Sampler: Euler, Seed: 1")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    uploaded = client.post("/gradio_api/upload", files={"files": ("mine.png", buffer.getvalue(), "image/png")})
    assert uploaded.status_code == 200, uploaded.text
    path = uploaded.json()[0]
    # As the browser sends it: the tab handlers are private events, joined by fn_index.
    assert "a lighthouse" in gradio_events.call(client, "png_info", [file_data(path)])


def test_gradio_file_route_serves_no_server_file(client, secret_file):
    for path in (str(secret_file), "/etc/hostname", "../../../../etc/hostname"):
        response = client.get(f"/gradio_api/file={path}")
        assert response.status_code in (403, 404), path
        assert SECRET not in response.text


def test_gradio_run_history_is_off(client):
    # Gradio's run history can push every run to a Hub bucket named by whoever connects it.
    assert client.post("/gradio_api/run-history/connect", json={}).status_code in (404, 405)


# --- img2img Batch: server folders ------------------------------------------------------------------------------

from webui.errors import InvalidRequest  # noqa: E402
from webui.services.folders import FolderPolicy, folder_policy  # noqa: E402
from webui.types import Img2ImgRequest  # noqa: E402

TINY = dict(width=64, height=64, steps=2, seed=3)


@pytest.fixture
def policy_dirs(tmp_path) -> tuple[Path, Path, Path]:
    """(data dir with an image folder, an extra root, a private folder outside both)."""
    data, extra, private = tmp_path / "data", tmp_path / "extra", tmp_path / "private"
    for folder in (data / "in", extra, private):
        folder.mkdir(parents=True)
    for folder in (data / "in", extra, private):
        Image.new("RGB", (8, 8)).save(folder / "x.png")
    return data, extra, private


def test_batch_input_outside_the_roots_is_refused_alike_for_every_variant(policy_dirs):
    data, extra, private = policy_dirs
    policy = FolderPolicy.build(data)
    (data / "escape").symlink_to(private)
    messages = set()
    for text in (str(private), "../private", f"{data}/../private", "escape", "/", "/etc", "/proc/self", "/dev",
                 str(data / "missing"), str(private / "missing"), "~", "in/../../private", str(data / "in" / "x.png")):
        with pytest.raises(InvalidRequest) as caught:
            policy.input_files(text)
        messages.add(str(caught.value))
    # One message for all: whether a folder exists elsewhere is not revealed.
    assert messages == {"input_dir: not an existing folder this server may use: enter a folder inside the data dir"}
    assert [p.name for p in policy.input_files("in")] == ["x.png"]
    assert [p.name for p in policy.input_files(str(data / "in"))] == ["x.png"]


def test_extra_roots_come_only_from_the_start_up_flag(policy_dirs, tmp_path):
    from webui.cli import parse_settings

    data, extra, private = policy_dirs
    settings = parse_settings(["--data-dir", str(data), "--batch-dirs", str(extra)])
    policy = folder_policy(settings)
    assert [p.name for p in policy.input_files(str(extra))] == ["x.png"]
    with pytest.raises(InvalidRequest):
        policy.input_files(str(private))


def test_symlinked_files_leading_out_are_skipped(policy_dirs):
    data, _, private = policy_dirs
    (data / "in" / "stolen.png").symlink_to(private / "x.png")
    (data / "in" / "zero.png").symlink_to("/dev/zero")
    assert [p.name for p in FolderPolicy.build(data).input_files("in")] == ["x.png"]


def test_batch_output_outside_the_roots_is_refused_and_nothing_is_created(policy_dirs):
    data, _, private = policy_dirs
    policy = FolderPolicy.build(data)
    for text in (str(private / "new"), "../private/new", "/tmp/batch-out-never"):
        with pytest.raises(InvalidRequest, match="^output_dir: not an existing folder"):
            policy.output_folder(text)
    assert not (private / "new").exists() and not Path("/tmp/batch-out-never").exists()
    assert policy.output_folder("outputs/batch").is_dir()


def test_batch_never_overwrites_existing_files(services, data_dir):
    source, target = data_dir / "in", data_dir / "out"
    source.mkdir()
    target.mkdir()
    Image.new("RGB", (64, 64), "green").save(source / "a.png")
    (target / "a.png").write_bytes(b"my precious file")
    template = Img2ImgRequest(prompt="x", **TINY)
    result = services.generation.submit_img2img_batch(template, "in", "out").wait(timeout=120)
    assert (target / "a.png").read_bytes() == b"my precious file"
    assert [p.name for p in result.paths] == ["a-1.png"]


@pytest.mark.parametrize("flags, enabled", [
    ([], True), (["--listen", "--insecure-no-auth"], False),
    (["--listen", "--insecure-no-auth", "--enable-remote-folders"], True),
])
def test_batch_folders_are_off_when_exposed_unless_opted_in(tmp_path, flags, enabled):
    from webui.cli import parse_settings

    policy = folder_policy(parse_settings(["--data-dir", str(tmp_path), *flags]))
    assert policy.enabled is enabled
    if not enabled:
        with pytest.raises(InvalidRequest, match="--enable-remote-folders"):
            policy.input_files("in")


def test_exposed_server_hides_batch_in_the_ui_and_refuses_it_through_gradio(tmp_path, model_files, tiny_loader):
    from tests.conftest import install

    data = tmp_path / "data"
    install(model_files["single"], data)
    (data / "in").mkdir()
    Image.new("RGB", (64, 64)).save(data / "in" / "a.png")
    services = build_services(make_settings(data, host="0.0.0.0", insecure_no_auth=True), load=tiny_loader)
    try:
        with TestClient(create_app(services), base_url=BASE_URL) as c:
            config = c.get("/config").json()
            radios = [comp for comp in config["components"] if comp.get("props", {}).get("elem_id") == "img2img_mode"]
            assert radios and "Batch" not in str(radios[0]["props"]["choices"])
            banners = [comp for comp in config["components"]
                       if comp.get("props", {}).get("elem_id") == "exposure_banner"]
            assert banners and "reachable" in str(banners[0]["props"]["value"])
        with pytest.raises(InvalidRequest, match="--enable-remote-folders"):
            services.generation.submit_img2img_batch(Img2ImgRequest(**TINY), "in")
    finally:
        services.queue.shutdown()


def test_exposed_server_says_who_can_reach_it():
    from webui.config import Settings
    from webui.ui.app import exposure_banner

    assert exposure_banner(Settings()) == ""
    text = exposure_banner(Settings(host="0.0.0.0", share=True, gradio_auth=(("a", "b"),)))
    assert "--listen" in text and "share link" in text
    assert "web UI asks for a login" in text and "API asks for NO login" in text
    assert "img2img Batch) are off" in text


def test_ui_events_cannot_be_called_by_name(client):
    """The tab handlers' positional Gradio endpoints are not an API: the REST API is (see webui/ui/private_events)."""
    for path in ("/gradio_api/call/txt2img", "/gradio_api/run/txt2img", "/gradio_api/api/png_info",
                 "/gradio_api/call/v2/txt2img"):
        response = client.post(path, json={"data": ["a cat"]})
        assert response.status_code == 404, path
        assert "/sdapi/v1" in response.json()["error"]
    assert client.get("/sdapi/v1/samplers").status_code == 200
