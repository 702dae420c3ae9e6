"""Prompt-box helpers: the token counters (server side, as A1111 counts) and the page script for the keyboard
(Ctrl+Enter, Ctrl+Up/Down weights, LoRA/embedding completion: ``static/prompt_tools.js``)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import gradio as gr

from webui.errors import StudioError
from webui.services.container import Services
from webui.ui.generation_form import PromptRow

STATIC = Path(__file__).parent / "static"


def page_js(api_auth: bool = False) -> str:
    """The page's own scripts (every ``static/*.js``, in name order), run once when the page loads.

    Behind ``--api-auth`` the page does not fetch the LoRA/embedding lists from ``/sdapi/v1``: the browser has no
    API credentials, and a 401 there would pop up the browser's own login dialog."""
    config = f"window.studioPageConfig = {json.dumps({'apiLists': not api_auth})};"
    return "\n".join([config, *(path.read_text(encoding="utf-8") for path in sorted(STATIC.glob("*.js")))])


def counter_html(text: str, title: str = "") -> str:
    return (f"<span class='studio-token-count' title='{html.escape(title, quote=True)}'>"
            f"{html.escape(text)}</span>")


EMPTY = counter_html("0/75")


def count_html(services: Services, text: str | None, styles: list[str] | None, steps: float | None,
               positive: bool) -> str:
    """The counter for one prompt box: the prompt with the selected styles applied (A1111's default), counted."""
    if services.tokens is None:
        return ""
    text = text or ""
    if styles and services.styles is not None:
        key = "prompt" if positive else "negative_prompt"
        try:
            text = services.styles.apply_to_fields({key: text}, list(styles))[key]
        except StudioError:
            pass  # a style deleted from styles.csv since the list was read: count the box as it is
    count = services.tokens.count(text, int(steps or 20), positive)
    title = ("over this server's prompt length limit" if count.too_long else
             "tokens / the 75-token chunks they fill (BREAK starts a new chunk)")
    return counter_html(count.text(), title)


def wire_token_counters(services: Services, row: PromptRow, styles: gr.Dropdown, steps: gr.components.Component
                        ) -> None:
    """Recount as the prompt, the styles or the steps change; only the latest text is counted (always_last), and
    outside the generation queue's limit so counting never waits behind a job."""
    pairs = ((row.prompt, row.prompt_tokens, True), (row.negative_prompt, row.negative_tokens, False))
    for box, counter, positive in pairs:
        if counter is None:
            continue

        def count(text: str, names: list[str] | None, n: float | None, positive: bool = positive) -> str:
            return count_html(services, text, names, n, positive)

        for source in (box, styles, steps):
            source.change(count, [box, styles, steps], counter, trigger_mode="always_last", show_progress="hidden",
                          concurrency_limit=None, api_visibility="private")
