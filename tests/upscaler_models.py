"""Tiny random-weight upscaler files in the original layouts users download, for tests.

- ESRGAN (the original repo's "old" RRDBNet layout: ``model.0``, ``model.1.sub.N.RDBk.convM.0``, ...),
- Real-ESRGAN (BasicSR's RRDBNet: ``conv_first``, ``body.N.rdbK.convM``, ``conv_body``, ``conv_up1/2``,
  ``conv_hr``, ``conv_last``, wrapped in ``params_ema`` as the released ``.pth`` files are),
- SwinIR (the official repo's keys, wrapped in ``params``).

The ESRGAN layouts are written key by key from the original architectures' shapes (not taken from spandrel), so
a test that spandrel detects them checks the real thing. nf=8 and one block keep each model a few hundred KB and
fast on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

GC = 32  # RRDB growth channels: fixed at 32 in both ESRGAN and Real-ESRGAN


def _conv(out_ch: int, in_ch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # He-scaled weights and a mid-grey bias: the output has visible structure, not a flat 0 after clamping.
    std = (2 / (in_ch * 9)) ** 0.5
    bias = torch.full((out_ch,), 0.5) if out_ch == 3 else torch.randn(out_ch, generator=gen) * 0.01
    return torch.randn(out_ch, in_ch, 3, 3, generator=gen) * std, bias


def _rdb_inputs(nf: int) -> list[tuple[int, int]]:
    """(out, in) channels of a ResidualDenseBlock's five convolutions."""
    return [(GC, nf), (GC, nf + GC), (GC, nf + 2 * GC), (GC, nf + 3 * GC), (nf, nf + 4 * GC)]


def esrgan_old_state(nf: int = 8, blocks: int = 1, scale: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """The original ESRGAN repo's ``RRDB_ESRGAN_x4.pth`` layout (``model.N``), at ``scale`` 2 or 4."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def put(key: str, out_ch: int, in_ch: int) -> None:
        state[f"{key}.weight"], state[f"{key}.bias"] = _conv(out_ch, in_ch, gen)

    put("model.0", nf, 3)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for index, (out_ch, in_ch) in enumerate(_rdb_inputs(nf), start=1):
                put(f"model.1.sub.{block}.RDB{rdb}.conv{index}.0", out_ch, in_ch)
    put(f"model.1.sub.{blocks}", nf, nf)  # the trunk conv closes the shortcut block
    ups = {2: 1, 4: 2}[scale]
    for up in range(1, ups + 1):
        put(f"model.{3 * up}", nf, nf)  # Upsample (no weights), conv, LeakyReLU
    put(f"model.{3 * ups + 2}", nf, nf)  # HR conv
    put(f"model.{3 * ups + 4}", 3, nf)   # last conv
    return state


def realesrgan_state(nf: int = 8, blocks: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    """BasicSR's RRDBNet x4 (``RealESRGAN_x4plus.pth``) keys, without the ``params_ema`` wrapper."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def put(key: str, out_ch: int, in_ch: int) -> None:
        state[f"{key}.weight"], state[f"{key}.bias"] = _conv(out_ch, in_ch, gen)

    put("conv_first", nf, 3)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for index, (out_ch, in_ch) in enumerate(_rdb_inputs(nf), start=1):
                put(f"body.{block}.rdb{rdb}.conv{index}", out_ch, in_ch)
    for key in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        put(key, nf, nf)
    put("conv_last", 3, nf)
    return state


def swinir_state(seed: int = 2) -> dict[str, torch.Tensor]:
    """A 2x SwinIR (one residual group of two blocks, window 8, pixelshuffledirect) with the official keys."""
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(seed)
    model = SwinIR(img_size=32, patch_size=1, in_chans=3, embed_dim=16, depths=[2], num_heads=[2], window_size=8,
                   mlp_ratio=2.0, upscale=2, img_range=1.0, upsampler="pixelshuffledirect",
                   resi_connection="1conv")
    return {key: value.clone() for key, value in model.state_dict().items()}


def save_pth(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def save_safetensors(path: Path, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def write_upscalers(models_dir: Path) -> dict[str, Path]:
    """The three layouts where A1111 users put them; returns name -> path."""
    return {
        "ESRGAN_2x_tiny": save_pth(models_dir / "ESRGAN" / "ESRGAN_2x_tiny.pth", esrgan_old_state()),
        "RealESRGAN_x4_tiny": save_pth(models_dir / "RealESRGAN" / "RealESRGAN_x4_tiny.pth",
                                       {"params_ema": realesrgan_state()}),
        "SwinIR_2x_tiny": save_pth(models_dir / "SwinIR" / "sub" / "SwinIR_2x_tiny.pth",
                                   {"params": swinir_state()}),
    }
