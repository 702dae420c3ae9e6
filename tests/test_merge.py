"""Checkpoint merger: A1111's maths and rules on tiny single files, the file it writes, its refusals, the job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.tiny_models import write_tiny_diffusers_folder, write_tiny_sdxl_single_file, write_tiny_single_file
from webui.atomic import remove_stale_temp_files
from webui.errors import Cancelled, InvalidRequest
from webui.models import loader, merge
from webui.models.loras import LoraRegistry
from webui.models.registry import HashCache, ModelRegistry
from webui.models.vae import VaeFiles
from webui.services.jobs import JobQueue
from webui.services.merge_request import MergeRequest, parse_loras
from webui.services.merging import MergeService

UNET = "model.diffusion_model."
CONV_IN = f"{UNET}input_blocks.0.0.weight"
POSITION_IDS = "cond_stage_model.transformer.text_model.embeddings.position_ids"
Q_UNET = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge-inputs")
    return {
        "a": write_tiny_single_file(root / "a.safetensors", seed=0, dtype=torch.float32),
        "b": write_tiny_single_file(root / "b.safetensors", seed=1, dtype=torch.float32),
        "c": write_tiny_single_file(root / "c.safetensors", seed=2, dtype=torch.float32),
        "a16": write_tiny_single_file(root / "a16.safetensors", seed=0),
        "b16": write_tiny_single_file(root / "b16.safetensors", seed=1),
        "inpaint": write_tiny_single_file(root / "inpaint.safetensors", seed=3, in_channels=9, dtype=torch.float32),
        "xl": write_tiny_sdxl_single_file(root / "xl.safetensors", seed=0, dtype=torch.float32),
        "xl2": write_tiny_sdxl_single_file(root / "xl2.safetensors", seed=1, dtype=torch.float32),
    }


class Setup:
    def __init__(self, root: Path, files: dict[str, Path], names: list[str], **kwargs):
        self.dir = root / "models" / "Stable-diffusion"
        self.dir.mkdir(parents=True)
        (root / "models" / "VAE").mkdir(parents=True)
        (root / "models" / "Lora").mkdir(parents=True)
        for name in names:
            shutil.copy2(files[name], self.dir / files[name].name)
        hashes = HashCache(root / "cache.json")
        self.registry = ModelRegistry(self.dir, hashes)
        self.registry.refresh()
        self.queue = JobQueue()
        self.vaes = VaeFiles(root / "models" / "VAE", hashes.sha256)
        self.service = MergeService(self.registry, self.queue, vaes=self.vaes,
                                    loras=LoraRegistry(root / "models" / "Lora"), **kwargs)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.dir / name))


@pytest.fixture
def setup(tmp_path, files):
    made: list[Setup] = []

    def make(*names: str, **kwargs) -> Setup:
        made.append(Setup(tmp_path / f"data{len(made)}", files, list(names), **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.queue.shutdown()


def _merged_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in tensors.items() if "model" in k and k != POSITION_IDS and v.is_floating_point()]


def test_weighted_sum_is_a1111s_per_tensor(setup, files):
    s = setup("a", "b")
    result = s.service.merge(MergeRequest("a.safetensors", "b.safetensors", multiplier=0.3), timeout=60)
    out, a, b = s.tensors(result.path.name), load_file(str(files["a"])), load_file(str(files["b"]))
    assert result.path.name == "0.7(a) + 0.3(b).safetensors"  # A1111's generated name
    assert result.title.startswith("0.7(a) + 0.3(b).safetensors [")
    assert set(out) == set(a)
    keys = _merged_keys(a)
    assert len(keys) > 300
    for key in keys:
        assert out[key].dtype == torch.float32
        assert torch.equal(out[key], 0.7 * a[key] + 0.3 * b[key]), key
    assert not torch.equal(out[CONV_IN], a[CONV_IN])
    # A's own: non-"model" keys and the skipped position ids
    assert torch.equal(out["alphas_cumprod"], a["alphas_cumprod"])
    assert out[POSITION_IDS].dtype == torch.int64 and torch.equal(out[POSITION_IDS], a[POSITION_IDS])


def test_add_difference_is_a_plus_m_times_b_minus_c(setup, files):
    s = setup("a", "b", "c")
    result = s.service.merge(MergeRequest("a", "b", "c", method="Add difference", multiplier=0.6), timeout=60)
    out = s.tensors(result.path.name)
    a, b, c = (load_file(str(files[n])) for n in "abc")
    assert result.path.name == "a + 0.6(b - c).safetensors"
    for key in _merged_keys(a):
        assert torch.equal(out[key], a[key] + 0.6 * (b[key] - c[key])), key


def test_fp16_inputs_stay_fp16_and_save_as_half_halves_fp32(setup, files):
    s = setup("a16", "b16", "a", "b")
    half = s.service.merge(MergeRequest("a16", "b16", multiplier=0.5, output_name="half"), timeout=60)
    out, a, b = s.tensors(half.path.name), load_file(str(files["a16"])), load_file(str(files["b16"]))
    for key in _merged_keys(a):
        assert out[key].dtype == torch.float16
        assert torch.equal(out[key], (0.5 * a[key].float() + 0.5 * b[key].float()).half()), key

    saved = s.service.merge(MergeRequest("a", "b", multiplier=0.25, save_as_half=True, output_name="as-half"),
                            timeout=60)
    out, a, b = s.tensors(saved.path.name), load_file(str(files["a"])), load_file(str(files["b"]))
    for key in _merged_keys(a):
        assert out[key].dtype == torch.float16
        exact = 0.75 * a[key] + 0.25 * b[key]
        torch.testing.assert_close(out[key].float(), exact, rtol=1e-3, atol=1e-4)
    assert out[POSITION_IDS].dtype == torch.int64  # only fp32 tensors are halved (A1111's to_half)
    assert saved.path.stat().st_size < 0.6 * files["a"].stat().st_size


def test_result_loads_with_our_loader_and_diffusers_from_single_file(setup, files, tmp_path):
    from diffusers import StableDiffusionPipeline

    s = setup("a", "b")
    result = s.service.merge(MergeRequest("a", "b", multiplier=0.5, output_name="both"), timeout=60)
    info = s.registry.find(result.title)
    ours = loader.load(info, torch.float32)
    config = write_tiny_diffusers_folder(tmp_path / "config", seed=0)
    theirs = StableDiffusionPipeline.from_single_file(str(result.path), config=str(config), local_files_only=True,
                                                      safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        mine = getattr(ours.pipe, name).state_dict()
        for key, value in getattr(theirs, name).state_dict().items():
            if key.endswith("position_ids"):
                continue
            assert torch.equal(mine[key.removeprefix("text_model.")], value), (name, key)
    a = loader.load(s.registry.find("a"), torch.float32)
    b = loader.load(s.registry.find("b"), torch.float32)
    want = 0.5 * a.pipe.unet.state_dict()[Q_UNET] + 0.5 * b.pipe.unet.state_dict()[Q_UNET]
    assert torch.equal(ours.pipe.unet.state_dict()[Q_UNET], want)


def test_metadata_is_a1111s_recipe_and_models(setup, files):
    s = setup("a", "b")
    result = s.service.merge(MergeRequest("a", "b", multiplier=0.4, output_name="meta"), timeout=60)
    with safe_open(str(result.path), framework="pt") as f:
        meta = f.metadata()
    a, b = s.registry.find("a"), s.registry.find("b")
    assert meta["format"] == "pt"
    recipe = json.loads(meta["sd_merge_recipe"])
    assert recipe["type"] == "webui" and recipe["interp_method"] == "Weighted sum" and recipe["multiplier"] == 0.4
    assert recipe["primary_model_hash"] == a.sha256 and recipe["secondary_model_hash"] == b.sha256
    assert recipe["tertiary_model_hash"] is None and recipe["is_inpainting"] is False
    models = json.loads(meta["sd_merge_models"])
    assert set(models) == {a.sha256, b.sha256}
    assert models[a.sha256]["name"] == "a.safetensors"
    assert models[a.sha256]["legacy_hash"] == merge.legacy_hash(a.path) and len(models[a.sha256]["legacy_hash"]) == 8

    # merging the merge carries its ancestry along, as A1111 does
    again = s.service.merge(MergeRequest("meta", "b", multiplier=0.5, output_name="meta2"), timeout=60)
    with safe_open(str(again.path), framework="pt") as f:
        models2 = json.loads(f.metadata()["sd_merge_models"])
    meta_hash = s.registry.find("meta").sha256
    assert {a.sha256, b.sha256, meta_hash} <= set(models2)
    assert models2[meta_hash]["sd_merge_recipe"]["multiplier"] == 0.4


def test_config_beside_an_input_is_copied_beside_the_result(setup):
    s = setup("a", "b")
    (s.dir / "b.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    result = s.service.merge(MergeRequest("a", "b", output_name="with-config"), timeout=60)
    assert (s.dir / "with-config.yaml").read_text() == (s.dir / "b.yaml").read_text()
    assert result.path.with_suffix(".yaml").is_file()


def test_inpainting_a_with_normal_b_merges_the_first_four_input_channels(setup, files):
    s = setup("inpaint", "b")
    result = s.service.merge(MergeRequest("inpaint", "b", multiplier=0.5), timeout=60)
    assert result.path.name == "0.5(inpaint) + 0.5(b).inpainting.safetensors"
    out, a, b = s.tensors(result.path.name), load_file(str(files["inpaint"])), load_file(str(files["b"]))
    assert out[CONV_IN].shape[1] == 9
    assert torch.equal(out[CONV_IN][:, :4], 0.5 * a[CONV_IN][:, :4] + 0.5 * b[CONV_IN])
    assert torch.equal(out[CONV_IN][:, 4:], a[CONV_IN][:, 4:])
    assert json.loads(safe_open(str(result.path), "pt").metadata()["sd_merge_recipe"])["is_inpainting"] is True


def test_instruct_pix2pix_a_keeps_its_extra_channels_and_a_foreign_shape_is_refused(setup, files):
    s = setup("b")
    write_tiny_single_file(s.dir / "ip2p.safetensors", seed=4, in_channels=8, dtype=torch.float32)
    odd = load_file(str(files["a"]))
    odd[f"{UNET}time_embed.0.bias"] = torch.zeros(odd[f"{UNET}time_embed.0.bias"].shape[0] + 1)
    save_file(odd, str(s.dir / "odd.safetensors"))
    s.registry.refresh()
    result = s.service.merge(MergeRequest("ip2p", "b", multiplier=0.5), timeout=60)
    assert result.path.name == "0.5(ip2p) + 0.5(b).instruct-pix2pix.safetensors"
    out, a = s.tensors(result.path.name), s.tensors("ip2p.safetensors")
    assert out[CONV_IN].shape[1] == 8 and torch.equal(out[CONV_IN][:, 4:], a[CONV_IN][:, 4:])
    with pytest.raises(InvalidRequest) as caught:
        s.service.submit(MergeRequest("b", "odd", output_name="never"))
    assert caught.value.field == "secondary_model"
    assert str(caught.value).startswith(f"secondary_model: {UNET}time_embed.0.bias is [")
    assert "in b.safetensors but" in str(caught.value) and "in odd.safetensors" in str(caught.value)


@pytest.mark.parametrize("request_kwargs, field, words", [
    (dict(primary="a", secondary="xl"), "secondary_model", ["a.safetensors is SD 1.x", "xl.safetensors is SDXL"]),
    (dict(primary="a", secondary="nope"), "secondary_model", ["'nope' not found"]),
    (dict(primary="a", secondary="a"), "secondary_model", ["also the primary"]),
    (dict(primary="b", secondary="inpaint"), "secondary_model", ["inpainting model must be the primary"]),
    (dict(primary="a", secondary="b", output_name="a"), "output_name", ["one of the models being merged"]),
    (dict(primary="a", secondary="b", output_name="out.ckpt"), "output_name", [".safetensors only"]),
    (dict(primary="a", secondary="b", output_name="../escape"), "output_name", ["without /"]),
    (dict(primary="a", secondary="b", bake_vae="missing.safetensors"), "bake_vae", ["no VAE named"]),
    (dict(primary="a", secondary="b", discard_weights="("), "discard_weights", ["regular expression"]),
    (dict(primary="a", secondary="b", discard_weights="diffusion_model"), "discard_weights", ["every UNet"]),
    (dict(primary="a", secondary="b", loras=(("nothing", 1.0),)), "loras", ["no LoRA named 'nothing'"]),
])
def test_refusals_name_the_field_and_the_problem(setup, request_kwargs, field, words):
    s = setup("a", "b", "xl", "inpaint")
    with pytest.raises(InvalidRequest) as caught:
        s.service.submit(MergeRequest(**request_kwargs))
    assert caught.value.field == field
    for word in words:
        assert word in str(caught.value)
    assert sorted(p.name for p in s.dir.iterdir()) == ["a.safetensors", "b.safetensors", "inpaint.safetensors",
                                                         "xl.safetensors"]  # nothing written


@pytest.mark.parametrize("kwargs, field", [
    (dict(multiplier=1.5), "multiplier"), (dict(multiplier=float("nan")), "multiplier"),
    (dict(method="Sum"), "interp_method"), (dict(method="Add difference"), "tertiary_model"),
    (dict(secondary=""), "secondary_model"), (dict(loras=(("x", float("inf")),)), "loras"),
])
def test_request_refuses_bad_values(kwargs, field):
    with pytest.raises(InvalidRequest) as caught:
        MergeRequest(**{"primary": "a", "secondary": "b", **kwargs})
    assert caught.value.field == field


def test_existing_output_is_refused_unless_overwrite(setup):
    s = setup("a", "b")
    s.service.merge(MergeRequest("a", "b", output_name="same"), timeout=60)
    first = (s.dir / "same.safetensors").read_bytes()
    with pytest.raises(InvalidRequest, match="output_name: same.safetensors already exists"):
        s.service.submit(MergeRequest("a", "b", multiplier=0.9, output_name="same"))
    assert (s.dir / "same.safetensors").read_bytes() == first
    s.service.merge(MergeRequest("a", "b", multiplier=0.9, output_name="same", overwrite=True), timeout=60)
    assert (s.dir / "same.safetensors").read_bytes() != first


def test_two_queued_merges_to_one_name_never_overwrite_each_other(setup):
    import threading

    from webui.services.jobs import JobKind

    s = setup("a", "b")
    release = threading.Event()
    s.queue.register(JobKind("hold", lambda ctx, request: release.wait(30)))
    s.queue.submit("hold")
    first = s.service.submit(MergeRequest("a", "b", multiplier=0.1, output_name="twice"))
    second = s.service.submit(MergeRequest("a", "b", multiplier=0.9, output_name="twice"))
    release.set()
    saved = first.wait(60)
    with pytest.raises(InvalidRequest, match="output_name: twice.safetensors was saved by another job"):
        second.wait(60)
    assert s.registry.find("twice").title == saved.title


def test_pickle_input_needs_allow_pickle(setup, files, tmp_path):
    s = setup("a")
    torch.save(load_file(str(files["b"])), s.dir / "b.ckpt")
    s.registry.refresh()
    with pytest.raises(InvalidRequest, match="secondary_model: b.ckpt is a pickle"):
        s.service.submit(MergeRequest("a", "b.ckpt"))
    trusting = MergeService(s.registry, s.queue, allow_pickle=True)
    result = trusting.merge(MergeRequest("a", "b.ckpt", multiplier=0.5, output_name="from-pickle"), timeout=60)
    out, a, b = s.tensors(result.path.name), load_file(str(files["a"])), load_file(str(files["b"]))
    assert torch.equal(out[CONV_IN], 0.5 * a[CONV_IN] + 0.5 * b[CONV_IN])


def test_no_interpolation_bakes_a_vae_and_discards_weights(setup, files):
    s = setup("a", "b")
    vae = {k.removeprefix("first_stage_model."): v + 1 for k, v in load_file(str(files["b"])).items()
           if k.startswith("first_stage_model.")}
    save_file(vae, str(s.vaes._dir / "bright.vae.safetensors"))
    request = MergeRequest("a", method="No interpolation", bake_vae="bright.vae.safetensors",
                           discard_weights=r"^cond_stage_model\.", save_as_half=True, output_name="baked-vae")
    result = s.service.merge(request, timeout=60)
    out, a = s.tensors(result.path.name), load_file(str(files["a"]))
    assert not any(k.startswith("cond_stage_model.") for k in out)
    key = "first_stage_model.decoder.conv_in.weight"
    assert out[key].dtype == torch.float16 and torch.equal(out[key], vae["decoder.conv_in.weight"].half())
    assert torch.equal(out[CONV_IN], a[CONV_IN].half())


def test_no_interpolation_default_name_is_a_and_needs_a_new_name(setup):
    s = setup("a")
    with pytest.raises(InvalidRequest, match="output_name: a.safetensors is one of the models"):
        s.service.submit(MergeRequest("a", method="No interpolation"))


def _sd1_deltas() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return {
        f"unet.{Q_UNET}": torch.randn(32, 32, generator=generator),
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight": torch.randn(32, 32, generator=generator),
    }


def test_baked_lora_deltas_land_on_the_right_weights(setup, files):
    deltas = _sd1_deltas()
    calls = []

    def lora_deltas(path, te_weight, unet_weight, spec):
        calls.append((path.name, te_weight, unet_weight, spec.family))
        return {k: v * unet_weight for k, v in deltas.items()}

    s = setup("a", lora_deltas=lora_deltas)
    (s.dir.parent / "Lora" / "style.safetensors").write_bytes(b"x" * 16)  # read by the lora_deltas above
    result = s.service.merge(MergeRequest("a", method="No interpolation", output_name="baked",
                                          loras=parse_loras("style:0.5")), timeout=60)
    assert calls == [("style.safetensors", 0.5, 0.5, "sd1")]
    base = loader.load(s.registry.find("a"), torch.float32)
    baked = loader.load(s.registry.find(result.title), torch.float32)
    unet_base, unet_baked = base.pipe.unet.state_dict(), baked.pipe.unet.state_dict()
    torch.testing.assert_close(unet_baked[Q_UNET], unet_base[Q_UNET] + 0.5 * deltas[f"unet.{Q_UNET}"])
    te_key = "encoder.layers.0.self_attn.q_proj.weight"
    te_delta = deltas["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight"]
    torch.testing.assert_close(baked.pipe.text_encoder.state_dict()[te_key],
                               base.pipe.text_encoder.state_dict()[te_key] + 0.5 * te_delta)
    untouched = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"
    assert torch.equal(unet_baked[untouched], unet_base[untouched])


def test_sdxl_lora_deltas_reach_both_text_encoders(setup, files):
    generator = torch.Generator().manual_seed(3)
    deltas = {
        "text_encoder.text_model.encoder.layers.1.self_attn.v_proj.weight": torch.randn(32, 32, generator=generator),
        "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.weight":
            torch.randn(64, 64, generator=generator),
        "text_encoder_2.text_model.encoder.layers.1.mlp.fc1.weight": torch.randn(128, 64, generator=generator),
    }
    s = setup("xl", lora_deltas=lambda path, te, unet, spec: deltas)
    (s.dir.parent / "Lora" / "xl-lora.safetensors").write_bytes(b"x" * 16)
    result = s.service.merge(MergeRequest("xl", method="No interpolation", output_name="xl-baked",
                                          loras=(("xl-lora", 1.0),)), timeout=60)
    base = loader.load(s.registry.find("xl"), torch.float32).pipe
    baked = loader.load(s.registry.find(result.title), torch.float32).pipe
    for component, key in (("text_encoder", "encoder.layers.1.self_attn.v_proj.weight"),
                           ("text_encoder_2", "text_model.encoder.layers.0.self_attn.k_proj.weight"),
                           ("text_encoder_2", "text_model.encoder.layers.1.mlp.fc1.weight")):
        want = getattr(base, component).state_dict()[key] + deltas[f"{component}.text_model.{key.removeprefix('text_model.')}"]
        torch.testing.assert_close(getattr(baked, component).state_dict()[key], want)
    q = "text_model.encoder.layers.0.self_attn.q_proj.weight"  # beside the k slice: untouched
    assert torch.equal(baked.text_encoder_2.state_dict()[q], base.text_encoder_2.state_dict()[q])


def test_an_unreadable_lora_is_refused_naming_it(setup):
    def broken(path, te, unet, spec):
        raise ValueError("not a LoRA state dict")

    s = setup("a", lora_deltas=broken)
    (s.dir.parent / "Lora" / "junk.safetensors").write_bytes(b"x" * 16)
    with pytest.raises(InvalidRequest, match="loras: junk.safetensors could not be read as a LoRA"):
        s.service.submit(MergeRequest("a", method="No interpolation", output_name="x", loras=(("junk", 1),)))


def test_sdxl_and_bf16_checkpoints_merge_by_the_same_rules(setup, files, tmp_path):
    s = setup("xl", "xl2")
    result = s.service.merge(MergeRequest("xl", "xl2", multiplier=0.5), timeout=60)
    out, a, b = s.tensors(result.path.name), load_file(str(files["xl"])), load_file(str(files["xl2"]))
    keys = _merged_keys(a)
    assert any(k.startswith("conditioner.embedders.1.model.") for k in keys)
    for key in keys:
        assert torch.equal(out[key], 0.5 * a[key] + 0.5 * b[key]), key
    assert loader.load(s.registry.find(result.title), torch.float32).family == "sdxl"

    bf = setup()
    for seed, name in ((0, "p"), (1, "q")):
        write_tiny_single_file(bf.dir / f"{name}.safetensors", seed=seed, dtype=torch.bfloat16)
    bf.registry.refresh()
    merged = bf.service.merge(MergeRequest("p", "q", multiplier=0.5, save_as_half=True), timeout=60)
    out, p, q = bf.tensors(merged.path.name), bf.tensors("p.safetensors"), bf.tensors("q.safetensors")
    assert out[CONV_IN].dtype == torch.bfloat16  # "Save as float16" halves fp32 only (A1111's to_half)
    assert torch.equal(out[CONV_IN], (0.5 * p[CONV_IN].float() + 0.5 * q[CONV_IN].float()).bfloat16())


def test_lora_for_another_architecture_is_refused(setup):
    s = setup("a", lora_deltas=lambda path, te, unet, spec: {"text_encoder_2.text_model.encoder.layers.0."
                                                                 "self_attn.q_proj.weight": torch.zeros(64, 64)})
    (s.dir.parent / "Lora" / "xl-only.safetensors").write_bytes(b"x" * 16)
    with pytest.raises(InvalidRequest, match="loras: a LoRA changes text_encoder_2"):
        s.service.submit(MergeRequest("a", method="No interpolation", output_name="x", loras=(("xl-only", 1),)))


def test_parse_loras():
    assert parse_loras("style:0.8, other: -0.5 ,plain") == (("style", 0.8), ("other", -0.5), ("plain", 1.0))
    assert parse_loras("") == ()
    with pytest.raises(InvalidRequest, match="loras: 'a:b': write name:weight"):
        parse_loras("a:b")


def test_cancel_mid_write_leaves_nothing(setup):
    s = setup("a", "b")
    prepared = s.service.prepare(MergeRequest("a", "b", output_name="cancelled"))

    def on_key(done, total):
        if done == 5:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        merge.write_merged(prepared.plan, prepared.output, prepared.metadata, on_key=on_key)
    assert sorted(p.name for p in s.dir.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_cancel_while_the_job_runs_stops_between_keys_and_leaves_nothing(setup):
    from webui.services.jobs import Job, JobContext, JobKind

    class InterruptAtKey5(JobContext):  # a person pressing Cancel while key 5 is written
        def on_step(self, step, steps, preview=None, **metrics):
            super().on_step(step, steps, preview, **metrics)
            if step == 5:
                self._job.interrupt()

    s = setup("a", "b")
    prepared = s.service.prepare(MergeRequest("a", "b", output_name="stopped"))
    job = Job(JobKind("merge", lambda ctx, request: None), prepared, 0, None, 0)
    with pytest.raises(Cancelled, match="stopped.safetensors was not written"):
        s.service._run(InterruptAtKey5(job), prepared)
    assert job.progress.step == 5
    assert sorted(p.name for p in s.dir.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_jobs_waiting_for_the_device_run_between_the_merges_tensors(setup):
    """A generation asked for during a merge does not wait for the whole merge: it runs at the merge's next safe
    point, between two tensors, before anything is saved."""
    import threading

    from webui.models.device import DeviceOwner
    from webui.services.jobs import INTERACTIVE, Job, JobContext, JobKind, Worker

    s = setup("a", "b")
    prepared = s.service.prepare(MergeRequest("a", "b", output_name="shared"))
    merge_job = Job(JobKind("merge", lambda ctx, request: None, priority=0), prepared, 0, None, 0)
    seen = []
    release = threading.Event()
    s.queue.register(JobKind("hold", lambda ctx, request: release.wait(30)))
    s.queue.register(JobKind("generate", lambda ctx, request: seen.append(
        (merge_job.progress.step, prepared.output.exists())), priority=INTERACTIVE))
    s.queue.submit("hold")  # the queue's own worker is busy, so the generation waits
    generation = s.queue.submit("generate")
    try:
        ctx = JobContext(merge_job, worker=Worker(DeviceOwner("cpu"), None, []), queue=s.queue)
        result = s.service._run(ctx, prepared)
    finally:
        release.set()
    generation.wait(30)
    assert seen == [(0, False)]  # ran inside the merge, before its first tensor, with nothing saved yet
    assert result.path.is_file()


def test_cancelling_the_queued_job_leaves_nothing(setup):
    import threading

    s = setup("a", "b")
    release = threading.Event()
    from webui.services.jobs import JobKind

    s.queue.register(JobKind("hold", lambda ctx, request: release.wait(30)))
    holder = s.queue.submit("hold")
    job = s.service.submit(MergeRequest("a", "b", output_name="never"))
    s.queue.interrupt(job.id)
    release.set()
    holder.wait(30)
    with pytest.raises(Cancelled):
        job.wait(30)
    assert not (s.dir / "never.safetensors").exists()
    assert not [p for p in s.dir.iterdir() if p.name.endswith(".tmp")]


def test_job_reports_progress_and_runs_at_long_priority(setup):
    s = setup("a", "b")
    job = s.service.submit(MergeRequest("a", "b", output_name="progress"))
    result = job.wait(60)
    assert job.kind == "merge" and job.priority == 0
    assert job.progress.steps == result.keys and job.progress.step == result.keys
    assert result.title in s.service.checkpoint_titles()


_KILLER = """
import os, signal, sys
from pathlib import Path
from webui.models import merge
a = merge.TensorSource(Path(sys.argv[1]), "primary_model")
b = merge.TensorSource(Path(sys.argv[2]), "secondary_model")
plan = merge.plan_merge(a, b, None, method="Weighted sum", multiplier=0.5, fp16=False)
def on_key(done, total):
    if done == 100:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: what a power cut leaves
merge.write_merged(plan, Path(sys.argv[3]), {}, on_key=on_key)
"""


def test_a_killed_write_leaves_no_file_and_its_temp_is_swept(setup):
    s = setup("a", "b")
    target = s.dir / "killed.safetensors"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _KILLER, str(s.dir / "a.safetensors"), str(s.dir / "b.safetensors"),
                           str(target)], cwd=root, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert not target.exists()
    temps = [p for p in s.dir.iterdir() if p.name.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].name.startswith(".killed.safetensors.")
    s.registry.refresh()
    assert "killed" not in " ".join(s.service.checkpoint_titles())  # hidden temp files are never listed
    old = time.time() - 7200
    os.utime(temps[0], (old, old))
    s.service.merge(MergeRequest("a", "b", output_name="next"), timeout=60)  # a merge sweeps stale temps
    assert not temps[0].exists()
    assert remove_stale_temp_files(s.dir, older_than=0) == 0


def test_not_enough_ram_is_refused_before_queueing(setup):
    s = setup("a", "b", available_ram=lambda: 1024)
    with pytest.raises(InvalidRequest, match="RAM"):
        s.service.submit(MergeRequest("a", "b", output_name="big"))
    assert s.queue.jobs() == []
