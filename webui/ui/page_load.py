"""What every page load shows anew: the lists of files and the current selections.

The Blocks are built once at start-up, so a list baked into them would show the files of that moment to every
later page (a checkpoint added and found by Refresh since, a reload or a second tab, would be missing). Each list
here is filled on page load from the services' current lists; nothing is rescanned from disk (Refresh does that).
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from webui.services.container import Services


def checkpoint_bar(services: Services, notice: Callable[[Services], str]) -> tuple[Any, Any, str]:
    """The checkpoint dropdown (its choices and the checkpoint new jobs use), and the first-run notice."""
    titles = [info.title for info in services.registry.list()]
    selected = services.manager.selected
    value = selected.title if selected is not None and selected.title in titles else (titles or [None])[0]
    return gr.update(choices=titles, value=value), gr.update(visible=not titles), notice(services)


def vae_list(services: Services, choices: Callable[[Services], list[str]]) -> Any:
    """The SD VAE dropdown: the files known now and the ``sd_vae`` option (set from any tab or the API)."""
    return gr.update(choices=choices(services), value=services.options.value("sd_vae"))


def keep_or_first(choices: list[str], current: str | None, first: str | None = None) -> Any:
    """A dropdown's new choices, keeping the value shown (a choice, or a name a user typed or pasted) when it is
    still listed, else ``first`` (default: the first choice)."""
    if current in choices:
        return gr.update(choices=choices)
    return gr.update(choices=choices, value=first if first is not None else (choices or [None])[0])


def kept_selection(choices: list[str], current: list[str] | None) -> Any:
    """A multi-select's new choices, keeping the picked values that are still listed."""
    return gr.update(choices=choices, value=[name for name in current or [] if name in choices])


def wire(demo: gr.Blocks, fills: list[tuple[Callable[..., Any], list, list]]) -> None:
    """One ``demo.load`` per list: ``(fn, inputs, outputs)``; a slow list never holds up another."""
    for fn, inputs, outputs in fills:
        demo.load(fn, inputs, outputs, api_visibility="private")
