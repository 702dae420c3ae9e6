"""The VAE decode safety nets: fp16 NaNs fall back to fp32, out-of-memory retries tiled, then explains."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.tiny_models import tiny_vae
from webui.errors import OutOfMemory
from webui.pipelines import decode


def snapshot(vae) -> dict:
    """What a fallback must leave as it was: the shared VAE's precision, flags and every weight."""
    return {"dtype": vae.dtype, "use_tiling": vae.use_tiling, "use_slicing": vae.use_slicing,
            "state": {name: tensor.clone() for name, tensor in vae.state_dict().items()}}


def assert_unchanged(vae, before: dict) -> None:
    after = snapshot(vae)
    assert {k: after[k] for k in ("dtype", "use_tiling", "use_slicing")} == \
        {k: before[k] for k in ("dtype", "use_tiling", "use_slicing")}
    assert after["state"].keys() == before["state"].keys()
    for name, tensor in before["state"].items():
        assert after["state"][name].dtype == tensor.dtype, name
        assert torch.equal(after["state"][name], tensor), name


def overflowing_fp16_vae():
    torch.manual_seed(0)
    vae = tiny_vae()
    with torch.no_grad():
        # Large weights overflow fp16 (max 65504) inside the decoder; fp32 copes.
        vae.post_quant_conv.weight.mul_(300)
    return vae


def test_fp16_nan_output_is_decoded_again_in_fp32_without_touching_the_shared_vae():
    vae = overflowing_fp16_vae().to(torch.float16)
    reference = copy.deepcopy(vae).float()  # the same (fp16-rounded) weights in fp32: what the fallback must give
    vae.enable_slicing()  # as the memory profiles leave it
    latents = 100 * torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    raw = vae.decode(latents.half() / vae.config.scaling_factor).sample
    assert torch.isnan(raw).any() or torch.isinf(raw).any(), "setup: fp16 decode should overflow"
    before = snapshot(vae)
    calls = watch_decoder(vae)
    images = decode.decode_latents(vae, latents)
    assert torch.isfinite(images).all() and images.dtype == torch.float32
    assert [call["dtype"] for call in calls] == [torch.float16] * 2  # the shared VAE stayed fp16 throughout
    with torch.no_grad():
        expected = reference.decode(latents / reference.config.scaling_factor).sample
    assert torch.allclose(images, expected, atol=1e-4)
    assert_unchanged(vae, before)


def watch_decoder(vae, memory_for: int | None = None) -> list[dict]:
    """Record how the shared VAE looks each time its decoder runs (while a fallback is under way, another job may
    be using the same VAE). With ``memory_for``, the decoder "runs out of GPU memory" on latents larger than that
    per side: the only way to exercise the out-of-memory path on CPU."""
    calls: list[dict] = []

    def check(module, args):
        side = max(args[0].shape[-2:])
        calls.append({"side": side, "dtype": next(module.parameters()).dtype, "tiling": vae.use_tiling})
        if memory_for is not None and side > memory_for:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    vae.decoder.register_forward_pre_hook(check)
    return calls


def vae_with_memory_for(latent_side: int):
    torch.manual_seed(0)
    vae = tiny_vae()
    vae.tile_latent_min_size, vae.tile_sample_min_size = 8, 16  # small tiles keep the tiled decode fast on CPU
    vae.decoder_calls = watch_decoder(vae, memory_for=latent_side)
    return vae


def test_out_of_memory_retries_tiled_without_touching_the_shared_vae():
    vae = vae_with_memory_for(8)  # tiles of 8 latent pixels, overlapping by a quarter: starting at 0 and 6
    before = snapshot(vae)
    latents = torch.randn(2, 4, 10, 10, generator=torch.Generator().manual_seed(1))
    images = decode.decode_latents(vae, latents)
    assert images.shape == (2, 3, 20, 20) and torch.isfinite(images).all()
    # One whole-batch attempt that ran out of memory, then 2x2 tiles per image, one image at a time.
    assert [call["side"] for call in vae.decoder_calls] == [10] + [8, 8, 8, 4] * 2  # larger side of each tile
    assert not any(call["tiling"] for call in vae.decoder_calls)  # never switched on, not even for the retry
    assert_unchanged(vae, before)
    with torch.no_grad():
        tiled = vae.tiled_decode(latents[1:] / vae.config.scaling_factor).sample
    assert torch.equal(images[1:], tiled)  # the second image is decoded on its own, not blended with the first


def test_out_of_memory_even_tiled_gives_a_clear_message():
    vae = vae_with_memory_for(4)  # smaller than a tile
    before = snapshot(vae)
    with pytest.raises(OutOfMemory, match=r"Out of GPU memory while decoding 2 image\(s\) of 64x64, even tiled"):
        decode.decode_latents(vae, torch.zeros(2, 4, 8, 8))
    assert_unchanged(vae, before)


def test_out_of_memory_with_tiling_already_on_is_not_retried():
    vae = vae_with_memory_for(4)
    vae.enable_tiling()  # the 8gb and 4gb memory profiles tile every decode
    with pytest.raises(OutOfMemory, match="even tiled"):
        decode.decode_latents(vae, torch.zeros(1, 4, 8, 8))
    assert [call["side"] for call in vae.decoder_calls] == [8] and vae.use_tiling is True


def test_out_of_memory_while_sampling_is_explained():
    from webui.pipelines.common import StepCallback, run_and_decode

    class OomPipeline:
        vae = None
        unet = torch.nn.Identity()  # no blocks: the in-step interrupt hooks have nothing to attach to

        def __call__(self, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    listener = type("Listener", (), {"on_step": lambda *a: None, "should_stop": lambda self: False})()
    with pytest.raises(OutOfMemory, match=r"Out of GPU memory while sampling 4 image\(s\).*--memory-profile"):
        run_and_decode(OomPipeline(), {"num_images_per_prompt": 4}, StepCallback(listener, 10, 0, "sd1"))
