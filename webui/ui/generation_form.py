"""Widgets and streaming shared by the txt2img and img2img tabs.

Parameter widgets are built from the table in ``webui.parameters`` and kept by request field name; handlers read
``{component: value}`` dicts, so no positional contract ties the UI to the backend.
"""

from __future__ import annotations

import html
import itertools
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import gradio as gr

from webui.config import Limits
from webui.errors import StudioError
from webui.infotext import parse_infotext
from webui.parameters import BY_NAME, Param, for_task, widget_rows
from webui.samplers import sampler_names, schedules_for
from webui.services.container import Services
from webui.services.job_estimate import JobEstimate, LongJobWarning
from webui.services.jobs import Job
from webui.types import JobState, Progress
from webui.ui import gallery_actions

PREVIEW_HEIGHT = 384  # pixels of the live preview's box
WATCH_TIMEOUT = 1.0  # seconds a streaming handler waits for a progress change before re-checking the job

Widgets = dict[str, gr.components.Component]  # request field name -> its widget, in the table's order


@dataclass
class PromptRow:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    prompt_tokens: gr.HTML | None = None  # the token counters (webui/ui/prompt_tools.py wires them)
    negative_tokens: gr.HTML | None = None
    extra: Any = None  # what ``under_buttons`` built (the styles bar)


@dataclass
class Outputs:
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox
    actions: gallery_actions.GalleryActions | None = None  # the row under the gallery

    def components(self) -> list:
        return [self.progress, self.preview, self.gallery, self.info]


def param_widget(param: Param, prefix: str, limits: Limits | None = None, **extra: Any) -> gr.components.Component:
    """The widget the table declares for ``param``, at the request's default; ``extra`` adds Gradio options."""
    w = param.widget
    assert w is not None, param.name
    options: dict[str, Any] = dict(label=w.label, elem_id=w.elem_id.format(tab=prefix) if w.elem_id else None)
    options.update(extra)
    if w.kind == "textbox":
        return gr.Textbox(lines=w.lines, **options)
    if w.kind == "dropdown":
        return gr.Dropdown(options.pop("choices", list(w.choices)), value=options.pop("value", param.default),
                           **options)
    if w.kind == "radio":
        return gr.Radio(list(w.choices), value=w.to_ui(param.default), **options)
    if w.kind == "checkbox":
        return gr.Checkbox(value=param.default, **options)
    if w.kind == "number":
        return gr.Number(param.default, precision=0 if param.type is int else None, **options)
    maximum = param.ui_maximum(limits) if limits is not None else w.maximum
    return gr.Slider(w.minimum, maximum, value=param.default, step=w.step, **options)


def build_widgets(params: Iterable[Param], prefix: str, limits: Limits,
                  after: dict[str, Callable[[], None]] | None = None, **extra: dict[str, Any]) -> Widgets:
    """Widgets for ``params`` in order; rows sharing ``Widget.row`` side by side. ``after[name]`` adds to that
    widget's row (e.g. a button); ``extra[name]`` are Gradio options for that widget."""
    widgets: Widgets = {}
    for row, group in itertools.groupby(params, key=lambda p: p.widget.row if p.widget else None):
        group = list(group)
        with gr.Row() if row is not None else nullcontext():
            for param in group:
                widgets[param.name] = param_widget(param, prefix, limits, **extra.get(param.name, {}))
                if after and param.name in after:
                    after[param.name]()
    return widgets


def request_fields(values: dict, widgets: Widgets) -> dict[str, Any]:
    """Widget values as request fields (radio labels to indices, Gradio's float numbers to ints)."""
    return {name: BY_NAME[name].from_ui(values[component]) for name, component in widgets.items()}


# Picked with their own selectors at the top of the page, which the job reads.
_OWN_SELECTORS = frozenset({"checkpoint", "sd_vae"})


def option_fields(services: Services, task: str, widgets: Widgets) -> dict[str, Any]:
    """Fields a server option supplies and the form has no widget for (A1111's sampler parameters ...): the
    option's current value, as A1111 applies its settings to every job from its UI too."""
    return {p.name: services.options.value(p.setting) for p in for_task(task)
            if p.setting and p.name not in widgets and p.name not in _OWN_SELECTORS}


def progress_html(progress: Progress, position: int | None = None) -> str:
    if progress.state is JobState.QUEUED:
        ahead = f" (position {position})" if position else ""
        return f"<div class='studio-progress'>Waiting in queue{ahead}…</div>"
    if progress.state is JobState.PAUSED:
        return "<div class='studio-progress'>Paused (resume it from the History tab)</div>"
    stopping = "Interrupting… " if progress.interrupting else "Skipping… " if progress.skipping else ""
    percent = int(progress.fraction * 100)
    eta = f" · ETA {progress.eta_seconds:.0f}s" if progress.eta_seconds is not None else ""
    stage = f"{progress.stage} · " if progress.stage else ""  # a script's own ("Cell 3 of 12")
    text = (f"{stopping}{stage}Step {progress.step}/{progress.steps} · image batch {progress.image_index + 1}/"
            f"{max(1, progress.image_count)}{eta}")
    return (f"<div class='studio-progress'><progress max='100' value='{percent}'></progress> "
            f"<span>{html.escape(text)}</span></div>")


def error_html(message: str) -> str:
    return f"<div class='studio-error' role='alert'>⚠ {html.escape(message)}</div>"


EMPTY_COUNT = "<span class='studio-token-count'>0/75</span>"


def build_prompt_row(prefix: str, placeholder: str = "", under_buttons: Callable[[], Any] | None = None) -> PromptRow:
    """The prompt boxes (each with its token counter) and the buttons; ``under_buttons`` builds more under them."""
    with gr.Row():
        with gr.Column(scale=4, elem_classes=["studio-prompts"]):
            prompt = param_widget(BY_NAME["prompt"], prefix, placeholder=placeholder)
            prompt_tokens = gr.HTML(EMPTY_COUNT, elem_id=f"{prefix}_token_counter",
                                    elem_classes=["studio-token-counter"])
            negative = param_widget(BY_NAME["negative_prompt"], prefix)
            negative_tokens = gr.HTML(EMPTY_COUNT, elem_id=f"{prefix}_negative_token_counter",
                                      elem_classes=["studio-token-counter"])
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt")
                skip = gr.Button("Skip", elem_id=f"{prefix}_skip")
            extra = under_buttons() if under_buttons is not None else None
    return PromptRow(prompt, negative, generate, interrupt, skip, prompt_tokens, negative_tokens, extra)


@dataclass
class ReuseButtons:
    """The ♻ buttons that put the last image's seed (and variation seed) back into the form."""

    seed: gr.Button
    subseed: gr.Button


def build_settings(services: Services, prefix: str) -> Widgets:
    """The sampling settings every diffusion tab has (the table's rows shared by txt2img and img2img)."""
    return build_settings_and_reuse(services, prefix)[0]


def build_settings_and_reuse(services: Services, prefix: str) -> tuple[Widgets, ReuseButtons]:
    """:func:`build_settings` plus the ♻ buttons; wire them with :func:`wire_reuse` once the info box exists."""
    buttons: list[gr.Button] = []

    def seed_buttons() -> None:
        buttons.append(gr.Button("Random", scale=0, min_width=80))
        buttons.append(gr.Button("♻", scale=0, min_width=50, elem_id=f"{prefix}_reuse_seed"))

    def subseed_button() -> None:
        buttons.append(gr.Button("♻", scale=0, min_width=50, elem_id=f"{prefix}_reuse_subseed"))

    rows = list(widget_rows())
    cut = next(i for i, p in enumerate(rows) if p.name == "seed") + 1
    limits = services.settings.limits
    widgets = build_widgets(rows[:cut], prefix, limits, after={"seed": seed_buttons},
                            scheduler={"choices": list(schedules_for(BY_NAME["sampler_name"].default))})
    # A1111's "Extra" seed controls: collapsed, right under the seed.
    with gr.Accordion("Extra: variation seed and noise", open=False, elem_id=f"{prefix}_seed_extra"):
        widgets.update(build_widgets(widget_rows(panel="seed_extra"), prefix, limits,
                                     after={"subseed": subseed_button}))
    widgets.update(build_widgets(rows[cut:], prefix, limits))
    sampler, scheduler, seed = widgets["sampler_name"], widgets["scheduler"], widgets["seed"]
    random_seed, reuse_seed, reuse_subseed = buttons

    def on_sampler_change(name: str, current: str):
        choices = list(schedules_for(name)) if name in sampler_names() else ["Automatic"]
        return gr.update(choices=choices, value=current if current in choices else "Automatic")

    sampler.change(on_sampler_change, [sampler, scheduler], scheduler, api_visibility="private")
    random_seed.click(lambda: -1, None, seed, api_visibility="private")
    return widgets, ReuseButtons(reuse_seed, reuse_subseed)


def reused_seed(info: str, key: str) -> Any:
    """The seed ``key`` ("Seed" or "Variation seed") the shown image's infotext records; no change if none."""
    value = parse_infotext(info).params.get(key) if info else None
    try:
        return int(value) if value is not None else gr.update()
    except ValueError:
        return gr.update()


def wire_reuse(buttons: ReuseButtons, info: gr.Textbox, widgets: Widgets) -> None:
    """♻ fills the seed (or variation seed) of the last image shown, as A1111's reuse buttons do."""
    buttons.seed.click(lambda text: reused_seed(text, "Seed"), info, widgets["seed"], api_visibility="private")
    buttons.subseed.click(lambda text: reused_seed(text, "Variation seed"), info, widgets["subseed"],
                          api_visibility="private")


def build_outputs(prefix: str, exposed: bool = False) -> Outputs:
    """Progress, preview, the gallery with its actions row (no Open folder when ``exposed``), the info box."""
    progress = gr.HTML(elem_id=f"{prefix}_progress")
    # A real box (not a strip): the preview comes at the output's size and is fitted into it.
    preview = gr.Image(label="Preview", visible=False, interactive=False, format="png", height=PREVIEW_HEIGHT,
                       elem_id=f"{prefix}_preview")
    gallery = gr.Gallery(label="Output", columns=2, format="png", elem_id=f"{prefix}_gallery", interactive=False)
    actions = gallery_actions.build(prefix, exposed)
    info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{prefix}_info")
    return Outputs(progress, preview, gallery, info, actions)


def warnings_html(warnings: list[str]) -> str:
    return "".join(f"<div class='studio-warning' role='status'>⚠ {html.escape(w)}</div>" for w in warnings)


def stream_job(submit: Callable[[], Job], cancel_on_disconnect: bool = True,
               position: Callable[[Job], int | None] = lambda job: None) -> Iterator[tuple[Any, ...]]:
    """Yield (progress, preview, gallery, info, job id) updates from submission to the finished job.

    When the browser goes away Gradio closes this generator (GeneratorExit at a ``yield``, from its queue's
    iterator reset); the job is then interrupted, as the API does for a client that hangs up.
    """
    started = time.monotonic()
    try:
        job = submit()
    except LongJobWarning as exc:  # not started: the user confirms by pressing Generate again
        yield warnings_html([str(exc)]), gr.update(visible=False), gr.update(), gr.update(), None
        return
    except StudioError as exc:
        yield error_html(str(exc)), gr.update(visible=False), gr.update(), gr.update(), None
        return
    version, shown_preview = 0, 0
    try:
        while not job.finished:
            version, p = job.watch(version, timeout=WATCH_TIMEOUT)
            preview_update = gr.update()
            if p.preview is not None and p.preview_id != shown_preview:
                shown_preview = p.preview_id
                preview_update = gr.update(value=p.preview, visible=True)
            yield progress_html(p, position(job)), preview_update, gr.update(), gr.update(), job.id
    except GeneratorExit:
        if cancel_on_disconnect:
            job.interrupt()
        raise
    try:
        result = gallery_actions.as_generation(job.wait())
    except StudioError as exc:
        yield error_html(str(exc)), gr.update(visible=False), gr.update(), gr.update(), None
        return
    note = " (interrupted)" if result.interrupted else ""
    done = (f"<div class='studio-progress'>{len(result.images)} image(s) in "
            f"{time.monotonic() - started:.1f}s{note}</div>") + warnings_html(result.warnings)
    # Paths let the browser fetch the saved files; any image that was not saved is sent itself.
    images = [str(p) for p in result.paths] if len(result.paths) == len(result.images) else result.images
    if result.grid is not None:  # A1111's return_grid: the batch's grid first
        images = [str(result.grid_path) if result.grid_path else result.grid, *images]
    yield done, gr.update(visible=False), images, "\n\n".join(result.infotexts[:1]), None


Confirm = Callable[[JobEstimate], bool]

# Said at once in the browser, before the server answers: the running generation's stream is busy.
_STOPPING_JS = """() => {{
  for (const box of document.querySelectorAll('#{prefix}_progress .studio-progress')) {{
    const span = box.querySelector('span');
    if (span && box.querySelector('progress') && !span.textContent.startsWith('{text}')) {{
      span.textContent = '{text} ' + span.textContent;
    }}
  }}
}}"""


def wire(services: Services, row: PromptRow, outputs: Outputs, inputs: set,
         submit: Callable[[dict, Confirm], Job], api_name: str) -> None:
    """Generate streams the job; Interrupt and Skip act on this browser session's job.

    ``submit(values, confirm)`` queues the job; ``confirm`` answers whether a job estimated to take very long may
    start: only when the same job was warned about by the previous press of Generate."""
    job_id = gr.State(None)
    actions = outputs.actions
    extra = [actions.results, actions.selected, actions.saved, actions.download] if actions else []
    warned = gr.State(None)  # the key of the long job the last press warned about

    def generate(values: dict) -> Iterator[tuple[Any, ...]]:
        submitted: list[Job] = []
        asked: dict[str, str] = {}

        def confirm(estimate: JobEstimate) -> bool:
            if estimate.key == values[warned]:
                return True
            asked["key"] = estimate.key
            return False

        def start() -> Job:
            submitted.append(submit(values, confirm))
            return submitted[-1]

        def updates() -> Iterator[tuple[Any, ...]]:
            # closing(): the browser leaving closes these generators, and with them stream_job (which interrupts
            # the job).
            with closing(stream_job(start, services.settings.cancel_on_disconnect, services.queue.position)) as jobs:
                for update in jobs:
                    yield (*update, asked.get("key"))

        if not actions:
            with closing(updates()) as stream:
                yield from stream
            return
        with closing(updates()) as stream:
            yield from gallery_actions.with_results(stream, lambda: submitted[-1] if submitted else None,
                                                    services.settings.data_dir)

    def interrupt(jid: str | None) -> None:
        if jid:  # only this session's job, never someone else's
            services.queue.interrupt(jid)

    def skip(jid: str | None) -> None:
        if jid:
            services.queue.skip(jid)

    # Private: a Gradio endpoint's parameters follow widget creation order; the REST API is the public one.
    row.generate.click(generate, inputs | {warned}, outputs.components() + [job_id, warned] + extra,
                       api_name=api_name,
                       api_visibility="private", concurrency_limit=services.settings.limits.queue_size)
    # Interrupt and Skip must not wait behind running generations in Gradio's own queue.
    row.interrupt.click(interrupt, job_id, None, concurrency_limit=None, api_visibility="private")
    row.skip.click(skip, job_id, None, concurrency_limit=None, api_visibility="private")
    prefix = row.generate.elem_id.removesuffix("_generate")
    row.interrupt.click(None, js=_STOPPING_JS.format(prefix=prefix, text="Interrupting…"), api_visibility="private")
    row.skip.click(None, js=_STOPPING_JS.format(prefix=prefix, text="Skipping…"), api_visibility="private")
