"""What a page load fills in: the lists and selection as they are now, not as they were when the UI was built."""

from __future__ import annotations

from tests.conftest import install, make_settings
from tests.upscaler_models import esrgan_old_state, save_pth
from webui.services.container import build_services
from webui.ui import page_load
from webui.ui.app import _notice, build_ui


def test_a_page_load_after_refresh_lists_the_checkpoint_the_built_page_did_not_have(data_dir, model_files,
                                                                                  tiny_loader):
    services = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        demo = build_ui(services)  # built with no checkpoint on disk
        built = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "checkpoint")
        assert built.choices == [] and built.value is None
        install(model_files["single"], data_dir)
        services.registry.refresh()  # what Refresh does, in any tab

        dropdown, first_run, notice = page_load.checkpoint_bar(services, _notice)

        title = services.registry.list()[0].title
        assert dropdown["choices"] == [title] and dropdown["value"] == title
        assert first_run["visible"] is False and notice == ""
        # The page load events are registered, one per list.
        loads = [d for d in demo.fns.values() if any(t[1] == "load" for t in d.targets)]
        assert any(built in d.outputs for d in loads)
    finally:
        services.queue.shutdown()


def test_keep_or_first_keeps_a_listed_or_typed_value_and_falls_back_to_the_first():
    assert page_load.keep_or_first(["a", "b"], "b") == {"__type__": "update", "choices": ["a", "b"]}
    assert page_load.keep_or_first(["a", "b"], "gone")["value"] == "a"
    assert page_load.keep_or_first([], "gone")["value"] is None


def test_a_page_load_lists_styles_saved_and_upscalers_found_since_the_page_was_built(data_dir, model_files,
                                                                                     tiny_loader):
    """A style saved in one tab and an upscaler found by the Extras tab's Refresh show in a second tab's lists."""
    install(model_files["single"], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        demo = build_ui(services)
        loads = [d for d in demo.fns.values() if any(t[1] == "load" for t in d.targets)]

        def on_load(elem_id: str):
            return next(d for d in loads if [getattr(o, "elem_id", None) for o in d.outputs] == [elem_id])

        services.styles.save("ink", "{prompt}, ink drawing", "")
        for prefix in ("txt2img", "img2img"):
            update = on_load(f"{prefix}_styles").fn(["gone"])
            assert update["choices"] == ["ink"] and update["value"] == []

        folder = data_dir / "models" / "ESRGAN"
        folder.mkdir(parents=True)
        save_pth(folder / "tiny-2x.pth", esrgan_old_state())
        services.upscaling.refresh()  # the Extras tab's Refresh
        update = on_load("extras_upscaler_1").fn("None")
        assert "tiny-2x" in update["choices"]
    finally:
        services.queue.shutdown()
