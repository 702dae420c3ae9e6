"""The safety checker in generation: off by default, blurs and marks flagged images, never silently skipped."""

from __future__ import annotations

import pytest

from tests.test_safety_checker import ALWAYS, NEVER, save, tiny_checker
from webui.errors import InvalidRequest
from webui.models.safety_checker import blur_flagged
from webui.types import Txt2ImgRequest

REQUEST = dict(prompt="a lighthouse", width=64, height=64, steps=2, seed=5)


def generate(services):
    return services.generation.txt2img(Txt2ImgRequest(**REQUEST), timeout=120)


def test_without_weights_the_setting_says_what_is_missing(services):
    with pytest.raises(InvalidRequest, match=r"^safety_checker: .*model\.safetensors.*safety_checker"):
        services.options.update({"safety_checker": True})
    assert services.options.get_all()["safety_checker"] is False
    services.options.update({"safety_checker": False})  # turning it off needs nothing


def test_flagged_images_are_blurred_and_marked(services):
    plain = generate(services)
    assert "Safety checker" not in plain.infotexts[0]  # off by default: nothing claimed
    save(tiny_checker(concept=ALWAYS), services.settings.models_dir / "safety_checker")
    services.options.update({"safety_checker": True})
    checked = generate(services)
    assert "Safety checker: flagged and blurred" in checked.infotexts[0]
    assert checked.images[0].tobytes() == blur_flagged(plain.images[0]).tobytes()
    assert "Safety checker: flagged and blurred" in checked.paths[0].with_suffix(".png").read_bytes().decode("latin-1")


def test_passed_images_are_unchanged_and_say_they_were_checked(services):
    plain = generate(services)
    save(tiny_checker(concept=NEVER), services.settings.models_dir / "safety_checker")
    services.options.update({"safety_checker": True})
    checked = generate(services)
    assert "Safety checker: passed" in checked.infotexts[0]
    assert checked.images[0].tobytes() == plain.images[0].tobytes()


def test_weights_removed_after_turning_it_on_is_reported_not_ignored(services):
    folder = save(tiny_checker(concept=NEVER), services.settings.models_dir / "safety_checker")
    services.options.update({"safety_checker": True})
    (folder / "model.safetensors").unlink()
    result = generate(services)
    assert "Safety checker: unavailable" in result.infotexts[0]
    assert any("safety checker is on but could not run" in w and "model.safetensors" in w for w in result.warnings)
