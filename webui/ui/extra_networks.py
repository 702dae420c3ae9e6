"""The Extra Networks panel of the txt2img and img2img tabs (A1111's): cards of checkpoints, textual-inversion
embeddings and LoRAs, with search, sort and Refresh.

Cards are built here as HTML with every name, path and text escaped (file names are whatever someone dropped in
a model folder). A click on a card is handled in the page (``static/extra_networks.js``): a LoRA card toggles
``<lora:NAME:1>`` at the end of the tab's prompt, an embedding card its name (a second click removes it, as in
A1111), and a checkpoint card puts its title in a hidden box whose ``change`` event switches the checkpoint
through the checkpoint bar's own switch (:func:`wire_checkpoint_cards`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable, Iterator

import gradio as gr

from webui.services.container import Services
from webui.services.extra_networks import KINDS, LABELS, SORTS, Card

PREVIEW_PREFIX = "/studio/v1/extra-networks"
_STYLE = """<style>
.studio-en-cards { display: flex; flex-wrap: wrap; gap: 8px; }
.studio-en-card { width: 160px; border: 1px solid var(--border-color-primary, #ccc); border-radius: 8px;
                  cursor: pointer; overflow: hidden; background: var(--background-fill-secondary, #f7f7f7); }
.studio-en-card:hover { outline: 2px solid var(--color-accent, #f97316); }
.studio-en-thumb { width: 160px; height: 160px; object-fit: cover; display: block; }
.studio-en-placeholder { width: 160px; height: 160px; display: flex; align-items: center; justify-content: center;
                         font-size: 14px; opacity: 0.6; background: var(--background-fill-primary, #eee); }
.studio-en-name { font-weight: 600; padding: 4px 6px 0; word-break: break-word; }
.studio-en-desc, .studio-en-note { padding: 0 6px; font-size: 12px; opacity: 0.8; word-break: break-word; }
.studio-en-note { color: #b42318; }
.studio-en-details { padding: 0 6px 4px; font-size: 12px; cursor: default; }
.studio-en-details table { border-collapse: collapse; table-layout: fixed; width: 100%; }
.studio-en-details th, .studio-en-details td { padding: 1px 4px 1px 0; border: none; vertical-align: top;
                                               word-break: break-word; font-size: 11px; }
.studio-en-details th { text-align: left; width: 40%; }
</style>"""


def _escape(text: str) -> str:
    return html.escape(text, quote=True)


def card_html(card: Card, prefix: str, images: bool = True) -> str:
    """One card; every string escaped. ``images``: False when the browser cannot fetch previews (API login)."""
    from urllib.parse import quote

    if card.has_preview and images:
        src = f"{PREVIEW_PREFIX}/{card.kind}/preview?name={quote(card.key, safe='')}"
        thumb = f"<img class='studio-en-thumb' src='{_escape(src)}' alt='' loading='lazy'>"
    else:
        thumb = f"<div class='studio-en-placeholder'>{_escape(LABELS[card.kind])}</div>"
    rows = list(card.details.items())
    if card.tags:
        rows.append(("Tags", ", ".join(card.tags)))
    rows.append(("File", card.key))
    table = "".join(f"<tr><th>{_escape(k)}</th><td>{_escape(v)}</td></tr>" for k, v in rows)
    description = f"<div class='studio-en-desc'>{_escape(card.description)}</div>" if card.description else ""
    note = f"<div class='studio-en-note'>{_escape(card.note)}</div>" if card.note else ""
    return (f"<div class='studio-en-card' role='button' tabindex='0' data-kind='{card.kind}' data-tab='{prefix}' "
            f"data-insert='{_escape(card.insert)}' data-name='{_escape(card.name)}' "
            f"title='{_escape(card.key)}'>{thumb}<div class='studio-en-name'>{_escape(card.name)}</div>"
            f"{description}{note}<details class='studio-en-details'><summary>Details</summary>"
            f"<table>{table}</table></details></div>")


def cards_html(services: Services, prefix: str, kind: str, search: str = "", sort: str = "Name") -> str:
    """The HTML of one kind's cards for the ``prefix`` tab, filtered by ``search``."""
    if services.extra_networks is None:
        return "<p>Extra Networks are not available on this server.</p>"
    cards = services.extra_networks.cards(kind, search or "", sort or "Name")
    images = not services.settings.api_auth  # behind --api-auth the page has no credentials for the route
    if not cards:
        what = "match the search" if (search or "").strip() else f"found in the {LABELS[kind]} folder"
        body = f"<p class='studio-muted'>No {_escape(LABELS[kind])} {what}.</p>"
    else:
        body = "".join(card_html(card, prefix, images) for card in cards)
    return f"{_STYLE}<div class='studio-en-cards' id='{prefix}_{kind}_cards'>{body}</div>"


def all_cards_html(services: Services, prefix: str, search: str = "", sort: str = "Name") -> list[str]:
    return [cards_html(services, prefix, kind, search, sort) for kind in KINDS]


def refresh(services: Services, prefix: str, search: str = "", sort: str = "Name") -> list[str]:
    """Rescan the folders and return the new HTML of every tab (the app calls this after writing a model)."""
    if services.extra_networks is not None:
        services.extra_networks.refresh()
    return all_cards_html(services, prefix, search, sort)


@dataclass
class ExtraNetworksPanel:
    prefix: str
    toggle: gr.Button
    panel: gr.Column
    search: gr.Textbox
    sort: gr.Dropdown
    refresh: gr.Button
    html: dict[str, gr.HTML]
    checkpoint_box: gr.Textbox  # hidden: a checkpoint card's title lands here
    status: gr.Markdown

    def outputs(self) -> list[gr.HTML]:
        return [self.html[kind] for kind in KINDS]


def build(services: Services, prefix: str) -> ExtraNetworksPanel:
    """The toggle button and the (closed) panel; place it under the prompt row."""
    opened = gr.State(False)
    toggle = gr.Button("Extra Networks", size="sm", elem_id=f"{prefix}_extra_networks_toggle", scale=0,
                       min_width=160)
    with gr.Column(visible=False, elem_id=f"{prefix}_extra_networks") as panel:
        with gr.Row(equal_height=True):
            search = gr.Textbox(label="Search", placeholder="name, path or tag", scale=4,
                                elem_id=f"{prefix}_extra_networks_search")
            sort = gr.Dropdown(list(SORTS), value=SORTS[0], label="Sort by", scale=1,
                               elem_id=f"{prefix}_extra_networks_sort")
            refresh_button = gr.Button("Refresh", scale=0, min_width=80, elem_id=f"{prefix}_extra_networks_refresh")
        status = gr.Markdown(elem_id=f"{prefix}_extra_networks_status")
        html_by_kind: dict[str, gr.HTML] = {}
        with gr.Tabs():
            for kind in KINDS:
                with gr.Tab(LABELS[kind], id=f"{prefix}_en_{kind}", elem_id=f"{prefix}_extra_networks_{kind}"):
                    html_by_kind[kind] = gr.HTML("", elem_id=f"{prefix}_extra_networks_{kind}_html")
        checkpoint_box = gr.Textbox(visible="hidden", elem_id=f"{prefix}_extra_networks_checkpoint")
    result = ExtraNetworksPanel(prefix, toggle, panel, search, sort, refresh_button, html_by_kind, checkpoint_box,
                                status)
    outputs = result.outputs()

    def do_toggle(is_open: bool, query: str, order: str):
        if is_open:
            return [False, gr.update(visible=False), *[gr.update() for _ in outputs]]
        return [True, gr.update(visible=True), *all_cards_html(services, prefix, query, order)]

    toggle.click(do_toggle, [opened, search, sort], [opened, panel, *outputs], api_visibility="private")

    def rerender(query: str, order: str) -> list[str]:
        return all_cards_html(services, prefix, query, order)

    search.change(rerender, [search, sort], outputs, trigger_mode="always_last", show_progress="hidden",
                  api_visibility="private")
    sort.change(rerender, [search, sort], outputs, api_visibility="private")
    refresh_button.click(lambda query, order: refresh(services, prefix, query, order), [search, sort], outputs,
                         api_visibility="private")
    return result


def wire_checkpoint_cards(panels: list[ExtraNetworksPanel], checkpoint: gr.Dropdown,
                          switch: Callable[[str], Iterator[tuple[str, object]]]) -> None:
    """A checkpoint card selects its checkpoint through ``switch`` (the checkpoint bar's), whose progress and
    outcome show in the panel's status line and the checkpoint dropdown."""
    for panel in panels:
        def select(title: str) -> Iterator[tuple[object, object, object]]:
            if not title:  # the box emptied below
                yield gr.update(), gr.update(), gr.update()
                return
            for text, update in switch(title):
                yield text, update, gr.update()
            yield gr.update(), gr.update(), ""  # emptied, so that the same card can be clicked again

        # "change", not "input": a value set by the page script fires Gradio's change event only.
        panel.checkpoint_box.change(select, panel.checkpoint_box,
                                    [panel.status, checkpoint, panel.checkpoint_box], api_visibility="private")
