"""LoRAs read in every common format, applied per job and the base model restored byte for byte.

LoRA files are written in fixtures with real key names computed from the tiny models' own modules
(tests/lora_files.py); the math is checked against hand computation and against diffusers' own loader.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from tests.conftest import install, make_settings
from tests.lora_files import ATTENTION, kohya_lora, linear_modules, locon_lora, lokr_lora, loha_lora
from tests.tiny_models import tiny_sd1_components, tiny_sdxl_components
from webui.errors import InvalidRequest
from webui.infotext import parse_infotext, read_png_infotext
from webui.models.loras import lora_hash
from webui.pipelines import conditioning
from webui.pipelines.lora_apply import JobLora, LoraFiles, applied_loras
from webui.services.container import build_services
from webui.types import Txt2ImgRequest

SMALL = dict(width=64, height=64, steps=3, seed=11, sampler_name="Euler", save_images=False)


def _sd1_pipe(seed: int = 0) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(**tiny_sd1_components(seed), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    return _sd1_pipe()


@pytest.fixture(scope="module")
def lora_files(pipe, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("loras")
    return {
        "kohya": kohya_lora(pipe, root / "kohya_style.safetensors"),
        "second": kohya_lora(pipe, root / "second.safetensors", seed=5, text=False),
        "ldm": kohya_lora(pipe, root / "ldm_named.safetensors", ldm_names=True, seed=6),
        "loha": loha_lora(pipe, root / "loha.safetensors"),
        "lokr": lokr_lora(pipe, root / "lokr.safetensors"),
        "locon": locon_lora(pipe, root / "locon.safetensors"),
    }


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v.detach().clone() for part in ("unet", "text_encoder", "text_encoder_2", "vae")
            if getattr(pipe, part, None) is not None for k, v in getattr(pipe, part).state_dict().items()}


def assert_unchanged(pipe, before: dict[str, torch.Tensor]) -> None:
    after = snapshot(pipe)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"{len(changed)} tensors differ after the job, e.g. {changed[:3]}"


def weight(pipe, param: str) -> torch.Tensor:
    component, _, rest = param.partition(".")
    return getattr(pipe, component).get_parameter(rest).detach().clone()


def kohya_delta(tensors: dict, key: str, multiplier: float) -> torch.Tensor:
    down, up, alpha = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"], tensors[f"{key}.alpha"]
    return multiplier * (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]) \
        * (alpha / down.shape[0])


# --- the math, format by format ---------------------------------------------------------------------------------

def test_kohya_lora_adds_up_at_down_times_alpha_over_rank_and_restores(pipe, lora_files):
    before = snapshot(pipe)
    tensors = load_file(lora_files["kohya"])
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    te_q = "text_encoder.encoder.layers.0.self_attn.q_proj.weight"
    expected_q = before[q] + kohya_delta(tensors, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                                         0.5)
    expected_te = before[te_q] + kohya_delta(tensors, "lora_te_text_model_encoder_layers_0_self_attn_q_proj", 0.25)
    warnings: list[str] = []
    lora = JobLora("kohya_style", lora_files["kohya"], te_weight=0.25, unet_weight=0.5)
    with applied_loras(pipe, "sd1", [lora], LoraFiles(), warnings) as done:
        assert done == [lora] and warnings == []
        torch.testing.assert_close(weight(pipe, q), expected_q, rtol=0, atol=1e-6)
        torch.testing.assert_close(weight(pipe, te_q), expected_te, rtol=0, atol=1e-6)
        touched = [k for k, v in snapshot(pipe).items() if not torch.equal(v, before[k])]
        assert len(touched) == len(linear_modules(pipe.unet, ATTENTION)) + 8  # 2 CLIP layers x q, k, v, out
    assert_unchanged(pipe, before)


def test_ldm_spelled_kohya_names_reach_the_same_layers(pipe, lora_files):
    before = snapshot(pipe)
    warnings: list[str] = []
    with applied_loras(pipe, "sd1", [JobLora("ldm", lora_files["ldm"], 1, 1)], LoraFiles(), warnings):
        touched = {k for k, v in snapshot(pipe).items() if not torch.equal(v, before[k])}
    assert warnings == []
    assert {k.removeprefix("unet.").removesuffix(".weight") for k in touched if k.startswith("unet.")} == \
        set(linear_modules(pipe.unet, ATTENTION))
    assert_unchanged(pipe, before)


def test_two_loras_mix_as_the_weighted_sum_of_their_deltas(pipe, lora_files):
    before = snapshot(pipe)
    first, second = load_file(lora_files["kohya"]), load_file(lora_files["second"])
    key = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    param = "unet.up_blocks.1.attentions_0.transformer_blocks.0.attn2.to_k.weight".replace("attentions_0",
                                                                                              "attentions.0")
    expected = before[param] + kohya_delta(first, key, 0.7) + kohya_delta(second, key, -0.4)
    loras = [JobLora("a", lora_files["kohya"], 0.7, 0.7), JobLora("b", lora_files["second"], -0.4, -0.4)]
    with applied_loras(pipe, "sd1", loras, LoraFiles(), []):
        torch.testing.assert_close(weight(pipe, param), expected, rtol=0, atol=1e-6)
    assert_unchanged(pipe, before)


def test_loha_lokr_and_locon_conv_deltas(pipe, lora_files):
    before = snapshot(pipe)
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    loha = load_file(lora_files["loha"])
    hada = (loha[f"{key}.hada_w1_a"] @ loha[f"{key}.hada_w1_b"]) * (loha[f"{key}.hada_w2_a"] @ loha[f"{key}.hada_w2_b"])
    lokr = load_file(lora_files["lokr"])
    kron = torch.kron(lokr[f"{key}.lokr_w1"], lokr[f"{key}.lokr_w2_a"] @ lokr[f"{key}.lokr_w2_b"])
    conv = "unet.down_blocks.0.resnets.0.conv1.weight"
    locon = load_file(lora_files["locon"])
    conv_delta = kohya_delta(locon, "lora_unet_down_blocks_0_resnets_0_conv1", 1.0)
    assert conv_delta.shape == before[conv].shape and conv_delta.shape[2:] == (3, 3)
    for name, param, delta in (("loha", q, hada * 0.5 * (2 / 2)), ("lokr", q, kron * 0.5),
                               ("locon", conv, conv_delta * 0.5)):
        warnings: list[str] = []
        with applied_loras(pipe, "sd1", [JobLora(name, lora_files[name], 0.5, 0.5)], LoraFiles(), warnings):
            assert warnings == [], name
            torch.testing.assert_close(weight(pipe, param), before[param] + delta, rtol=0, atol=1e-6)
        assert_unchanged(pipe, before)


def test_diffusers_peft_format_file(pipe, tmp_path):
    from peft import LoraConfig, get_peft_model_state_dict

    unet = _sd1_pipe().unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False))
    state = {f"unet.{k}": v.detach().clone() for k, v in get_peft_model_state_dict(unet).items()}
    path = tmp_path / "peft_style.safetensors"
    save_file(state, str(path))
    a = state["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora_A.weight"]
    b = state["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight"]
    param = "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_v.weight"
    before = snapshot(pipe)
    warnings: list[str] = []
    with applied_loras(pipe, "sd1", [JobLora("peft_style", path, 1, 0.8)], LoraFiles(), warnings):
        assert warnings == []
        torch.testing.assert_close(weight(pipe, param), before[param] + 0.8 * (b @ a), rtol=0, atol=1e-6)
    assert_unchanged(pipe, before)


def test_our_reading_matches_diffusers_own_loader(lora_files):
    """The same kohya file through diffusers' load_lora_weights + fuse_lora gives the same weights as ours."""
    ours, theirs = _sd1_pipe(), _sd1_pipe()
    with applied_loras(ours, "sd1", [JobLora("k", lora_files["kohya"], 0.7, 0.7)], LoraFiles(), []):
        merged = snapshot(ours)
    theirs.load_lora_weights(str(lora_files["kohya"]), adapter_name="k")
    theirs.set_adapters(["k"], [0.7])
    theirs.fuse_lora(adapter_names=["k"])
    compared = 0
    for part in ("unet", "text_encoder"):
        fused = getattr(theirs, part).state_dict()
        for key, value in merged.items():
            if not key.startswith(part + ".") or key.startswith("text_encoder_2"):
                continue
            name = key[len(part) + 1:]
            candidates = (name, name.replace(".weight", ".base_layer.weight"), name.replace(".bias", ".base_layer.bias"))
            theirs_value = fused[next(c for c in candidates if c in fused)]
            torch.testing.assert_close(theirs_value, value, rtol=0, atol=1e-6)
            compared += 1
    assert compared > 100


# --- exactness, failure, architecture -----------------------------------------------------------------------------

def test_weights_are_restored_when_the_job_fails(pipe, lora_files):
    before = snapshot(pipe)
    with pytest.raises(RuntimeError, match="boom"):
        with applied_loras(pipe, "sd1", [JobLora("k", lora_files["kohya"], 1, 1)], LoraFiles(), []):
            q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
            assert not torch.equal(weight(pipe, q), before[q])
            raise RuntimeError("boom")
    assert_unchanged(pipe, before)


def test_fp16_weights_get_the_fp32_delta_and_come_back_exact(lora_files):
    half = _sd1_pipe().to(dtype=torch.float16)
    before = snapshot(half)
    param = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    tensors = load_file(lora_files["kohya"])
    delta = kohya_delta(tensors, "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 1.0)
    with applied_loras(half, "sd1", [JobLora("k", lora_files["kohya"], 1, 1)], LoraFiles(), []):
        now = weight(half, param)
        assert now.dtype == torch.float16
        assert torch.equal(now, (before[param].float() + delta).half())
    assert_unchanged(half, before)


def test_sdxl_lora_on_the_tiny_sdxl_model_and_refused_on_sd1(tmp_path, pipe):
    xl = StableDiffusionXLPipeline(**tiny_sdxl_components(), tokenizer=None, tokenizer_2=None, scheduler=None)
    path = kohya_lora(xl, tmp_path / "xl_style.safetensors", ldm_names=True, te_prefixes=("lora_te1_", "lora_te2_"))
    before = snapshot(xl)
    warnings: list[str] = []
    with applied_loras(xl, "sdxl", [JobLora("xl_style", path, 1, 1)], LoraFiles(), warnings):
        touched = {k.split(".")[0] for k, v in snapshot(xl).items() if not torch.equal(v, before[k])}
    assert warnings == [] and touched == {"unet", "text_encoder", "text_encoder_2"}
    assert_unchanged(xl, before)

    sd1_before = snapshot(pipe)
    with applied_loras(pipe, "sd1", [JobLora("xl_style", path, 1, 1)], LoraFiles(), warnings) as done:
        assert done == []
        assert_unchanged(pipe, sd1_before)
    assert warnings == ["LoRA 'xl_style' is for SDXL; the loaded model is SD1.x"]


def test_keys_that_match_nothing_are_counted(tmp_path, pipe, lora_files):
    tensors = load_file(lora_files["second"])
    tensors["lora_unet_no_such_layer.lora_down.weight"] = torch.zeros(4, 8)
    tensors["lora_unet_no_such_layer.lora_up.weight"] = torch.zeros(8, 4)
    path = tmp_path / "partly.safetensors"
    save_file(tensors, str(path))
    warnings: list[str] = []
    with applied_loras(pipe, "sd1", [JobLora("partly", path, 1, 1)], LoraFiles(), warnings) as done:
        assert [lora.name for lora in done] == ["partly"]
    total = len(linear_modules(pipe.unet, ATTENTION)) + 1
    assert warnings == [f"LoRA 'partly': 1 of its {total} modules matched nothing in the loaded SD1.x model"]


def test_pickle_lora_is_refused_without_the_opt_in(tmp_path, pipe, lora_files):
    path = tmp_path / "old.pt"
    torch.save(load_file(lora_files["second"]), path)
    before = snapshot(pipe)
    warnings: list[str] = []
    with applied_loras(pipe, "sd1", [JobLora("old", path, 1, 1)], LoraFiles(allow_pickle=False), warnings) as done:
        assert done == []
    assert_unchanged(pipe, before)
    assert "LoRA 'old' is a pickle file" in warnings[0] and "--allow-pickle" in warnings[0]
    with applied_loras(pipe, "sd1", [JobLora("old", path, 1, 1)], LoraFiles(allow_pickle=True), []) as done:
        assert [lora.name for lora in done] == ["old"]


def test_parsed_files_are_cached_until_the_file_changes(tmp_path, pipe, lora_files):
    path = tmp_path / "cached.safetensors"
    shutil.copy(lora_files["second"], path)
    files = LoraFiles()
    for _ in range(3):
        with applied_loras(pipe, "sd1", [JobLora("cached", path, 1, 1)], files, []):
            pass
    assert files.reads == 1
    shutil.copy(lora_files["kohya"], path)
    with applied_loras(pipe, "sd1", [JobLora("cached", path, 1, 1)], files, []):
        pass
    assert files.reads == 2


def test_tags_never_reach_the_text_encoder(pipe):
    device = torch.device("cpu")
    plain = conditioning.encode_scheduled_pair(pipe, "a red fox", "blurry", 1, device, steps=4)
    tagged = conditioning.encode_scheduled_pair(pipe, "a red <lora:x:0.8>fox <hypernet:h:1>", "blurry<lora:y:1>", 1,
                                                device, steps=4)
    assert torch.equal(plain.conds[0].embeds, tagged.conds[0].embeds)
    assert torch.equal(plain.unconds[0].embeds, tagged.unconds[0].embeds)


# --- through the generation service and the API ------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_services(tmp_path_factory, model_files, tiny_loader, lora_files):
    """One set of services over the tiny checkpoint with the test LoRAs in models/Lora."""
    data_dir = tmp_path_factory.mktemp("lora-data") / "data"
    install(model_files["single"], data_dir)
    lora_dir = data_dir / "models" / "Lora"
    (lora_dir / "sub").mkdir(parents=True)
    shutil.copy(lora_files["kohya"], lora_dir / "kohya_style.safetensors")
    shutil.copy(lora_files["loha"], lora_dir / "sub" / "loha.safetensors")
    (lora_dir / "broken.safetensors").write_bytes(b"not a lora")
    services = build_services(make_settings(data_dir), load=tiny_loader)
    yield services
    services.queue.shutdown()


def _loaded_pipe(services):
    with services.manager.lease() as model:
        return model.pipe


def test_job_with_lora_changes_the_image_weight_zero_does_not_and_base_is_restored(lora_services):
    gen = lora_services.generation
    base = gen.txt2img(Txt2ImgRequest(prompt="a red fox", **SMALL))
    pipe = _loaded_pipe(lora_services)
    before = snapshot(pipe)
    zero = gen.txt2img(Txt2ImgRequest(prompt="a red fox <lora:kohya_style:0>", **SMALL))
    assert np.array_equal(np.asarray(zero.images[0]), np.asarray(base.images[0]))
    applied = gen.txt2img(Txt2ImgRequest(prompt="a red fox <lora:kohya_style:0.9> <lora:loha:0.5:1>", **SMALL))
    assert not np.array_equal(np.asarray(applied.images[0]), np.asarray(base.images[0]))
    assert applied.warnings == []
    assert_unchanged(pipe, before)
    again = gen.txt2img(Txt2ImgRequest(prompt="a red fox", **SMALL))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(base.images[0]))

    parsed = parse_infotext(applied.infotexts[0])
    assert parsed.prompt == "a red fox <lora:kohya_style:0.9> <lora:loha:0.5:1>"  # the tags stay in the infotext
    lora_dir = lora_services.settings.lora_dir
    expected = f"kohya_style: {lora_hash(lora_dir / 'kohya_style.safetensors')}, " \
               f"loha: {lora_hash(lora_dir / 'sub' / 'loha.safetensors')}"
    assert parsed.params["Lora hashes"] == expected
    assert f'Lora hashes: "{expected}"' in applied.infotexts[0]
    assert read_png_infotext(Image.open(__import__("io").BytesIO(applied.pngs[0]))) == applied.infotexts[0]


def test_missing_lora_warns_and_the_job_runs_without_it(lora_services):
    gen = lora_services.generation
    base = gen.txt2img(Txt2ImgRequest(prompt="a red fox", **SMALL))
    result = gen.txt2img(Txt2ImgRequest(prompt="a red fox <lora:not_here:1>", **SMALL))
    assert "LoRA not found: not_here" in result.warnings
    assert "Lora hashes" not in parse_infotext(result.infotexts[0]).params
    # The tag is not encoded either: the image is the plain prompt's.
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(base.images[0]))


def test_a_job_without_lora_reads_no_lora_file(lora_services):
    result = lora_services.generation.txt2img(Txt2ImgRequest(prompt="a red fox", **SMALL))
    assert result.warnings == []  # broken.safetensors sits in models/Lora and is never read


def test_an_unreadable_lora_is_a_warning_naming_it(lora_services):
    result = lora_services.generation.txt2img(Txt2ImgRequest(prompt="a red fox <lora:broken:1>", **SMALL))
    assert any("LoRA 'broken'" in w for w in result.warnings) and result.images


def test_a_bad_tag_is_refused_before_queueing(lora_services):
    with pytest.raises(InvalidRequest, match="dyn"):
        lora_services.generation.submit_txt2img(Txt2ImgRequest(prompt="<lora:kohya_style:1:dyn=8>", **SMALL))


def test_rest_txt2img_with_a_lora(lora_services):
    from fastapi.testclient import TestClient

    from webui.server import create_app

    body = {"prompt": "a red fox <lora:kohya_style:0.8>", "width": 64, "height": 64, "steps": 3, "seed": 11,
            "sampler_name": "Euler", "save_images": False}
    with TestClient(create_app(lora_services), base_url="http://127.0.0.1:7860") as client:
        ok = client.post("/sdapi/v1/txt2img", json=body)
        assert ok.status_code == 200, ok.text
        info = ok.json()["info"]
        assert "Lora hashes: \\\"kohya_style: " in info
        short = lora_hash(lora_services.settings.lora_dir / "kohya_style.safetensors")
        assert json.loads(info)["extra_generation_params"]["Lora hashes"] == f"kohya_style: {short}"
        missing = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a fox <lora:nope:1>"})
        assert missing.status_code == 200 and "LoRA not found: nope" in missing.json()["info"]
        bad = client.post("/sdapi/v1/txt2img", json={**body, "prompt": "a fox <lora:kohya_style:much>"})
        assert bad.status_code == 422 and bad.json()["error"].startswith("prompt:")


def test_pasting_resolves_a_renamed_lora_by_hash(lora_services):
    from webui.services.job_loras import rename_pasted_loras

    short = lora_hash(lora_services.settings.lora_dir / "kohya_style.safetensors")
    renamed = rename_pasted_loras("a fox <lora:style_v1:0.8>", f"style_v1: {short}", lora_services.loras)
    assert renamed == "a fox <lora:kohya_style:0.8>"


def test_png_info_send_renames_the_lora_by_hash(lora_services):
    from tests.test_pnginfo_send import _handlers, _shown
    from webui.ui.app import build_ui

    short = lora_hash(lora_services.settings.lora_dir / "kohya_style.safetensors")
    send, _ = _handlers(build_ui(lora_services))["txt2img"]
    text = (f"a fox <lora:style_v1:0.8> <lora:other:1>\nSteps: 5, Sampler: Euler, CFG scale: 7, Seed: 1, "
            f'Size: 64x64, Lora hashes: "style_v1: {short}, other: 000000000000"')
    *updates, _selected, _notice, _title, _status = send.fn(text)
    assert _shown(send, updates)["Prompt"]["value"] == "a fox <lora:kohya_style:0.8> <lora:other:1>"


def test_module_deltas_contract_keys_and_shapes(pipe, lora_files):
    """What the checkpoint merger bakes: deltas keyed by component-prefixed parameter name, fp32, the weight's shape."""
    from webui.models.lora_weights import LoraTargets, module_deltas, read_lora

    targets = LoraTargets(pipe, "sd1")
    deltas = module_deltas(read_lora(lora_files["kohya"], allow_pickle=False), te_weight=0.5, unet_weight=1.0,
                           family="sd1", targets=targets)
    assert {k.split(".")[0] for k in deltas} == {"unet", "text_encoder"}
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight" in deltas
    assert "text_encoder.encoder.layers.0.self_attn.q_proj.weight" in deltas
    for key, delta in deltas.items():
        assert delta.dtype == torch.float32 and delta.shape == weight(pipe, key).shape, key


def test_hires_and_img2img_jobs_apply_the_lora_too(lora_services):
    gen = lora_services.generation
    hires = dict(SMALL, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, denoising_strength=0.5)
    base = gen.txt2img(Txt2ImgRequest(prompt="a red fox", **hires))
    zero = gen.txt2img(Txt2ImgRequest(prompt="a red fox <lora:kohya_style:0>", **hires))
    applied = gen.txt2img(Txt2ImgRequest(prompt="a red fox <lora:kohya_style:1>", **hires))
    assert base.images[0].size == (96, 96)
    assert np.array_equal(np.asarray(zero.images[0]), np.asarray(base.images[0]))
    assert not np.array_equal(np.asarray(applied.images[0]), np.asarray(base.images[0]))

    from webui.types import Img2ImgRequest

    init = dict(SMALL, init_images=[base.images[0].resize((64, 64))], denoising_strength=0.6)
    plain = gen.img2img(Img2ImgRequest(prompt="a red fox", **init))
    with_lora = gen.img2img(Img2ImgRequest(prompt="a red fox <lora:kohya_style:1>", **init))
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(with_lora.images[0]))
    assert "Lora hashes" in parse_infotext(with_lora.infotexts[0]).params


def test_cp_decomposed_locon_acts_like_its_three_convolutions(pipe, tmp_path):
    """A LoCon with ``lora_mid`` (LyCORIS CP): the delta we add is the one conv equal to down (1x1), mid (3x3),
    up (1x1) applied in turn, which is what the trainer ran."""
    import torch.nn.functional as F

    name = "down_blocks.1.resnets.0.conv1"
    conv = pipe.unet.get_submodule(name)
    out_c, in_c = conv.weight.shape[:2]
    gen = torch.Generator().manual_seed(9)
    down, mid, up = (torch.randn(3, in_c, 1, 1, generator=gen) * 0.1, torch.randn(3, 3, 3, 3, generator=gen) * 0.1,
                     torch.randn(out_c, 3, 1, 1, generator=gen) * 0.1)
    key = "lora_unet_" + name.replace(".", "_")
    path = tmp_path / "cp.safetensors"
    save_file({f"{key}.lora_down.weight": down, f"{key}.lora_mid.weight": mid, f"{key}.lora_up.weight": up,
               f"{key}.alpha": torch.tensor(3.0)}, str(path))
    x = torch.randn(1, in_c, 8, 8, generator=gen)
    chained = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    before = weight(pipe, f"unet.{name}.weight")
    with applied_loras(pipe, "sd1", [JobLora("cp", path, 1, 1)], LoraFiles(), []):
        delta = weight(pipe, f"unet.{name}.weight") - before
    torch.testing.assert_close(F.conv2d(x, delta, padding=1), chained, rtol=1e-4, atol=1e-5)


def test_a_dora_file_is_refused_by_name(tmp_path, pipe, lora_files):
    tensors = load_file(lora_files["second"])
    key = next(k for k in tensors if k.endswith(".lora_down.weight")).removesuffix(".lora_down.weight")
    tensors[f"{key}.dora_scale"] = torch.ones(1, 32)
    path = tmp_path / "dora.safetensors"
    save_file(tensors, str(path))
    before = snapshot(pipe)
    warnings: list[str] = []
    with applied_loras(pipe, "sd1", [JobLora("dora", path, 1, 1)], LoraFiles(), warnings) as done:
        assert done == []
        assert_unchanged(pipe, before)
    assert warnings == ["LoRA 'dora' is a DoRA, which this server does not apply yet"]


def test_weights_held_by_an_offload_hook_are_reported_not_silently_skipped(lora_files):
    offloaded = _sd1_pipe()
    offloaded.unet.to("meta")  # what sequential CPU offload leaves in the modules
    warnings: list[str] = []
    with applied_loras(offloaded, "sd1", [JobLora("k", lora_files["kohya"], 1, 1)], LoraFiles(), warnings) as done:
        assert done == []
    assert warnings == ["LoRAs are not applied: this model runs with sequential CPU offload (the low-memory "
                        "profile), which LoRAs do not support yet"]


def test_a_lora_of_other_widths_applies_nothing_and_says_so(tmp_path, pipe, lora_files):
    tensors = {k: (torch.zeros(4, 7) if k.endswith("lora_down.weight") else v)
               for k, v in load_file(lora_files["second"]).items()}
    path = tmp_path / "wide.safetensors"
    save_file(tensors, str(path))
    before = snapshot(pipe)
    warnings: list[str] = []
    with applied_loras(pipe, "sd1", [JobLora("wide", path, 1, 1)], LoraFiles(), warnings) as done:
        assert done == []
        assert_unchanged(pipe, before)
    total = len(linear_modules(pipe.unet, ATTENTION))
    assert warnings == [f"LoRA 'wide' does not fit the loaded SD1.x model: none of its {total} modules matched"]
