"""External VAE files: models/VAE, the sd_vae option and per-request choice, infotext, the API and the UI selector."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from tests.conftest import install, make_settings
from tests.tiny_models import tiny_sd1_components, write_tiny_single_file
from webui.errors import InvalidRequest, ModelLoadError
from webui.infotext import parse_infotext, to_generation_fields
from webui.models.ldm_convert import VAE_PREFIX, pipeline_components_to_ldm, vae_to_ldm
from webui.models.vae import VaeFiles, load_vae
from webui.server import create_app
from webui.services.container import Services, build_services
from webui.types import Txt2ImgRequest
from webui.ui.app import build_ui

SMALL = dict(prompt="a red barn", steps=2, width=64, height=64, seed=11, sampler_name="Euler")
VAE_SEED = 7


def write_vae_file(path: Path, prefix: str = "", seed: int = VAE_SEED) -> Path:
    """A tiny VAE in the LDM layout A1111's VAE files use (``encoder.*``, ``decoder.*``, ``quant_conv.*``)."""
    vae = tiny_sd1_components(seed)["vae"]
    ldm = vae_to_ldm(vae.state_dict(), dict(vae.config))
    state = {prefix + k.removeprefix(VAE_PREFIX): v.to(torch.float16).contiguous().clone() for k, v in ldm.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_swapped_checkpoint(path: Path) -> Path:
    """The default tiny checkpoint (seed 0) with the VAE file's weights in place of its own: a VAE swapped by hand."""
    components = tiny_sd1_components(0)
    weights = pipeline_components_to_ldm(components["unet"], tiny_sd1_components(VAE_SEED)["vae"],
                                         components["text_encoder"])
    reference = write_tiny_single_file(path.with_name("reference.safetensors"))  # for the non-weight keys
    from safetensors.torch import load_file
    state = {k: v for k, v in load_file(str(reference)).items() if k not in weights}
    reference.unlink()
    state.update({k: v.to(torch.float16).contiguous().clone() for k, v in weights.items()})
    save_file(state, str(path), metadata={"format": "pt"})
    return path


@dataclass
class Stack:
    services: Services
    client: TestClient
    vae_dir: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_files, tiny_loader) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("vae")
    data_dir = root / "data"
    install(model_files["single"], data_dir)  # tiny-sd15.safetensors, the default
    checkpoints = data_dir / "models" / "Stable-diffusion"
    write_swapped_checkpoint(checkpoints / "swapped-sd15.safetensors")
    shutil.copy2(model_files["single"], checkpoints / "auto-sd15.safetensors")
    settings = make_settings(data_dir)
    vae_dir = settings.vae_dir
    write_vae_file(vae_dir / "blue.safetensors")
    write_vae_file(vae_dir / "sub" / "prefixed.safetensors", prefix=VAE_PREFIX)
    write_vae_file(vae_dir / "auto-sd15.vae.safetensors")  # Automatic's pick for auto-sd15
    (vae_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    write_vae_file(vae_dir / "pickled.pt")  # a .pt name: refused without --allow-pickle
    services = build_services(settings, load=tiny_loader)
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            yield Stack(services, client, vae_dir)
    finally:
        services.queue.shutdown()


def run(stack: Stack, **fields):
    return stack.services.generation.txt2img(Txt2ImgRequest(**{**SMALL, **fields}), timeout=120)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


def params(result) -> dict[str, str]:
    return parse_infotext(result.infotexts[0]).params


def test_a_vae_file_decodes_as_a_hand_swapped_vae_and_leaves_the_checkpoint_alone(stack):
    own = run(stack, sd_vae="None", checkpoint="tiny-sd15.safetensors")
    with_file = run(stack, sd_vae="blue.safetensors", checkpoint="tiny-sd15.safetensors")
    swapped = run(stack, sd_vae="None", checkpoint="swapped-sd15.safetensors")
    assert np.abs(pixels(with_file) - pixels(own)).max() > 10  # the VAE file really decoded it
    assert np.array_equal(pixels(with_file), pixels(swapped))
    # The same weights under the checkpoint's key prefix, in a sub-folder, named without extension.
    assert np.array_equal(pixels(run(stack, sd_vae="prefixed", checkpoint="tiny-sd15.safetensors")),
                          pixels(with_file))
    # The shared pipeline kept its own VAE: the next job without a file gives the first image again.
    assert np.array_equal(pixels(run(stack, sd_vae="None", checkpoint="tiny-sd15.safetensors")), pixels(own))


def test_infotext_records_the_vae_file_and_reads_it_back(stack):
    digest = hashlib.sha256((stack.vae_dir / "blue.safetensors").read_bytes()).hexdigest()[:10]
    result = run(stack, sd_vae="blue.safetensors")
    assert params(result)["VAE hash"] == digest and params(result)["VAE"] == "blue.safetensors"
    fields = to_generation_fields(parse_infotext(result.infotexts[0]))
    assert fields["sd_vae"] == "blue.safetensors" and fields["vae_hash"] == digest
    plain = params(run(stack, sd_vae="None"))
    assert "VAE" not in plain and "VAE hash" not in plain


def test_automatic_uses_the_vae_named_like_the_checkpoint(stack):
    assert params(run(stack, checkpoint="auto-sd15.safetensors"))["VAE"] == "auto-sd15.vae.safetensors"
    assert "VAE" not in params(run(stack, checkpoint="tiny-sd15.safetensors"))  # none named like it
    assert "VAE" not in params(run(stack, sd_vae="None", checkpoint="auto-sd15.safetensors"))


def test_a_corrupt_vae_fails_the_job_naming_the_file_and_the_checkpoint_still_works(stack):
    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        run(stack, sd_vae="broken.safetensors")
    assert len(run(stack, sd_vae="None").images) == 1


def test_unknown_and_pickled_vaes_are_refused_before_queueing(stack):
    with pytest.raises(InvalidRequest, match="sd_vae: no VAE named 'nope'.*blue.safetensors"):
        stack.services.generation.submit_txt2img(Txt2ImgRequest(**SMALL, sd_vae="nope"))
    with pytest.raises(InvalidRequest, match="pickled.pt is a pickle.*--allow-pickle"):
        stack.services.generation.submit_txt2img(Txt2ImgRequest(**SMALL, sd_vae="pickled.pt"))


# ------------------------------------------------------------------------------------------------- the API


def api_params(response) -> dict[str, str]:
    """The first image's infotext params; ``info`` names the same VAE as A1111's does."""
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    found = parse_infotext(info["infotexts"][0]).params
    assert (info["sd_vae_name"], info["sd_vae_hash"]) == (found.get("VAE"), found.get("VAE hash"))
    return found


def test_api_lists_vaes_and_honours_the_option_and_per_request_override(stack):
    client = stack.client
    names = [item["model_name"] for item in client.get("/sdapi/v1/sd-vae").json()]
    assert names == ["auto-sd15.vae.safetensors", "blue.safetensors", "broken.safetensors", "pickled.pt",
                     "prefixed.safetensors"]
    body = {**SMALL, "override_settings": {"sd_model_checkpoint": "tiny-sd15.safetensors"}}
    try:
        assert client.post("/sdapi/v1/options", json={"sd_vae": "blue.safetensors"}).status_code == 200
        assert client.get("/sdapi/v1/options").json()["sd_vae"] == "blue.safetensors"
        assert api_params(client.post("/sdapi/v1/txt2img", json=body))["VAE"] == "blue.safetensors"
        override = {**body, "override_settings": {**body["override_settings"], "sd_vae": "None"}}
        assert "VAE" not in api_params(client.post("/sdapi/v1/txt2img", json=override))
    finally:
        client.post("/sdapi/v1/options", json={"sd_vae": "Automatic"})


@pytest.mark.parametrize("path, body", [
    ("/sdapi/v1/options", {"sd_vae": "missing.safetensors"}),
    ("/sdapi/v1/txt2img", {**SMALL, "override_settings": {"sd_vae": "missing.safetensors"}}),
])
def test_api_refuses_an_unknown_vae_naming_the_field(stack, path, body):
    response = stack.client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("sd_vae: no VAE named 'missing.safetensors'")
    assert stack.client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"


# -------------------------------------------------------------------------------------------------- the UI


def test_ui_sd_vae_selector_lists_the_files_and_sets_the_option(stack):
    demo = build_ui(stack.services)
    dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sd_vae")
    assert [c[0] for c in dropdown.choices][:3] == ["Automatic", "None", "auto-sd15.vae.safetensors"]
    select = next(dep for dep in demo.fns.values() if getattr(dep.fn, "__name__", None) == "select_vae")
    try:
        status, _ = select.fn("blue.safetensors")
        assert "blue.safetensors" in status and stack.services.options.value("sd_vae") == "blue.safetensors"
        status, update = select.fn("gone.safetensors")  # deleted since the list was shown
        assert status.startswith("⚠ sd_vae: no VAE named") and update["value"] == "blue.safetensors"
    finally:
        stack.services.options.update({"sd_vae": "Automatic"})


# ------------------------------------------------------------------------------------ loading, file by file


def _config() -> dict:
    return dict(tiny_sd1_components(0)["vae"].config)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_diffusers_layout_and_weights_only_pickles_load_like_the_ldm_file(tmp_path):
    ldm = load_vae(write_vae_file(tmp_path / "ldm.safetensors"), _config(), torch.float32)
    vae = tiny_sd1_components(VAE_SEED)["vae"]
    diffusers_file = tmp_path / "diffusers.safetensors"
    save_file({k: v.to(torch.float16).contiguous() for k, v in vae.state_dict().items()}, str(diffusers_file))
    assert _same_weights(load_vae(diffusers_file, _config(), torch.float32), ldm)
    pickled = tmp_path / "kl-f8.pt"
    from safetensors.torch import load_file
    torch.save({"state_dict": load_file(str(tmp_path / "ldm.safetensors"))}, pickled)
    with pytest.raises(ModelLoadError, match="kl-f8.pt is a pickle"):
        load_vae(pickled, _config(), torch.float32)
    assert _same_weights(load_vae(pickled, _config(), torch.float32, allow_pickle=True), ldm)


def test_a_vae_of_another_shape_is_refused_naming_the_file(tmp_path):
    from diffusers import AutoencoderKL
    other = AutoencoderKL(block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                          up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, layers_per_block=1,
                          norm_num_groups=32)
    path = tmp_path / "sdxl-like.safetensors"
    ldm = vae_to_ldm(other.state_dict(), dict(other.config))
    save_file({k.removeprefix(VAE_PREFIX): v.contiguous() for k, v in ldm.items()}, str(path))
    with pytest.raises(ModelLoadError, match="VAE sdxl-like.safetensors does not fit this checkpoint's VAE"):
        load_vae(path, _config(), torch.float32)
    empty = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(empty))
    with pytest.raises(ModelLoadError, match="lora.safetensors holds no VAE weights"):
        load_vae(empty, _config(), torch.float32)


def test_img2img_encodes_and_decodes_with_the_vae_file(stack):
    from PIL import Image

    from webui.types import Img2ImgRequest

    init = Image.linear_gradient("L").resize((64, 64)).convert("RGB")

    def img2img(**fields):
        request = Img2ImgRequest(init_images=[init], denoising_strength=0.5, **{**SMALL, **fields})
        return stack.services.generation.img2img(request, timeout=120)

    with_file = img2img(sd_vae="blue.safetensors", checkpoint="tiny-sd15.safetensors")
    swapped = img2img(sd_vae="None", checkpoint="swapped-sd15.safetensors")
    assert np.array_equal(pixels(with_file), pixels(swapped))
    assert params(with_file)["VAE"] == "blue.safetensors"


def test_the_vae_folder_is_scanned_once_until_it_changes_or_is_refreshed(tmp_path, caplog):
    """A request naming a VAE reads the cached list: the folder is not walked (nor its bad entries logged) again."""
    vae_dir = tmp_path / "VAE"
    write_vae_file(vae_dir / "blue.safetensors")
    (vae_dir / "link.safetensors").symlink_to("/etc/hostname")  # skipped and logged at each scan
    vaes = VaeFiles(vae_dir, lambda _path: "0" * 64)
    with caplog.at_level("WARNING"):
        for _ in range(5):
            assert vaes.find("blue") == vae_dir / "blue.safetensors"
            assert vaes.problem("link.safetensors") is not None
    assert caplog.text.count("link.safetensors") == 1
    write_vae_file(vae_dir / "sub" / "nested.safetensors")  # the top folder changes: the next request rescans
    assert vaes.find("nested") == vae_dir / "sub" / "nested.safetensors"
    write_vae_file(vae_dir / "sub" / "later.safetensors")  # only the sub-folder changes: Refresh is needed
    assert vaes.find("later") is None
    vaes.refresh()
    assert vaes.find("later") == vae_dir / "sub" / "later.safetensors"


def test_refresh_vae_endpoint_lists_files_added_in_sub_folders(stack):
    write_vae_file(stack.vae_dir / "sub" / "fresh.safetensors")
    try:
        assert stack.client.post("/sdapi/v1/refresh-vae").status_code == 200
        names = [item["model_name"] for item in stack.client.get("/sdapi/v1/sd-vae").json()]
        assert "fresh.safetensors" in names
    finally:
        (stack.vae_dir / "sub" / "fresh.safetensors").unlink()
        stack.client.post("/sdapi/v1/refresh-vae")
