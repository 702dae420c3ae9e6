"""Composable prompts (``a :1.2 AND b``) as A1111's CFGDenoiser combines them, on the tiny model.

A1111 mixes denoised outputs and we mix the UNet's eps, with CFG 7 on top: the same sum, rounded differently,
so the latents agree to 1e-3 (as tests/test_sigmas.py's CFG comparison).

The reference is k-diffusion's Euler over a denoiser written from A1111's ``combine_denoised``: one UNet call per
sub-prompt and one for the negative prompt, ``denoised = uncond + sum_i weight_i * cfg * (cond_i - uncond)``.
"""

from __future__ import annotations

import pytest
import torch

from job_helpers import QuietListener
from webui.errors import InvalidRequest
from webui.pipelines import conditioning, decode, txt2img
from webui.pipelines.noise import Philox
from webui.pipelines.prompt_switch import PromptSwitch
from webui.types import Txt2ImgRequest

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

STEPS = 3
SEEDS = [77, 78]
SHAPE = (4, 32, 32)
CPU = torch.device("cpu")


def _ours(monkeypatch, model, prompt: str, negative: str = "", cfg: float = 7.0, seeds=SEEDS) -> torch.Tensor:
    request = Txt2ImgRequest(prompt=prompt, negative_prompt=negative, sampler_name="Euler", steps=STEPS, width=64,
                             height=64, cfg_scale=cfg, randn_source="NV", save_images=False)
    captured = {}

    def keep(_vae, latents):
        captured["latents"] = latents.clone()
        return torch.zeros((latents.shape[0], 3, 8, 8))

    monkeypatch.setattr(decode, "decode_latents", keep)
    txt2img.run_batch(model, request, list(seeds), QuietListener(), preview_every=0)
    return captured["latents"]


def _embeds(model, text: str) -> torch.Tensor:
    return conditioning.encode(model.pipe, conditioning.chunk_prompt(model.pipe.tokenizer, text), 1, CPU).embeds


def _reference(k, model, parts_at, negative: str, cfg: float, seeds=SEEDS) -> torch.Tensor:
    """``parts_at(step)`` -> [(text, weight)]: A1111's sub-prompts in force at a 0-based denoiser step."""
    unet = model.pipe.unet
    uncond = _embeds(model, negative)

    class A1111Cfg(k.external.DiscreteEpsDDPMDenoiser):
        step = 0

        def forward(self, x, sigma, **kwargs):
            parts = parts_at(self.step)
            self.step += 1
            denoised_uncond = super().forward(x, sigma, context=uncond.repeat(len(x), 1, 1))
            denoised = denoised_uncond.clone()
            for text, weight in parts:
                cond = super().forward(x, sigma, context=_embeds(model, text).repeat(len(x), 1, 1))
                denoised += (cond - denoised_uncond) * (weight * cfg)
            return denoised

        def get_eps(self, x, t, context):
            return unet(x, t, encoder_hidden_states=context).sample

    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    denoiser = A1111Cfg(None, torch.cumprod(1 - betas, dim=0).float(), quantize=False)
    sigmas = denoiser.get_sigmas(STEPS)
    x = torch.stack([Philox(seed).randn(SHAPE) for seed in seeds]) * sigmas[0]
    with torch.no_grad():
        return k.sampling.sample_euler(denoiser, x, sigmas, disable=True)


def test_and_with_weights_equals_a1111s_combination(k, tiny_model, monkeypatch) -> None:
    prompt = "a red fox AND a blue bird :0.7"
    expected = _reference(k, tiny_model, lambda _s: [("a red fox", 1.0), ("a blue bird", 0.7)], "ugly", 7.0)
    got = _ours(monkeypatch, tiny_model, prompt, "ugly")
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    # The second sub-prompt matters: without it the image differs.
    assert not torch.allclose(got, _ours(monkeypatch, tiny_model, "a red fox", "ugly"), atol=1e-3)


def test_a_single_weighted_prompt_and_cfg_1_follow_a1111(k, tiny_model, monkeypatch) -> None:
    expected = _reference(k, tiny_model, lambda _s: [("a red fox", 1.5)], "", 7.0, seeds=SEEDS[:1])
    got = _ours(monkeypatch, tiny_model, "a red fox :1.5", seeds=SEEDS[:1])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    # CFG 1: diffusers skips the negative pass, A1111 still mixes it in; ours computes it for the mix.
    expected = _reference(k, tiny_model, lambda _s: [("a", 1.0), ("b", 0.5)], "c", 1.0, seeds=SEEDS[:1])
    got = _ours(monkeypatch, tiny_model, "a AND b :0.5", "c", cfg=1.0, seeds=SEEDS[:1])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def test_weight_0_leaves_only_the_negative_prompt(k, tiny_model, monkeypatch) -> None:
    expected = _reference(k, tiny_model, lambda _s: [("a red fox", 0.0)], "ugly", 7.0, seeds=SEEDS[:1])
    got = _ours(monkeypatch, tiny_model, "a red fox :0", "ugly", seeds=SEEDS[:1])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    other = _ours(monkeypatch, tiny_model, "a yellow cat :0", "ugly", seeds=SEEDS[:1])
    torch.testing.assert_close(got, other, rtol=1e-5, atol=1e-5)  # the prompt's text no longer matters


def test_each_sub_prompt_has_its_own_editing_schedule(k, tiny_model, monkeypatch) -> None:
    def parts_at(step):
        return [("a cat" if step <= 1 else "a dog", 1.0), ("a red bird" if step <= 1 else "a blue bird", 0.5)]

    expected = _reference(k, tiny_model, parts_at, "", 7.0, seeds=SEEDS[:1])
    got = _ours(monkeypatch, tiny_model, "a [cat:dog:1] AND a [red|blue] bird :0.5", seeds=SEEDS[:1])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def test_and_in_the_negative_prompt_is_text_as_in_a1111(tiny_model) -> None:
    pair = conditioning.encode_scheduled_pair(tiny_model.pipe, "cat", "dog AND cow", 1, CPU, 4)
    assert not pair.composable and len(pair.unconds) == 1
    torch.testing.assert_close(pair.unconds[0].embeds, _embeds(tiny_model, "dog AND cow"))


def test_sub_prompts_are_padded_to_one_length(tiny_model) -> None:
    long = ", ".join(["a very detailed painting of a cat"] * 12)  # over 75 tokens: two chunks
    pair = conditioning.encode_scheduled_pair(tiny_model.pipe, f"dog AND {long}", "", 1, CPU, 4)
    assert pair.conds[0].embeds.shape == pair.extra[0].conds[0].embeds.shape == pair.unconds[0].embeds.shape
    assert pair.conds[0].embeds.shape[1] == 2 * 77


def test_instruct_pix2pix_refuses_composable_prompts(tiny_model) -> None:
    pair = conditioning.encode_scheduled_pair(tiny_model.pipe, "cat AND dog", "", 1, CPU, 4)
    with pytest.raises(InvalidRequest) as refused:
        PromptSwitch(pair, "sd", 1).refuse_switching("with InstructPix2Pix checkpoints")
    assert refused.value.field == "prompt" and "AND" in refused.value.reason


def test_too_many_sub_prompts_are_refused_before_queueing(services) -> None:
    with pytest.raises(InvalidRequest) as refused:
        services.generation.txt2img(Txt2ImgRequest(prompt=" AND ".join(["cat"] * 200), width=64, height=64,
                                                   steps=2, save_images=False))
    assert refused.value.field == "prompt" and "sub-prompts" in refused.value.reason


def test_sdxl_sub_prompts_bring_their_own_pooled_embeddings(tmp_path_factory, tiny_loader, monkeypatch) -> None:
    """A1111 conditions each SDXL sub-prompt on its own text (cross-attention and pooled vector alike)."""
    from tiny_models import write_tiny_sdxl_single_file
    from webui.models.registry import CheckpointInfo

    path = write_tiny_sdxl_single_file(tmp_path_factory.mktemp("xl") / "tiny-xl.safetensors", dtype=torch.float32)
    model = tiny_loader(CheckpointInfo(path=path, name=path.name, model_name=path.stem, kind="safetensors",
                                       short_hash=None, sha256=None), torch.float32)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(_module, _args, kwargs):
        seen.append((kwargs["encoder_hidden_states"].clone(), kwargs["added_cond_kwargs"]["text_embeds"].clone()))

    handle = model.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        composed = _ours(monkeypatch, model, "cat AND dog :0.5", seeds=SEEDS[:1])
    finally:
        handle.remove()
    cat, dog, uncond = (conditioning.encode(model.pipe, conditioning.chunk_prompt(model.pipe.tokenizer, text), 1,
                                            CPU) for text in ("cat", "dog", ""))
    assert len(seen) == 2 * STEPS  # per step: [uncond, cat], then [dog]
    (guided_embeds, guided_pooled), (extra_embeds, extra_pooled) = seen[0], seen[1]
    torch.testing.assert_close(guided_embeds, torch.cat([uncond.embeds, cat.embeds]))
    torch.testing.assert_close(guided_pooled, torch.cat([uncond.pooled, cat.pooled]))
    torch.testing.assert_close(extra_embeds, dog.embeds)
    torch.testing.assert_close(extra_pooled, dog.pooled)
    assert torch.isfinite(composed).all()
    assert not torch.allclose(composed, _ours(monkeypatch, model, "cat", seeds=SEEDS[:1]), atol=1e-4)
