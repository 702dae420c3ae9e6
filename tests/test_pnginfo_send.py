"""PNG Info's "Send to": every field we support is set (sampler and schedule together, clip skip reset as A1111
does), the image's checkpoint is switched to or reported missing, and what cannot be applied is named."""

from __future__ import annotations

import gradio as gr
import pytest

from webui.infotext_paste import paste
from webui.parameters import TXT2IMG, IMG2IMG, for_task
from webui.ui.app import build_ui
from webui.samplers import schedules_for

TXT2IMG_FIELDS = [p.name for p in for_task(TXT2IMG) if p.widget is not None]
IMG2IMG_FIELDS = [p.name for p in for_task(IMG2IMG) if p.widget is not None]

HIRES = ("a fox\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Denoising strength: 0.5, "
         "Hires upscale: 2, Hires upscaler: Latent, ADetailer model: face_yolov8n.pt, Version: v1.10.1")


def test_keys_we_cannot_apply_are_named_and_record_keys_are_not():
    pasted = paste(HIRES, TXT2IMG_FIELDS)
    # The hires keys turn txt2img's hires fix on with their values; the extension's key is named.
    assert pasted.not_applied == ("ADetailer model",)
    assert pasted.values["sampler_name"] == "Euler a" and pasted.values["seed"] == 5
    assert (pasted.values["enable_hr"], pasted.values["hr_scale"], pasted.values["hr_upscaler"],
            pasted.values["denoising_strength"]) == (True, 2.0, "Latent", 0.5)
    # The same text sent to img2img applies its denoising strength.
    assert "Denoising strength" not in paste(HIRES, IMG2IMG_FIELDS).not_applied


def test_missing_clip_skip_schedule_and_negative_take_a1111s_defaults():
    values = paste("a\nSteps: 9, Sampler: DPM++ 2M, Seed: 1", TXT2IMG_FIELDS).values
    assert values["clip_skip"] == 1 and values["scheduler"] == "Automatic" and values["negative_prompt"] == ""


@pytest.mark.parametrize("text, sampler, schedule, refused", [
    ("a\nSteps: 9, Sampler: DPM++ 2M Karras, Seed: 1", "DPM++ 2M", "Karras", ()),  # old fused name
    ("a\nSteps: 9, Sampler: DPM++ 2M, Schedule type: Exponential, Seed: 1", "DPM++ 2M", "Exponential", ()),
    ("a\nSteps: 9, Sampler: Euler a, Schedule type: Karras, Seed: 1", "Euler a", "Karras", ()),
    ("a\nSteps: 9, Sampler: DPM++ 2M, Schedule type: Align Your Steps, Seed: 1", "DPM++ 2M", "Align Your Steps", ()),
    ("a\nSteps: 9, Sampler: DDIM, Schedule type: Karras, Seed: 1", "DDIM", "Automatic", ("Schedule type",)),
    ("a\nSteps: 9, Sampler: Restart, Schedule type: Karras, Seed: 1", None, None, ("Sampler",)),
])
def test_sampler_and_schedule_are_set_together(text, sampler, schedule, refused):
    pasted = paste(text, TXT2IMG_FIELDS)
    assert (pasted.values.get("sampler_name"), pasted.values.get("scheduler")) == (sampler, schedule)
    assert pasted.not_applied == refused


def test_values_out_of_bounds_are_not_applied():
    pasted = paste("a\nSteps: 0, Seed: 1, Size: 100x64, CFG scale: 7", TXT2IMG_FIELDS)
    assert "steps" not in pasted.values and "width" not in pasted.values
    assert pasted.not_applied == ("Steps", "Size")


# ------------------------------------------------------------------------------------------- the UI handler


def _handlers(demo: gr.Blocks) -> dict[str, tuple]:
    """Per target tab: the "Send to" event and the checkpoint-switch event chained after it."""
    sends = {dep.fn.__defaults__[0]: dep for dep in demo.fns.values() if getattr(dep.fn, "__name__", None) == "send"}
    switches = [dep for dep in demo.fns.values() if getattr(dep.fn, "__name__", None) == "switch_to"]
    return {tab: (dep, switches[i]) for i, (tab, dep) in enumerate(sends.items())}


def _shown(dep, updates) -> dict:
    return {c.label: u for c, u in zip(dep.outputs, updates) if isinstance(u, dict) and "value" in u}


def test_send_switches_to_the_images_checkpoint_by_hash(services):
    other = next(i for i in services.registry.list() if i.title != services.manager.selected.title)
    demo = build_ui(services)
    send, switch = _handlers(demo)["txt2img"]
    text = (f"a fox\nSteps: 13, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 99, Size: 320x256, "
            f"Model hash: {other.short_hash}, Model: renamed-on-their-disk, Version: v1.10.1")
    *updates, selected, notice, title, status = send.fn(text)
    assert selected.selected == "txt2img" and notice == status == "" and title == other.title
    shown = _shown(send, updates)
    # The schedule arrives with the sampler's own schedule choices, so "Karras" is a valid choice there.
    assert shown["Schedule type"]["value"] == "Karras"
    assert [c[0] if isinstance(c, tuple) else c for c in shown["Schedule type"]["choices"]] == \
        list(schedules_for("DPM++ 2M"))
    assert shown["Clip skip"]["value"] == 1  # A1111 resets it when the text has none
    *_, (status, dropdown) = list(switch.fn(title, status))
    assert services.manager.selected.title == other.title
    assert other.title in status and dropdown["value"] == other.title


def test_send_says_in_one_line_which_checkpoint_is_missing_and_what_was_not_applied(services):
    before = services.manager.selected.title
    demo = build_ui(services)
    send, switch = _handlers(demo)["txt2img"]
    text = HIRES.replace("Version", "Model hash: 0123456789, Model: dreamshaper_8, Version")
    *_, notice, title, status = send.fn(text)
    assert title is None
    assert "Checkpoint dreamshaper_8 [0123456789] is not on disk" in notice
    assert "Not applied: ADetailer model" in notice  # the hires keys set txt2img's hires fix
    assert notice.count("<p") == 2
    # The same two lines above the tabs, where the user lands after "Send to" (Markdown-escaped).
    assert status.split("\n\n") == [r"Checkpoint dreamshaper\_8 \[0123456789\] is not on disk: the current one "
                                     r"stays selected\.", r"Not applied: ADetailer model"]
    assert list(switch.fn(None, status)) == [(gr.update(), gr.update())]
    assert services.manager.selected.title == before


def test_send_of_the_current_checkpoint_switches_nothing(services):
    current = services.manager.selected
    send, _ = _handlers(build_ui(services))["img2img"]
    *_, notice, title, status = send.fn(f"a\nSteps: 5, Seed: 1, Model hash: {current.short_hash}, Model: x")
    assert title is None and notice == status == ""


def test_a_crafted_model_name_cannot_add_markup_to_the_status_line(services):
    send, _ = _handlers(build_ui(services))["txt2img"]
    *_, notice, _title, status = send.fn("a\nSteps: 5, Seed: 1, Model: ![x](http://example.com/t.png)")
    assert "<img" not in notice and "![" not in status and r"\!\[x\]\(http://example\.com/t\.png\)" in status


def test_send_takes_saved_styles_out_of_the_prompts_and_selects_them(services):
    # A1111's default (infotext_styles "Apply if any"): the styled prompt goes back to what was typed plus styles.
    services.styles.save("Film", "cinematic still of {prompt}, film grain", "lowres")
    services.styles.save("Oil", "oil painting", "")
    send, _ = _handlers(build_ui(services))["txt2img"]
    params = "Steps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64"
    *updates, _selected, _notice, _title, _status = send.fn(
        f"cinematic still of a fox, film grain, oil painting\nNegative prompt: ugly, lowres\n{params}")
    shown = _shown(send, updates)
    assert shown["Prompt"]["value"] == "a fox" and shown["Negative prompt"]["value"] == "ugly"
    assert shown["Styles"]["value"] == ["Film", "Oil"]
    # A prompt no style was applied to is sent as it is, and the selection is emptied.
    *updates, _selected, _notice, _title, _status = send.fn(f"a dog, oil\n{params}")
    shown = _shown(send, updates)
    assert shown["Prompt"]["value"] == "a dog, oil" and shown["Styles"]["value"] == []
