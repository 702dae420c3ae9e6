"""A1111's noise: the Philox "GPU"/NV source, CPU source, variation seeds, seed resize, ENSD; infotext and API."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from webui.infotext import format_infotext, parse_infotext
from webui.parameters import InfotextContext, infotext_params, parse_params
from webui.pipelines import noise
from webui.pipelines.noise import NoiseSettings, Philox, initial_noise
from webui.server import create_app
from webui.types import Txt2ImgRequest

SMALL = dict(width=64, height=64, steps=3, save_images=False)
SHAPE = (4, 8, 8)  # one 64x64 image's latent
CPU = torch.device("cpu")

# torch.randn(3, 4) on a CUDA card after torch.manual_seed(0), as A1111's rng_philox.py documents it.
CUDA_SEED_0 = np.array([[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                        [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                        [-1.07454231, -0.36314407, -1.67105067, 2.26550497]])


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


# ----------------------------------------------------------------------------------------- the sources


def test_philox_reproduces_cuda_randn_for_seed_0():
    numbers = Philox(0).randn((3, 4)).numpy()
    # CUDA evaluates log/sin in float32 with its own intrinsics: equal to a few float32 ulps, not bit for bit.
    np.testing.assert_allclose(numbers, CUDA_SEED_0, rtol=0, atol=1e-6)
    assert numbers.dtype == np.float32


def test_philox_stream_is_deterministic_shape_independent_and_advances_per_call():
    g = Philox(1234)
    first, second = g.randn((2, 3, 4)), g.randn((2, 3, 4))
    assert torch.equal(first, Philox(1234).randn((2, 3, 4)))
    assert torch.equal(first.flatten(), Philox(1234).randn((24,)))  # number i depends on i, not on the shape
    assert not torch.equal(first, second)  # the second call is the next offset of the stream, as on CUDA
    assert not torch.equal(first, Philox(1235).randn((2, 3, 4)))
    # Seeds beyond 32 bits (seed + eta noise seed delta) use the key's high word: a different stream.
    assert not torch.equal(Philox(5).randn((8,)), Philox(5 + 2**32).randn((8,)))
    big = Philox(2**32 - 1 + 31337).randn((1000,))
    assert abs(float(big.mean())) < 0.15 and 0.85 < float(big.std()) < 1.15


def test_gpu_source_off_cuda_is_philox_nv_is_philox_cpu_is_torch_cpu():
    gpu, nv, cpu = (noise.randn(42, SHAPE, source, CPU) for source in ("GPU", "NV", "CPU"))
    assert torch.equal(gpu, Philox(42).randn(SHAPE))
    assert torch.equal(nv, gpu)
    assert torch.equal(cpu, torch.randn(SHAPE, generator=torch.Generator().manual_seed(42)))
    assert not torch.equal(cpu, gpu)
    assert torch.equal(noise.randn(42, SHAPE, "CPU", CPU), cpu)  # deterministic


# ------------------------------------------------------------------------------ variation seeds, resize


def test_variation_strength_0_is_the_seed_noise_and_1_the_variation_seed_noise():
    seed_noise = noise.randn(10, SHAPE)
    sub_noise = noise.randn(20, SHAPE)
    plain, _ = initial_noise(SHAPE, [10], [20], NoiseSettings(subseed_strength=0.0), CPU)
    full, _ = initial_noise(SHAPE, [10], [20], NoiseSettings(subseed_strength=1.0), CPU)
    half, _ = initial_noise(SHAPE, [10], [20], NoiseSettings(subseed_strength=0.5), CPU)
    assert torch.equal(plain[0], seed_noise)
    torch.testing.assert_close(full[0], sub_noise, rtol=0, atol=1e-6)
    # A1111's slerp works row-wise (dim 1 of one image's C,H,W noise); halfway keeps unit-variance noise.
    expected = noise.slerp(0.5, seed_noise, sub_noise)
    assert torch.equal(half[0], expected)
    assert not torch.allclose(half[0], seed_noise) and not torch.allclose(half[0], sub_noise)
    assert 0.7 < float(half.std()) < 1.3


def test_seed_resize_pastes_the_smaller_seed_noise_centred():
    same, _ = initial_noise(SHAPE, [3], [0], NoiseSettings(seed_resize_from_w=64, seed_resize_from_h=64), CPU)
    assert torch.equal(same[0], noise.randn(3, SHAPE))  # resizing from the same size changes nothing
    small, _ = initial_noise(SHAPE, [3], [0], NoiseSettings(seed_resize_from_w=32, seed_resize_from_h=32), CPU)
    assert torch.equal(small[0, :, 2:6, 2:6], noise.randn(3, (4, 4, 4)))  # 32x32's noise in the middle
    big, _ = initial_noise(SHAPE, [3], [0], NoiseSettings(seed_resize_from_w=128, seed_resize_from_h=128), CPU)
    assert torch.equal(big[0], noise.randn(3, (4, 16, 16))[:, 4:12, 4:12])  # the middle of 128x128's noise


def test_step_noise_generators_continue_the_cpu_stream_or_restart_at_seed_plus_ensd():
    _, [continued] = initial_noise(SHAPE, [7], [0], NoiseSettings(source="CPU"), CPU)
    reference = torch.Generator().manual_seed(7)
    torch.randn(SHAPE, generator=reference)
    assert torch.equal(torch.randn(3, generator=continued), torch.randn(3, generator=reference))
    _, [delta] = initial_noise(SHAPE, [7], [0], NoiseSettings(source="CPU", eta_noise_seed_delta=31337), CPU)
    assert torch.equal(torch.randn(3, generator=delta), torch.randn(3, generator=torch.Generator().manual_seed(
        7 + 31337)))


# --------------------------------------------------------------------------------- the service, images


def test_txt2img_variation_strength_0_is_the_seed_image_and_1_the_variation_seed_image(services):
    gen = services.generation
    base = Txt2ImgRequest(prompt="a cat", seed=11, sampler_name="Euler", **SMALL)
    seed_image = pixels(gen.txt2img(base).images[0])
    subseed_image = pixels(gen.txt2img(base.model_copy(update={"seed": 22})).images[0])
    zero = gen.txt2img(base.model_copy(update={"subseed": 22, "subseed_strength": 0.0}))
    one = gen.txt2img(base.model_copy(update={"subseed": 22, "subseed_strength": 1.0}))
    mid = gen.txt2img(base.model_copy(update={"subseed": 22, "subseed_strength": 0.4}))
    assert np.array_equal(pixels(zero.images[0]), seed_image)
    assert np.array_equal(pixels(one.images[0]), subseed_image)
    assert not np.array_equal(pixels(mid.images[0]), seed_image)
    assert not np.array_equal(pixels(mid.images[0]), subseed_image)
    params = parse_infotext(mid.infotexts[0]).params
    assert params["Seed"] == "11" and params["Variation seed"] == "22"
    assert params["Variation seed strength"] == "0.4"
    assert "Variation seed" not in parse_infotext(zero.infotexts[0]).params


def test_rng_sources_give_different_images_and_are_recorded_only_off_the_default(services):
    gen = services.generation
    base = Txt2ImgRequest(prompt="a cat", seed=5, sampler_name="Euler", **SMALL)
    images = {source: gen.txt2img(base.model_copy(update={"randn_source": source})) for source in ("GPU", "NV",
                                                                                                  "CPU")}
    # On this CPU-only machine "GPU" is the Philox reproduction of CUDA, the same numbers NV gives.
    assert np.array_equal(pixels(images["GPU"].images[0]), pixels(images["NV"].images[0]))
    assert not np.array_equal(pixels(images["GPU"].images[0]), pixels(images["CPU"].images[0]))
    assert "RNG" not in parse_infotext(images["GPU"].infotexts[0]).params
    assert parse_infotext(images["CPU"].infotexts[0]).params["RNG"] == "CPU"
    assert parse_infotext(images["NV"].infotexts[0]).params["RNG"] == "NV"


def test_ensd_changes_ancestral_images_only_and_is_recorded_for_them(services):
    gen = services.generation
    for sampler, stochastic in (("Euler a", True), ("Euler", False)):
        base = Txt2ImgRequest(prompt="a cat", seed=5, sampler_name=sampler, **SMALL)
        plain = gen.txt2img(base)
        delta = gen.txt2img(base.model_copy(update={"eta_noise_seed_delta": 31337}))
        assert np.array_equal(pixels(plain.images[0]), pixels(delta.images[0])) is not stochastic, sampler
        params = parse_infotext(delta.infotexts[0]).params
        assert (params.get("ENSD") == "31337") is stochastic, sampler


def test_batch_with_variation_keeps_the_seed_and_counts_up_the_variation_seed(services):
    request = Txt2ImgRequest(prompt="a cat", seed=100, subseed=500, subseed_strength=0.3, batch_size=2, n_iter=2,
                             **SMALL)
    result = services.generation.txt2img(request)
    assert result.seeds == [100, 100, 100, 100]  # A1111: with a variation strength only the variation seed moves
    assert result.subseeds == [500, 501, 502, 503]
    assert [parse_infotext(t).params["Variation seed"] for t in result.infotexts] == ["500", "501", "502", "503"]
    plain = services.generation.txt2img(request.model_copy(update={"subseed_strength": 0.0, "n_iter": 1}))
    assert plain.seeds == [100, 101]


# ------------------------------------------------------------------------------------- infotext table


def test_noise_fields_round_trip_through_the_infotext():
    request = Txt2ImgRequest(prompt="p", sampler_name="Euler a", seed=1, subseed=99, subseed_strength=0.25,
                             seed_resize_from_w=320, seed_resize_from_h=256, randn_source="NV",
                             eta_noise_seed_delta=31337)
    params = infotext_params(request, InfotextContext(seed=1, subseed=99))
    text = format_infotext("p", "", params)
    assert "Variation seed: 99, Variation seed strength: 0.25" in text
    assert "Seed resize from: 320x256" in text and "RNG: NV" in text and "ENSD: 31337" in text
    parsed = parse_infotext(text)
    fields = parse_params(parsed.prompt, parsed.negative_prompt, parsed.params)
    assert {k: fields[k] for k in ("subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h",
                                   "randn_source", "eta_noise_seed_delta")} == {
        "subseed": 99, "subseed_strength": 0.25, "seed_resize_from_w": 320, "seed_resize_from_h": 256,
        "randn_source": "NV", "eta_noise_seed_delta": 31337}
    # A1111's defaults leave the keys out, as A1111 does.
    plain = infotext_params(Txt2ImgRequest(prompt="p", sampler_name="Euler a", eta_noise_seed_delta=0),
                            InfotextContext(seed=1, subseed=5))
    assert not {"Variation seed", "Variation seed strength", "Seed resize from", "RNG", "ENSD"} & \
        {k for k, v in plain.items() if v is not None}
    # An unknown RNG name in a pasted infotext is skipped, not applied.
    assert "randn_source" not in parse_params("p", "", {"RNG": "Quantum"})


# ------------------------------------------------------------------------------------------------- API


@pytest.fixture
def client(services):
    with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as test_client:
        yield test_client


def test_api_accepts_variation_fields_and_reports_them(client):
    body = {"prompt": "a cat", "seed": 3, "subseed": 4, "subseed_strength": 0.5, "seed_resize_from_w": -1,
            "seed_resize_from_h": -1, "sampler_name": "Euler", "width": 64, "height": 64, "steps": 3,
            "override_settings": {"randn_source": "CPU"}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert (info["seed"], info["subseed"], info["subseed_strength"], info["all_subseeds"]) == (3, 4, 0.5, [4])
    text = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))).info["parameters"]
    params = parse_infotext(text).params
    assert params["Variation seed"] == "4" and params["RNG"] == "CPU"


def test_options_set_the_default_noise_source_and_ensd(client, services):
    assert client.post("/sdapi/v1/options", json={"randn_source": "CPU", "eta_noise_seed_delta": 31337}).json() == {}
    body = {"prompt": "a cat", "seed": 3, "sampler_name": "Euler a", "width": 64, "height": 64, "steps": 3}
    info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert "RNG: CPU" in info["infotexts"][0] and "ENSD: 31337" in info["infotexts"][0]


@pytest.mark.parametrize("body, field", [
    ({"subseed_strength": 1.5}, "subseed_strength"),
    ({"subseed_strength": -0.1}, "subseed_strength"),
    ({"subseed_strength": "NaN"}, "subseed_strength"),
    ({"subseed": -2}, "subseed"),
    ({"subseed": 2**32}, "subseed"),
    ({"seed_resize_from_w": 100000}, "seed_resize_from_w"),
    ({"override_settings": {"randn_source": "Quantum"}}, "randn_source"),
    ({"override_settings": {"eta_noise_seed_delta": -1}}, "override_settings.eta_noise_seed_delta"),
])
def test_api_refuses_bad_noise_values_with_422_naming_the_field(client, body, field):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 3, **body})
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]
    assert client.get("/sdapi/v1/options").status_code == 200  # the server stays up


def test_api_refuses_a_raw_nan_strength(client):
    raw = '{"prompt": "x", "width": 64, "height": 64, "steps": 3, "subseed_strength": NaN}'
    response = client.post("/sdapi/v1/txt2img", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "subseed_strength" in response.json()["error"]


def test_img2img_applies_variation_seeds_and_refuses_them_where_it_cannot(client):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 60, 30)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 3, "init_images": [image], "seed": 5,
            "sampler_name": "Euler", "denoising_strength": 0.9}
    plain = client.post("/sdapi/v1/img2img", json=body)
    varied = client.post("/sdapi/v1/img2img", json={**body, "subseed": 6, "subseed_strength": 0.5})
    assert plain.status_code == 200 and varied.status_code == 200
    assert plain.json()["images"][0] != varied.json()["images"][0]
    assert "Variation seed strength: 0.5" in json.loads(varied.json()["info"])["infotexts"][0]
    # DDIM runs on diffusers' scheduler, which draws its own noise: refused, not ignored
    response = client.post("/sdapi/v1/img2img", json={**body, "sampler_name": "DDIM", "subseed_strength": 0.3})
    assert response.status_code == 422 and "subseed_strength" in response.json()["error"]


# ------------------------------------------------------------------------------------------------- eta


def test_ddim_eta_is_honoured_and_recorded(services):
    base = Txt2ImgRequest(prompt="a cat", seed=9, sampler_name="DDIM", **SMALL)
    default = services.generation.txt2img(base)
    zero = services.generation.txt2img(base.model_copy(update={"eta": 0.0}))
    stochastic = services.generation.txt2img(base.model_copy(update={"eta": 1.0}))
    assert np.array_equal(pixels(default.images[0]), pixels(zero.images[0]))  # A1111's DDIM default is 0
    assert not np.array_equal(pixels(default.images[0]), pixels(stochastic.images[0]))
    assert parse_infotext(stochastic.infotexts[0]).params["Eta DDIM"] == "1"
    assert "Eta DDIM" not in parse_infotext(zero.infotexts[0]).params


def test_eta_of_ancestral_samplers_is_honoured_in_txt2img_and_img2img(client):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 3, "sampler_name": "Euler a"}
    response = client.post("/sdapi/v1/txt2img", json={**body, "eta": 0.5})
    assert response.status_code == 200 and "Eta: 0.5" in json.loads(response.json()["info"])["infotexts"][0]
    assert client.post("/sdapi/v1/txt2img", json={**body, "eta": 1.0}).status_code == 200  # webuiapi's default
    assert client.post("/sdapi/v1/txt2img", json={**body, "eta": 2}).status_code == 422
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    img2img = {**body, "init_images": [base64.b64encode(buffer.getvalue()).decode()], "eta": 0.5}
    response = client.post("/sdapi/v1/img2img", json=img2img)
    assert response.status_code == 200 and "Eta: 0.5" in json.loads(response.json()["info"])["infotexts"][0]
