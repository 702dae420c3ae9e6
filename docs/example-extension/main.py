"""The example extension of docs/extensions.md (Extension API 1.0).

It adds, using only ``webui.extensions.api``:
* a panel in txt2img and img2img ("Example") whose values travel as ``extensions={"example": {...}}``
  (A1111 clients: ``alwayson_scripts={"Example": {"args": [enabled, fade]}}``), written to and read from infotext;
* a step hook that, when enabled, fades the latents a little towards zero on the last steps and counts the steps;
* an image hook that writes how many steps it saw into the image's infotext;
* a tab showing the counter, a setting (the tab's greeting), and a REST route ``GET /ext/example/stats``.
"""

from __future__ import annotations

import threading

from pydantic import BaseModel, Field

from webui.extensions.api import (AppStart, Extension, ImageResult, Params, Setting, StepState)


class ExampleValues(BaseModel):
    """The panel's widgets are built from this model: a checkbox and a slider (both bounds given)."""

    enabled: bool = Field(False, title="Enable the example")
    fade: float = Field(0.0, ge=0.0, le=0.5, title="Fade",
                        description="How much the last step pulls the latents towards zero (0: not at all)")


class Stats:
    """What the hooks saw; one per setup() (no module-level state), shared by the hooks, the tab and the route."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # hooks run in the job worker, the route in a request thread
        self.steps_seen = 0
        self.images_seen = 0

    def add_step(self) -> None:
        with self._lock:
            self.steps_seen += 1

    def add_image(self) -> None:
        with self._lock:
            self.images_seen += 1

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {"steps_seen": self.steps_seen, "images_seen": self.images_seen}


def setup(ext: Extension) -> None:
    stats = Stats()

    ext.add_params(Params(
        model=ExampleValues, title="Example",
        a1111_name="Example", a1111_args=("enabled", "fade"),
        infotext={"enabled": "Example", "fade": "Example fade"}))

    @ext.on_step
    def fade_last_step(state: StepState) -> None:
        values = state.values
        if not isinstance(values, ExampleValues) or not values.enabled:
            return  # not sent, or switched off: leave the job alone
        stats.add_step()
        if values.fade and state.step == state.steps:
            state.latents = state.latents * (1.0 - values.fade)

    @ext.on_image
    def note_steps(result: ImageResult) -> None:
        values = result.values
        if isinstance(values, ExampleValues) and values.enabled:
            stats.add_image()
            result.infotext["Example steps seen"] = str(stats.steps_seen)

    ext.add_setting(Setting(key="greeting", default="Hello from the example extension", label="Tab greeting"))

    def build_tab() -> None:
        import gradio as gr  # only the tab needs Gradio; hooks and routes run without it

        gr.Markdown(ext.context.setting("greeting"))
        counts = gr.JSON(label="What the example's hooks saw", value=stats.as_dict)
        gr.Button("Refresh", elem_id="example_refresh").click(stats.as_dict, outputs=counts)

    ext.add_tab("Example", build_tab)

    @ext.on_app_started
    def add_routes(start: AppStart) -> None:
        @start.router.get("/stats")
        def get_stats() -> dict[str, int]:
            """Served as GET /ext/example/stats, behind the API's login and security checks."""
            return stats.as_dict()
