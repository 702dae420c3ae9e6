"""Shared pieces of the real-browser tests: the app in a subprocess, Chromium, a page per test, failure reports.

Each ``tests/test_browser*.py`` module imports the fixtures it uses from here; ``app_server`` is module-scoped, so
each module gets its own app over its own temp data dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import torch

from tests.conftest import TEST_PRECISION, install
from webui.models.gan import ResnetGenerator

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
STARTUP_DEADLINE = 120.0  # seconds for the app to import torch/gradio, build the UI and answer the API
GENERATE_TIMEOUT = 60_000  # ms
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 5.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


class RunningApp:
    def __init__(self, url: str, data_dir: Path, log_path: Path, process: subprocess.Popen):
        self.url = url
        self.data_dir = data_dir
        self.log_path = log_path
        self.process = process

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium binary (looked for `chromium` on PATH and /usr/bin/chromium); "
                    "install Debian's chromium package to run the browser tests")
    return path


@contextlib.contextmanager
def launch_app(data_dir: Path, log_path: Path, *extra_args: str) -> Iterator[RunningApp]:
    """Start the real app.py on a free port and wait until its API answers; stop it afterwards."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        # A --precision in extra_args comes later and wins.
        process = subprocess.Popen(
            [sys.executable, "app.py", "--data-dir", str(data_dir), "--port", str(port), "--device", "cpu",
             "--precision", TEST_PRECISION, *extra_args], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    app = RunningApp(f"http://127.0.0.1:{port}", data_dir, log_path, process)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while http_status(f"{app.url}/sdapi/v1/sd-models") not in (200, 401):  # 401: it answers, behind --api-auth
            if process.poll() is not None:
                pytest.fail(f"app exited with code {process.returncode} during startup:\n{app.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"app did not answer /sdapi/v1/sd-models within {STARTUP_DEADLINE:.0f}s:\n{app.log()}")
            time.sleep(0.25)
        yield app
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    """The real app on a free port, over a temp data dir holding the tiny checkpoint and a tiny CycleGAN."""
    root = tmp_path_factory.mktemp("browser")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    install(model_files["ip2p"], data_dir)
    (data_dir / "models" / "CycleGAN").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(ResnetGenerator(3, 3, ngf=8, norm="instance", n_blocks=2).state_dict(),
               data_dir / "models" / "CycleGAN" / "horse2zebra.pth")
    with launch_app(data_dir, root / "app.log") as app:
        yield app


PAGE_KEY = pytest.StashKey[object]()
CONSOLE_KEY = pytest.StashKey[list]()


class FailureReporter:
    """A plugin registered while the module runs: a failed test's report gets the app's log, the browser's console
    errors and a screenshot (taken while the page still shows the failure) in ``test-artifacts/``."""

    def __init__(self, app: RunningApp, module: str):
        self.app = app
        self.module = module

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if report.when != "call" or not report.failed or getattr(item.module, "__name__", None) != self.module:
            return
        report.sections.append(("app log", self.app.log()[-20_000:]))
        console = item.stash.get(CONSOLE_KEY, None)
        if console:
            report.sections.append(("browser console errors", "\n".join(console)))
        pg = item.stash.get(PAGE_KEY, None)
        if pg is not None:
            ARTIFACTS.mkdir(exist_ok=True)
            try:
                pg.screenshot(path=str(ARTIFACTS / f"failed-{item.name}.png"), full_page=True)
            except Exception as exc:  # the page may be gone; the report matters more than the picture
                report.sections.append(("screenshot", f"could not take one: {exc}"))


@pytest.fixture(scope="module", autouse=True)
def _report_failures(request, app_server: RunningApp) -> Iterator[None]:
    reporter = FailureReporter(app_server, request.module.__name__)
    request.config.pluginmanager.register(reporter, f"browser-failures-{id(reporter)}")
    yield
    request.config.pluginmanager.unregister(reporter)


@pytest.fixture(scope="module")
def browser(chromium_binary) -> Iterator:
    with playwright_sync.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium_binary, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, app_server: RunningApp, request) -> Iterator:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # Patience, not a timing check: Gradio mounts a tab's components when it is first opened, and on a loaded
    # 2-core CI machine opening a big tab (img2img, Train) has taken over 15 s.
    context.set_default_timeout(45_000)
    pg = context.new_page()
    console: list[str] = []
    pg.on("console", lambda msg: console.append(f"[{msg.type}] {msg.text}") if msg.type == "error" else None)
    request.node.stash[CONSOLE_KEY] = console
    request.node.stash[PAGE_KEY] = pg
    pg.goto(app_server.url + "/")
    expect(pg.locator("#txt2img_generate")).to_be_visible(timeout=30_000)
    yield pg
    context.close()


# --- helpers ----------------------------------------------------------------------------------------------------------

def set_slider(page, label: str, value: int, scope: str = "#tab_txt2img") -> None:
    """Type into the number box Gradio shows beside a slider, commit it, and check the slider took it."""
    area = page.locator(scope)
    box = area.get_by_label(f"number input for {label}", exact=True)
    box.fill(str(value))
    box.press("Enter")
    box.blur()
    expect(box).to_have_value(str(value))
    expect(area.get_by_label(f"range slider for {label}", exact=True)).to_have_value(str(value))


def seed_box(page):
    return page.locator("#txt2img_seed input[type=number]")


def set_seed(page, value: int) -> None:
    box = seed_box(page)
    box.fill(str(value))
    box.press("Tab")
    expect(box).to_have_value(str(value))


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
