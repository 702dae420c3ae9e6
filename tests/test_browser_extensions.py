"""The Extensions tab in a real browser: the Installed table with a working and a failing extension, disabling one
(persisted), installing one from an https URL (a local bare repo behind a git insteadOf rewrite), and Apply and
restart UI bringing the server back with the changes applied."""

from __future__ import annotations

import json
import re
from typing import Iterator

import pytest

from tests.browser_support import (RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary, expect, launch_app, page, screenshot)
from tests.extension_repos import BASE_URL, FAILING, WORKING, make_repo, manifest, write_gitconfig

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, chromium_binary) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp("browser-extensions")
    data_dir = root / "data"
    for name, code in (("good", WORKING), ("broken", FAILING)):
        folder = data_dir / "extensions" / name
        folder.mkdir(parents=True)
        (folder / "extension.toml").write_text(manifest(name), encoding="utf-8")
        (folder / "main.py").write_text(code, encoding="utf-8")
    make_repo(root / "bare", "hello", {"extension.toml": manifest("hello"), "main.py": WORKING})
    with pytest.MonkeyPatch.context() as mp:  # the app's git reads the rewrite from the environment it inherits
        mp.setenv("GIT_CONFIG_GLOBAL", str(write_gitconfig(root / "gitconfig", root / "bare")))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        index = root / "index.json"
        index.write_text(json.dumps({"tags": {}, "extensions": [
            {"name": "Hello", "url": BASE_URL + "hello.git", "description": "says hello", "tags": ["script"]},
            {"name": "Other <b>tool</b>", "url": BASE_URL + "other.git", "description": "another one",
             "tags": ["tab"]}]}), encoding="utf-8")
        with launch_app(data_dir, root / "app.log", "--extensions-index", str(index)) as app:
            yield app


def open_tab(page, sub: str = "Installed") -> None:
    page.get_by_role("tab", name="Extensions").click(timeout=60_000)
    page.locator("#tab_extensions").get_by_role("tab", name=sub).click()


def table_row(page, name: str):
    return page.locator(f"#extensions_installed tr[data-extension='{name}']")


def choose(page, name: str) -> None:
    page.locator("#extensions_name input").click()
    page.locator("#extensions_name").get_by_role("option", name=name, exact=True).click()
    expect(page.locator("#extensions_name input")).to_have_value(name)


def test_installed_table_shows_the_working_and_the_failing_extension(page):
    open_tab(page)
    expect(table_row(page, "good")).to_contain_text("loaded")
    expect(table_row(page, "good")).to_contain_text("1.0.0")
    failed = table_row(page, "broken")
    expect(failed).to_contain_text("failed")
    expect(failed).to_contain_text("RuntimeError: this extension is broken on purpose")
    page.get_by_text("Errors (tracebacks of extensions that failed to load)").click()
    expect(page.locator("#extensions_tracebacks")).to_contain_text("Traceback")
    screenshot(page, "extensions_installed.png")


def test_disable_is_persisted(page, app_server: RunningApp):
    open_tab(page)
    choose(page, "good")
    page.locator("#extensions_disable").click()
    expect(page.locator("#extensions_message")).to_contain_text("good: disabled")
    expect(table_row(page, "good")).to_contain_text("disabled after restart")
    state = json.loads((app_server.data_dir / "extensions.json").read_text())
    assert state == {"disabled": ["good"]}


def test_install_from_url_checks_then_installs(page, app_server: RunningApp):
    open_tab(page, "Install from URL")
    page.locator("#extensions_url textarea").fill(BASE_URL + "hello.git")
    expect(page.locator("#extensions_install")).to_be_disabled()  # offered only once Check has shown the plan
    page.locator("#extensions_check").click()
    message = page.locator("#extensions_install_message")
    expect(message).to_contain_text("hello 1.0.0", timeout=30_000)
    expect(message).to_contain_text("No Python requirements")
    assert not (app_server.data_dir / "extensions" / "hello").exists()
    expect(page.locator("#extensions_install")).to_be_enabled()
    page.locator("#extensions_install").click()
    expect(message).to_contain_text("Installed hello 1.0.0 into extensions/hello", timeout=30_000)
    assert (app_server.data_dir / "extensions" / "hello" / "main.py").is_file()
    page.locator("#tab_extensions").get_by_role("tab", name="Installed").click()
    expect(table_row(page, "hello")).to_contain_text("installed: loads after restart")
    screenshot(page, "extensions_installed_pending.png")

    open_tab(page, "Install from URL")
    page.locator("#extensions_url textarea").fill("--upload-pack=touch")
    expect(page.locator("#extensions_install")).to_be_disabled()
    page.locator("#extensions_check").click()
    expect(message.locator(".studio-error")).to_contain_text("url: must not start with '-'")
    expect(page.locator("#extensions_install")).to_be_disabled()


def test_available_lists_the_index_with_installed_marked(page):
    open_tab(page, "Available")
    page.locator("#extensions_load_index").click()
    table = page.locator("#extensions_available")
    expect(table.locator("tr", has_text="Hello")).to_contain_text("installed")
    expect(table.locator("tr", has_text="Other <b>tool</b>")).not_to_contain_text("installed")  # escaped, as text
    page.locator("#extensions_search textarea").fill("another")
    page.locator("#extensions_search textarea").press("Enter")
    expect(table.locator("tbody tr")).to_have_count(1)
    screenshot(page, "extensions_available.png")


def test_apply_and_restart_brings_the_changes_in(page, app_server: RunningApp):
    open_tab(page)
    expect(page.locator("#extensions_restart_note")).to_contain_text("running jobs are interrupted")
    page.locator("#extensions_apply_restart").click()
    expect(page.locator("#extensions_restart_status")).to_contain_text("Restarting...", timeout=15_000)
    # The page reloads by itself once the restarted server answers; the new process loaded the changes.
    page.wait_for_event("load", timeout=120_000)
    open_tab(page)
    expect(table_row(page, "hello")).to_contain_text("loaded", timeout=30_000)  # the fresh page loads its table
    expect(table_row(page, "good")).to_contain_text("disabled")
    expect(table_row(page, "good")).not_to_contain_text("after restart")
    assert app_server.process.poll() is None  # the same process, re-executed
    assert re.search(r"Restarting Stable Studio", app_server.log())
    screenshot(page, "extensions_after_restart.png")
