"""The Gradio Blocks: the checkpoint bar, the tabs, and the first-run notice. Each tab lives in its own module."""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import gradio as gr

from webui import VERSION
from webui.errors import StudioError
from webui.services.container import Services
from webui.ui import (extension_tabs, extensions_tab, extra_networks, extras, form_defaults, gallery_actions, history,
                      img2img, page_load, pnginfo, scripts_area, size_defaults, styles, train, txt2img)
from webui.ui import cluster_panel
from webui.ui.runtime_line import build as build_runtime_line
from webui.ui.settings import build_settings_tab

CSS = """
.studio-error { color: #b42318; background: #fef3f2; border: 1px solid #fda29b; padding: 8px 12px;
                border-radius: 8px; }
.studio-progress { display: flex; gap: 8px; align-items: center; }
.studio-progress progress { width: 50%; }
.studio-muted { opacity: 0.7; }
.studio-params th { text-align: left; padding-right: 12px; vertical-align: top; white-space: nowrap; }
"""


def _titles(services: Services) -> list[str]:
    return [info.title for info in services.registry.list()]


def _vae_choices(services: Services) -> list[str]:
    return services.vaes.choices() if services.vaes is not None else ["Automatic", "None"]


def _notice(services: Services) -> str:
    if services.registry.list():
        return ""
    offer = ", or download Stable Diffusion 1.5 (4.3 GB) below" if services.settings.allow_download else ""
    return (f"**No checkpoint found.** Put a Stable Diffusion `.safetensors` file (or a diffusers folder) in "
            f"`{services.registry.directory}` and press Refresh{offer}.")


def exposure_banner(settings) -> str:
    """Who can reach this server, shown on every page while it is exposed beyond this machine."""
    if not settings.exposed:
        return ""
    ways = []
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        ways.append(f"every machine that can reach this computer's port {settings.port} (--listen)")
    if settings.share:
        ways.append("anyone with the public share link (--share)")
    ui = "a login" if settings.gradio_auth else "NO login"
    api = "a login" if settings.api_auth else "NO login"
    folders = "on" if settings.enable_remote_folders else "off"
    return (f"⚠ **This server is reachable by {' and '.join(ways)}.** The web UI asks for {ui}; the API asks for "
            f"{api}. Server folders (img2img Batch) are {folders}.")


def build_ui(services: Services) -> gr.Blocks:
    # Uploads (with their original metadata) and result copies in Gradio's cache go after a day, and on restart.
    with gr.Blocks(title="Stable Studio", delete_cache=(3600, 24 * 3600)) as demo:
        banner = exposure_banner(services.settings)
        if banner:
            gr.Markdown(banner, elem_id="exposure_banner", elem_classes=["studio-error"])
        with gr.Row(equal_height=True):
            selected = services.manager.selected
            checkpoint = gr.Dropdown(_titles(services), value=selected.title if selected else None,
                                     label="Stable Diffusion checkpoint", scale=4, elem_id="checkpoint",
                                     allow_custom_value=False)
            vae = gr.Dropdown(_vae_choices(services), value=services.options.value("sd_vae"), label="SD VAE",
                              scale=2, elem_id="sd_vae", allow_custom_value=False)
            refresh = gr.Button("Refresh", scale=0, min_width=80, elem_id="refresh_checkpoints")
            status = gr.Markdown(elem_id="model_status")
        build_runtime_line(services, demo, checkpoint)
        with gr.Group(visible=not services.registry.list()) as first_run:
            notice = gr.Markdown(_notice(services), elem_id="no_model_notice")
            download = gr.Button("Download Stable Diffusion 1.5", elem_id="download_default",
                                 visible=services.settings.allow_download)
            download_status = gr.Markdown(elem_id="download_status")

        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i = txt2img.build(services, checkpoint)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i = img2img.build(services, checkpoint)
            with gr.Tab("Train", id="train", elem_id="tab_train"):
                train.build(services, demo, checkpoint)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras_tab = extras.build(services)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                send, pasted = pnginfo.build(
                              {"txt2img": ("txt2img", t2i.fields()), "img2img": ("img2img", i2i.fields())}, tabs,
                              services, checkpoint, status, lambda title: _switch_checkpoint(services, title),
                              styles={"txt2img": t2i.row.extra.dropdown, "img2img": i2i.row.extra.dropdown})
                for tab_id, tab in (("txt2img", t2i), ("img2img", i2i)):  # the extensions' panels too
                    scripts_area.wire_paste(send[tab_id], pasted, tab.scripts)
            with gr.Tab("History", id="history", elem_id="tab_history") as history_tab:
                history.build(services, demo, history_tab, history.HistoryTargets(t2i, i2i, checkpoint, tabs))
            with gr.Tab("Settings", id="settings", elem_id="tab_settings") as settings_tab:
                build_settings_tab(services)
                extension_tabs.build_settings(services)  # a section per extension that has settings
                cluster_panel.build(services, settings_tab, tabs)  # the Ray replicas (--ray-address), or "off"
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions_tab.build(services)
            extension_tabs.build_tabs(services)  # the extensions' own tabs
        # One line per "Send to" target under the result galleries.
        send_targets = [*img2img.send_targets(i2i),
                        gallery_actions.SendTarget("extras", "Extras", "extras", extras.image_input(extras_tab))]
        gallery_actions.wire_galleries(services, {"txt2img": t2i.outputs, "img2img": i2i.outputs}, send_targets,
                                       tabs, lambda text, widgets: pnginfo.field_updates(text, widgets)[0])
        devices = ", ".join(services.queue.devices)
        if services.settings.scale_out is not None:
            devices += f" + Ray replicas at {services.settings.scale_out.address}"
        gr.Markdown(f"<small>Stable Studio {VERSION} · device{'s' if len(services.devices) > 1 else ''} {devices} · "
                    f"profile {services.manager.profile} · API docs at <a href='/docs'>/docs</a></small>")

        def do_refresh(current: str | None):
            services.registry.refresh()
            titles = _titles(services)
            value = current if current in titles else (titles[0] if titles else None)
            return gr.update(choices=titles, value=value), gr.update(visible=not titles), _notice(services)

        refresh.click(do_refresh, checkpoint, [checkpoint, first_run, notice], api_visibility="private")

        def refresh_vaes(current: str | None):
            if services.vaes is not None:
                services.vaes.refresh()
            choices = _vae_choices(services)
            return gr.update(choices=choices, value=current if current in choices else "Automatic")

        def select_vae(name: str):
            # A1111's "SD VAE" quick setting: the sd_vae option, used by every job that does not name a VAE.
            try:
                services.options.update({"sd_vae": name})
            except StudioError as exc:
                return f"⚠ {exc}", gr.update(value=services.options.value("sd_vae"))
            return f"SD VAE: **{name}**", gr.update()

        refresh.click(refresh_vaes, vae, vae, api_visibility="private")
        vae.input(select_vae, vae, [status, vae], api_visibility="private")

        def do_select(title: str | None) -> Iterator[tuple[str, object]]:
            yield from _switch_checkpoint(services, title)

        # The switch is a job on the queue: its place in line, loading, and the outcome stream into the status;
        # on failure the dropdown goes back to the model that is really active.
        checkpoint.input(do_select, checkpoint, [status, checkpoint], api_visibility="private")
        extra_networks.wire_checkpoint_cards([t2i.networks, i2i.networks], checkpoint,
                                             lambda title: _switch_checkpoint(services, title))

        size_defaults.wire(demo, checkpoint, [t2i.settings, i2i.settings], services.generation.native_size)
        form_defaults.wire(demo, [t2i.settings, i2i.settings], services.options)
        refiner, style_model = t2i.settings["refiner_checkpoint"], i2i.style.model
        page_load.wire(demo, [
            (lambda: page_load.checkpoint_bar(services, _notice), [], [checkpoint, first_run, notice]),
            (lambda: page_load.vae_list(services, _vae_choices), [], [vae]),
            # A refiner pasted by name stays; only the choices follow the disk.
            (lambda: gr.update(choices=txt2img.refiner_choices(services)), [], [refiner]),
            (lambda current: page_load.keep_or_first([m.title for m in services.style.list_models()], current),
             [style_model], [style_model]),
            # The prompt styles (styles.csv, as last read) and the Extras tab's upscalers (as last scanned).
            *[(lambda current: page_load.kept_selection(styles.names(services), current), [box], [box])
              for box in (t2i.row.extra.dropdown, i2i.row.extra.dropdown)],
            *[(lambda current: page_load.keep_or_first(services.upscaling.names(), current, "None"), [box], [box])
              for box in (extras_tab.upscaler_1, extras_tab.upscaler_2)],
        ])

        def download_default() -> Iterator[str]:
            yield from _download(services)  # a generator function, so Gradio streams each progress line

        download.click(download_default, None, download_status, api_visibility="private").then(
            do_refresh, checkpoint, [checkpoint, first_run, notice], api_visibility="private")
    return demo


def _switch_checkpoint(services: Services, title: str | None) -> Iterator[tuple[str, object]]:
    def active() -> str | None:
        info = services.manager.selected
        return info.title if info else None

    if not title:
        yield "", gr.update()
        return
    try:
        job = services.checkpoints.submit_switch(title, "checkpoint")
    except StudioError as exc:
        yield f"⚠ {exc}", gr.update(value=active())
        return
    version = 0
    while not job.finished:
        position = services.queue.position(job)
        text = (f"Queued (position {position}): **{title}** loads when the jobs ahead of it are done"
                if position else f"Loading **{title}**…")
        yield text, gr.update()
        version, _ = job.watch(version, timeout=1.0)
    try:
        info = job.wait()
    except StudioError as exc:
        still = active()
        yield f"⚠ {exc}" + (f" Still using **{still}**." if still else ""), gr.update(value=still)
        return
    yield f"Loaded **{info.title}**", gr.update(value=info.title)


def _download(services: Services) -> Iterator[str]:
    """Stream the default model download's progress into the notice; offline, say so in one line."""
    available, reason = services.downloads.availability()
    if not available:
        yield reason
        return
    events: queue.Queue[tuple[str, object]] = queue.Queue()

    def report(done: int, total: int | None) -> None:
        events.put(("progress", (done, total)))

    def work() -> None:
        try:
            events.put(("done", services.downloads.download(progress=report)))
        except StudioError as exc:
            events.put(("error", exc))

    threading.Thread(target=work, name="model-download", daemon=True).start()
    while True:
        kind, payload = events.get()
        if kind == "progress":
            done, total = payload  # type: ignore[misc]
            of = f" of {total / 1e9:.2f} GB ({done / total:.0%})" if total else ""
            yield f"Downloading… {done / 1e9:.2f} GB{of}"
        elif kind == "error":
            yield f"⚠ {payload}"
            return
        else:
            yield f"Downloaded to `{payload}`. Select it above."
            return
