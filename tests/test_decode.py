"""The VAE decode safety nets: fp16 NaNs fall back to fp32, out-of-memory retries tiled, then explains."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import tiny_vae
from webui.errors import OutOfMemory
from webui.pipelines import decode


def test_fp16_nan_output_is_decoded_again_in_fp32():
    vae = tiny_vae().to(torch.float16)
    with torch.no_grad():
        # Large weights overflow fp16 (max 65504) inside the decoder; fp32 copes.
        vae.post_quant_conv.weight.mul_(300)
    latents = 100 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    raw = vae.decode(latents.half() / vae.config.scaling_factor).sample
    assert torch.isnan(raw).any() or torch.isinf(raw).any(), "setup: fp16 decode should overflow"
    images = decode.decode_latents(vae, latents)
    assert torch.isfinite(images).all()
    assert vae.dtype == torch.float16  # restored after the fp32 retry


class _OomVae(torch.nn.Module):
    """Raises CUDA out-of-memory unless tiling is on (or always): the only way to exercise this path on CPU."""

    def __init__(self, fail_tiled: bool):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"scaling_factor": 1.0})()
        self.use_tiling = False
        self.fail_tiled = fail_tiled
        self.tiled_calls = 0

    @property
    def dtype(self):
        return torch.float32

    @property
    def device(self):
        return torch.device("cpu")

    def enable_tiling(self):
        self.use_tiling = True

    def disable_tiling(self):
        self.use_tiling = False

    def decode(self, latents, return_dict=False):
        if self.use_tiling:
            self.tiled_calls += 1
        if not self.use_tiling or self.fail_tiled:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return (torch.zeros(latents.shape[0], 3, latents.shape[2] * 8, latents.shape[3] * 8),)


def test_out_of_memory_retries_tiled():
    vae = _OomVae(fail_tiled=False)
    images = decode.decode_latents(vae, torch.zeros(1, 4, 8, 8))
    assert images.shape == (1, 3, 64, 64) and vae.tiled_calls == 1
    assert vae.use_tiling is False  # tiling was only for the retry


def test_out_of_memory_even_tiled_gives_a_clear_message():
    with pytest.raises(OutOfMemory, match=r"Out of GPU memory while decoding 2 image\(s\) of 64x64, even tiled"):
        decode.decode_latents(_OomVae(fail_tiled=True), torch.zeros(2, 4, 8, 8))


def test_out_of_memory_while_sampling_is_explained():
    from webui.pipelines.common import StepCallback, run_and_decode

    class OomPipeline:
        vae = None

        def __call__(self, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    listener = type("Listener", (), {"on_step": lambda *a: None, "should_stop": lambda self: False})()
    with pytest.raises(OutOfMemory, match=r"Out of GPU memory while sampling 4 image\(s\).*--memory-profile"):
        run_and_decode(OomPipeline(), {"num_images_per_prompt": 4}, StepCallback(listener, 10, 0, "sd1"))
