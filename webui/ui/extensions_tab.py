"""The Extensions tab: Installed (status, enable/disable, updates, remove, Apply and restart), Available (the index)
and Install from URL. Thin over ExtensionsService, which also makes every refusal (exposed server, bad URL)."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from webui.errors import StudioError
from webui.extensions.installer import InstallRequest
from webui.services.container import Services
from webui.services.extensions import RESTART_NOTE, ExtensionRow, ExtensionsService
from webui.ui.generation_form import error_html

CHECKED = "Press Install to install it."

# After "Apply and restart UI": say so, wait until the server has gone and answers again, then reload the page.
RESTART_JS = """
(status) => {
  if (!status || !status.includes('studio-ok')) return;
  const note = document.querySelector('#extensions_restart_status');
  if (note) note.innerText = 'Restarting... the page reloads when the server is back.';
  let wentDown = false;
  const started = Date.now();
  const poll = () => fetch('/studio/v1/extensions', {cache: 'no-store'}).then(
    () => { if (wentDown || Date.now() - started > 20000) { location.reload(); } else { setTimeout(poll, 500); } },
    () => { wentDown = true; setTimeout(poll, 500); });
  setTimeout(poll, 1000);
}
"""


def ok_html(message: str) -> str:
    return f"<div class='studio-ok' role='status'>{html.escape(message)}</div>"


def installed_table(rows: list[ExtensionRow]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("Name", "Version", "API", "Status", "After restart", "Load time",
                                             "Error"))
    body = []
    for r in rows:
        cells = [r.name + (" (built-in)" if r.builtin else ""), r.version, r.api, r.status, r.pending,
                 f"{r.load_seconds:.2f} s" if r.status in ("loaded", "failed") else "", r.error]
        body.append(f"<tr data-extension='{html.escape(r.name, quote=True)}' class='extension-{html.escape(r.status)}'>"
                    + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (f"<table id='extensions_installed' class='studio-table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body) or '<tr><td colspan=7>No extensions</td></tr>'}</tbody></table>")


def tracebacks(rows: list[ExtensionRow]) -> str:
    failed = [r for r in rows if r.traceback]
    if not failed:
        return "No extension failed to load."
    return "\n\n".join(f"{r.name} ({r.folder}):\n{r.traceback}" for r in failed)


def available_table(admin: ExtensionsService, query: str, refresh: bool) -> tuple[str, Any]:
    index = admin.available(query or "", refresh)
    if index.message:
        return error_html(index.message), gr.update(choices=[], value=None)
    head = "".join(f"<th>{h}</th>" for h in ("Name", "Description", "Tags", "Installed"))
    body = "".join(
        f"<tr><td><a href='{html.escape(e.url, quote=True)}' target='_blank' rel='noopener noreferrer'>"
        f"{html.escape(e.name)}</a></td><td>{html.escape(e.description)}</td>"
        f"<td>{html.escape(', '.join(e.tags))}</td><td>{'✓ installed' if e.installed else ''}</td></tr>"
        for e in index.entries)
    table = (f"<p>{len(index.entries)} extension(s)</p><table id='extensions_available' class='studio-table'>"
             f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    choices = [(f"{e.name} ({e.url})", e.url) for e in index.entries if not e.installed]
    return table, gr.update(choices=choices, value=None)


def build(services: Services) -> None:
    admin = services.extension_admin
    if admin is None:
        gr.Markdown("Extensions are not available in this process.")
        return
    settings = services.settings
    if settings.exposed and not settings.enable_insecure_extension_access:
        gr.HTML(error_html("This server is reachable from the network: installing, updating, removing and enabling "
                           "extensions is off (start with --enable-insecure-extension-access to allow it)."),
                elem_id="extensions_access_note")

    def names() -> list[str]:
        return [r.name for r in admin.installed()]

    def table_updates() -> tuple[str, Any, str]:
        rows = admin.installed()
        return installed_table(rows), gr.update(choices=[r.name for r in rows]), tracebacks(rows)

    with gr.Tabs(elem_id="extensions_tabs"):
        with gr.Tab("Installed", id="extensions_installed_tab", elem_id="tab_extensions_installed"):
            rows = admin.installed()
            table = gr.HTML(installed_table(rows), elem_id="extensions_table")
            with gr.Row():
                name = gr.Dropdown(names(), value=None, label="Extension", elem_id="extensions_name", scale=3)
                enable = gr.Button("Enable", elem_id="extensions_enable", scale=0, min_width=80)
                disable = gr.Button("Disable", elem_id="extensions_disable", scale=0, min_width=80)
                check = gr.Button("Check for updates", elem_id="extensions_check_updates", scale=0)
                update = gr.Button("Update", elem_id="extensions_update", scale=0, min_width=80)
            with gr.Row():
                confirm = gr.Checkbox(False, label="Yes, remove its folder", elem_id="extensions_remove_confirm")
                remove = gr.Button("Remove", variant="stop", elem_id="extensions_remove", scale=0)
                check_all = gr.Button("Check all for updates", elem_id="extensions_check_all", scale=0)
                refresh = gr.Button("Refresh", elem_id="extensions_refresh", scale=0, min_width=80)
            message = gr.HTML(elem_id="extensions_message")
            with gr.Accordion("Errors (tracebacks of extensions that failed to load)", open=False):
                errors = gr.Code(tracebacks(rows), language=None, elem_id="extensions_tracebacks",
                                 interactive=False)
            with gr.Row():
                restart = gr.Button("Apply and restart UI", variant="primary", elem_id="extensions_apply_restart",
                                    scale=0)
                gr.Markdown(f"Applies installs, removals, enabling and disabling: {RESTART_NOTE}.",
                            elem_id="extensions_restart_note")
            restart_status = gr.HTML(elem_id="extensions_restart_status")

        with gr.Tab("Available", id="extensions_available_tab", elem_id="tab_extensions_available"):
            with gr.Row():
                search = gr.Textbox(label="Search", placeholder="name, description or tag", elem_id="extensions_search",
                                    scale=4)
                load = gr.Button("Load from index", elem_id="extensions_load_index", scale=0)
            available = gr.HTML(elem_id="extensions_available_table")
            with gr.Row():
                pick = gr.Dropdown([], label="Extension to install", elem_id="extensions_available_pick", scale=4)
                check_pick = gr.Button("Check", elem_id="extensions_available_check", scale=0)
                install_pick = gr.Button("Install", elem_id="extensions_available_install", scale=0, interactive=False)
            available_message = gr.HTML(elem_id="extensions_available_message")

        with gr.Tab("Install from URL", id="extensions_url_tab", elem_id="tab_extensions_url"):
            url = gr.Textbox(label="URL of the extension's git repository", placeholder="https://github.com/...",
                             elem_id="extensions_url")
            with gr.Row():
                branch = gr.Textbox(label="Branch (empty: the default)", elem_id="extensions_branch")
                folder = gr.Textbox(label="Folder name (empty: from the URL)", elem_id="extensions_folder")
            with gr.Row():
                check_url = gr.Button("Check", elem_id="extensions_check")
                install = gr.Button("Install", variant="primary", elem_id="extensions_install", interactive=False)
            install_message = gr.HTML(elem_id="extensions_install_message")

    listing = [table, name, errors]

    def guarded(action):
        """``action``'s message, or its refusal in red; the table as it is now in both cases."""
        def run(*args):
            try:
                text = action(*args)
                shown = ok_html(text)
            except StudioError as exc:
                shown = error_html(str(exc))
            return (shown, *table_updates())
        return run

    def set_enabled(enabled: bool):
        def act(chosen: str | None) -> str:
            row = admin.set_enabled(_chosen(chosen), enabled)
            return f"{row.name}: {'enabled' if enabled else 'disabled'} ({row.pending or 'as it is now'}; "  \
                   "press Apply and restart UI)"
        return act

    def check_updates(chosen: str | None) -> str:
        found = admin.updates(_chosen(chosen))
        return _commits(found.folder, found.commits, "has")

    def do_update(chosen: str | None) -> str:
        found = admin.update(_chosen(chosen))
        return _commits(found.folder, found.commits, "got") + (" Press Apply and restart UI." if found.commits else "")

    def do_remove(chosen: str | None, confirmed: bool) -> str:
        chosen = _chosen(chosen)
        admin.check_access()
        if not confirmed:
            raise StudioError(f"Tick 'Yes, remove its folder' to remove {chosen}")
        admin.remove(chosen)
        return f"{chosen} removed: gone after restart"

    def do_check_all() -> str:
        found = admin.check_all_updates()
        if not found:
            return "No extension installed with git to check."
        return " · ".join(f"{n}: {_commits(u.folder, u.commits, 'has') if not isinstance(u, str) else u}"
                          for n, u in found.items())

    private = {"api_visibility": "private"}
    enable.click(guarded(set_enabled(True)), name, [message, *listing], api_name="extensions_enable", **private)
    disable.click(guarded(set_enabled(False)), name, [message, *listing], api_name="extensions_disable", **private)
    check.click(guarded(check_updates), name, [message, *listing], api_name="extensions_updates", **private)
    update.click(guarded(do_update), name, [message, *listing], api_name="extensions_update", **private)
    remove.click(guarded(do_remove), [name, confirm], [message, *listing], api_name="extensions_remove", **private)
    check_all.click(guarded(do_check_all), None, [message, *listing], api_name="extensions_check_all", **private)
    refresh.click(lambda: ("", *table_updates()), None, [message, *listing], api_name="extensions_refresh", **private)

    def do_restart() -> str:
        try:
            admin.restart()
        except StudioError as exc:
            return error_html(str(exc))
        return ok_html("Restarting... the page reloads when the server is back.")

    # The page starts waiting only when the server accepted the restart (a refusal shows in red instead).
    restart.click(do_restart, None, restart_status, api_name="extensions_restart", **private).then(
        None, restart_status, None, js=RESTART_JS)

    def show_available(query: str, refresh_index: bool = False):
        table_html, choices = available_table(admin, query, refresh_index)
        return table_html, choices

    load.click(lambda q: show_available(q, True), search, [available, pick], api_name="extensions_index", **private)
    search.submit(show_available, search, [available, pick], **private)

    def install_from(source_url: str | None, source_branch: str = "", source_folder: str = "") -> str:
        if not source_url:
            raise StudioError("Choose an extension (or give its URL) first")
        done = admin.install(InstallRequest(source_url, source_branch, source_folder, install_requirements=True))
        installed = f"; requirements installed: {', '.join(done.requirements_installed)}" \
            if done.requirements_installed else ""
        return (f"Installed {done.manifest.name} {done.manifest.version} into extensions/{done.folder}{installed}. "
                "It loads after restart: press Apply and restart UI on the Installed tab.")

    def check_from(source_url: str, source_branch: str, source_folder: str) -> str:
        plan = admin.check_install(InstallRequest(source_url, source_branch, source_folder))
        m = plan.manifest
        req = plan.requirements
        lines = [f"{m.name} {m.version} (extension API {m.api}) into extensions/{plan.folder}"]
        if m.description:
            lines.append(m.description)
        if req.lines:
            adds = ", ".join(req.would_install) or "nothing new (all already installed)"
            lines.append(f"Requirements: {', '.join(req.lines)}; pip would install: {adds}" +
                         (f" ({req.note})" if req.note else ""))
        else:
            lines.append("No Python requirements.")
        lines.append(CHECKED)
        return " · ".join(lines)

    # Install is offered only after Check has shown what the URL holds and what pip would add (and again after
    # any change to the URL, branch or folder); the REST API's install is direct.
    def gate(shown: str) -> Any:
        return gr.update(interactive="studio-ok" in (shown or "") and CHECKED in shown)

    install.click(guarded(install_from), [url, branch, folder], [install_message, *listing],
                  api_name="extensions_install", **private).then(gate, install_message, install, **private)
    check_url.click(guarded(check_from), [url, branch, folder], [install_message, *listing],
                    api_name="extensions_check", **private).then(gate, install_message, install, **private)
    check_pick.click(guarded(lambda chosen: check_from(chosen or "", "", "")), pick, [available_message, *listing],
                     api_name="extensions_check_available", **private).then(
        gate, available_message, install_pick, **private)
    install_pick.click(guarded(install_from), pick, [available_message, *listing],
                       api_name="extensions_install_available", **private).then(
        gate, available_message, install_pick, **private)
    for box in (url, branch, folder):
        box.input(lambda: gr.update(interactive=False), None, install, **private)
    pick.change(lambda: gr.update(interactive=False), None, install_pick, **private)

def _chosen(name: str | None) -> str:
    if not name:
        raise StudioError("Choose an extension first")
    return name


def _commits(folder: str, commits: tuple[str, ...], verb: str) -> str:
    if not commits:
        return f"{folder}: up to date"
    return f"{folder} {verb} {len(commits)} new commit(s): " + "; ".join(commits)
