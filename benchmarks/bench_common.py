"""What the benchmarks share: random-weight SD1.5/SDXL architectures, the LDM single-file writer, vanilla diffusers
pipelines built from the same modules, device helpers (memory cap, peak, OOM), NaN probes and the timing loop.

Speed and memory depend on the architecture, not on the weight values (see ../shared/PERF.md): the full-size
builders make the real SD1.5 and SDXL shapes with diffusers'/transformers' default random init, and check the
parameter counts so a changed default cannot silently shrink the model. The tiny builders copy the shapes of
tests/tiny_models.py (a VAE that downsamples by 2, not 8) for CPU smoke runs; tests/ is not imported.

Not a test module: nothing under ``tests/`` imports this, and nothing here asserts times.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 1024**3
PROMPT = "a photograph of an astronaut riding a horse, highly detailed"
SEED = 1234
SAMPLER = "DPM++ 2M"
CONFIG_DIR = ROOT / "webui" / "models" / "configs"
TOKENIZER_DIR = CONFIG_DIR / "clip_tokenizer"
TOKENIZER_PAD_BANG_DIR = CONFIG_DIR / "clip_tokenizer_pad_bang"  # SDXL's second tokenizer pads with "!"
SCHEDULER_CONFIG = CONFIG_DIR / "scheduler_config.json"

# Millions of parameters of the real architectures (PERF.md); a build that differs by more than 0.2 M is refused.
EXPECTED_PARAMS_M = {
    "sd1": {"unet": 859.5, "vae": 83.7, "text_encoder": 123.1},
    "sdxl": {"unet": 2567.5, "vae": 83.7, "text_encoder": 123.1, "text_encoder_2": 694.7},
}


@dataclass
class SideResult:
    """One side (vanilla or ours, one recipe) of one workload: timings, memory and what came out."""

    name: str
    times_s: list[float] = field(default_factory=list)
    warmup_s: float | None = None
    load_s: float | None = None  # weights -> ready on the device (ours: from the file on disk)
    peak_allocated_gib: float | None = None  # None on CPU
    allocated_before_gib: float | None = None  # still allocated when this side started (should be ~0)
    images: int = 0  # images checked for NaN (timed runs)
    nan_images: int = 0
    unet_calls: int = 0  # UNet forward calls during the timed runs
    nan_unet_calls: int = 0  # of those, how many returned any NaN
    vae_fp32_redecodes: int = 0  # ours only: decode retried in fp32 because the fp16 VAE gave NaN
    previews: int | None = None  # ours only: live previews made during the timed runs
    attention: str = ""
    note: str = ""
    error: str | None = None  # "OOM: ...", "ERROR: ...", or "skipped: ..." / "not available: ..."

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None

    @property
    def min_s(self) -> float | None:
        return min(self.times_s) if self.times_s else None

    def as_json(self) -> dict:
        from dataclasses import asdict

        return dict(asdict(self), median_s=self.median_s, min_s=self.min_s)


# ------------------------------------------------------------------------------------------ architectures


def _build(factory: Callable[[], dict[str, torch.nn.Module]], seed: int, device: torch.device | str) -> dict:
    """Run ``factory`` seeded, with fp16 as the default dtype (half the RAM, and the dtype of the file) and
    ``device`` as the default device (random init of billions of parameters is seconds on a GPU, minutes on a
    CPU)."""
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device(device):
            components = factory()
    finally:
        torch.set_default_dtype(previous)
    return {name: module.eval() for name, module in components.items()}


def _kl_vae(block_out_channels: tuple[int, ...], layers: int, sample_size: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    levels = len(block_out_channels)
    return AutoencoderKL(block_out_channels=block_out_channels, layers_per_block=layers, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, sample_size=sample_size,
                         scaling_factor=scaling_factor)


def _clip(with_projection: bool = False, **config):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **config))


def build_random_sd15(seed: int = 0, device: torch.device | str = "cpu") -> dict[str, torch.nn.Module]:
    """The SD1.5 UNet, VAE and CLIP-L text encoder with their default random init, in fp16."""
    from diffusers import UNet2DConditionModel

    return _build(lambda: {
        "unet": UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                     block_out_channels=(320, 640, 1280, 1280), layers_per_block=2),
        "vae": _kl_vae((128, 256, 512, 512), 2, 512, 0.18215),
        "text_encoder": _clip(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              hidden_act="quick_gelu", projection_dim=768),
    }, seed, device)


def build_random_sdxl(seed: int = 0, device: torch.device | str = "cpu") -> dict[str, torch.nn.Module]:
    """SDXL base: UNet (3 levels, 1/2/10 transformer layers, 64-wide heads, text_time embedding), its VAE
    (SD's architecture, scaling 0.13025, ``force_upcast`` as in the released config), CLIP-L and OpenCLIP-bigG
    with projection, in fp16."""
    from diffusers import UNet2DConditionModel

    return _build(lambda: {
        "unet": UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816),
        "vae": _kl_vae((128, 256, 512, 512), 2, 1024, 0.13025),
        "text_encoder": _clip(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              hidden_act="quick_gelu", projection_dim=768),
        "text_encoder_2": _clip(True, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                num_attention_heads=20, hidden_act="gelu", projection_dim=1280),
    }, seed, device)


def build_tiny_sd15(seed: int = 0, device: torch.device | str = "cpu") -> dict[str, torch.nn.Module]:
    """tests/tiny_models.py's SD1-like shapes (VAE factor 2): a 64 px image in well under a second on a CPU."""
    from diffusers import UNet2DConditionModel

    return _build(lambda: {
        "unet": UNet2DConditionModel(
            sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8),
        "vae": _kl_vae((32, 64), 1, 64, 0.18215),
        "text_encoder": _clip(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=1,
                              hidden_act="quick_gelu", projection_dim=32),
    }, seed, device)


def build_tiny_sdxl(seed: int = 0, device: torch.device | str = "cpu") -> dict[str, torch.nn.Module]:
    """tests/tiny_models.py's SDXL-like shapes: no attention on the first level, 64-wide heads, text_time."""
    from diffusers import UNet2DConditionModel

    return _build(lambda: {
        "unet": UNet2DConditionModel(
            sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
            attention_head_dim=(1, 1), cross_attention_dim=96, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=6 * 256 + 64),
        "vae": _kl_vae((32, 64), 1, 64, 0.13025),
        "text_encoder": _clip(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=1,
                              hidden_act="quick_gelu"),
        "text_encoder_2": _clip(True, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=1, hidden_act="gelu", projection_dim=64),
    }, seed, device)


def build_random(family: str, tiny: bool, seed: int = 0, device: torch.device | str = "cpu") -> dict:
    builders = {("sd1", False): build_random_sd15, ("sdxl", False): build_random_sdxl,
                ("sd1", True): build_tiny_sd15, ("sdxl", True): build_tiny_sdxl}
    components = builders[(family, tiny)](seed, device)
    if not tiny:
        check_param_counts(family, param_counts_m(components))
    return components


def param_counts_m(components: dict[str, torch.nn.Module]) -> dict[str, float]:
    return {name: round(sum(p.numel() for p in m.parameters()) / 1e6, 2) for name, m in components.items()}


def check_param_counts(family: str, counts: dict[str, float]) -> None:
    for name, expected in EXPECTED_PARAMS_M[family].items():
        if abs(counts[name] - expected) > 0.2:
            raise SystemExit(f"{family} {name} has {counts[name]} M params, expected ~{expected} M: "
                             "not the real architecture")


def write_checkpoint(components: dict[str, torch.nn.Module], path: Path) -> Path:
    """One fp16 ``.safetensors`` file in the original LDM layout (SD1.x, or SDXL's ``conditioner.embedders``),
    like a pruned release a user drops into ``models/Stable-diffusion``."""
    from safetensors.torch import save_file

    from webui.models.ldm_convert import (SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX, clip_to_ldm, open_clip_to_ldm,
                                          pipeline_components_to_ldm, unet_to_ldm, vae_to_ldm)

    unet, vae, text_encoder = components["unet"], components["vae"], components["text_encoder"]
    if "text_encoder_2" in components:
        state = {**unet_to_ldm(unet.state_dict(), dict(unet.config)), **vae_to_ldm(vae.state_dict(), dict(vae.config)),
                 **clip_to_ldm(text_encoder.state_dict(), prefix=SDXL_CLIP_PREFIX),
                 **open_clip_to_ldm(components["text_encoder_2"].state_dict(), SDXL_OPEN_CLIP_PREFIX)}
    else:
        state = pipeline_components_to_ldm(unet, vae, text_encoder)
    # safetensors needs contiguous CPU tensors that do not share storage.
    state = {key: tensor.detach().to("cpu", torch.float16 if tensor.is_floating_point() else tensor.dtype)
             .contiguous().clone() for key, tensor in state.items() if not key.endswith("position_ids")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return path


# ------------------------------------------------------------------------------------------ device helpers


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{torch.cuda.get_device_name(device)} ({props.total_memory / GIB:.1f} GiB)"
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def set_memory_cap(device: torch.device, gib: float | None) -> str:
    """Simulate a card of ``gib`` GiB (``torch.cuda.set_per_process_memory_fraction``); None or 0 lifts the cap.
    Allocations past it raise out-of-memory as on a real card. No-op on a CPU."""
    if device.type != "cuda":
        return "none (CPU)"
    total = torch.cuda.get_device_properties(device).total_memory
    if not gib:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        return "none"
    fraction = min(1.0, gib * GIB / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return f"{gib:g} GiB (fraction {fraction:.4f} of {total / GIB:.1f} GiB)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None


def is_oom(exc: BaseException) -> bool:
    from webui.errors import OutOfMemory

    chain = [exc, exc.__cause__, exc.__context__]
    return any(isinstance(e, (torch.cuda.OutOfMemoryError, OutOfMemory)) for e in chain if e is not None)


def failure(exc: BaseException) -> str:
    return f"{'OOM' if is_oom(exc) else 'ERROR'}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


# ------------------------------------------------------------------------------------------ NaN probes


class UNetNanProbe:
    """Counts UNet forward calls and those that returned NaN, without a host sync per step (a forward hook)."""

    def __init__(self, unet: torch.nn.Module):
        self.calls = 0
        self.nan_calls: torch.Tensor | int = 0
        self._handle = unet.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output) -> None:
        sample = output[0] if isinstance(output, tuple) else output.sample
        self.calls += 1
        self.nan_calls = self.nan_calls + torch.isnan(sample).any().int()

    def reset(self) -> None:
        self.calls, self.nan_calls = 0, 0

    def nan_count(self) -> int:
        return int(self.nan_calls)

    def remove(self) -> None:
        self._handle.remove()


class RedecodeCounter(logging.Handler):
    """Counts our decoder's 'VAE produced NaNs; decoding again in fp32' warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "NaN" in record.getMessage():
            self.count += 1


class OursDecodeProbe:
    """Wraps our ``decode.decode_latents`` (the one place our pipelines decode) to see each final image tensor,
    after its fp32 NaN fallback. A measuring probe on our own module, removed in ``finally``; never in the app."""

    def __init__(self):
        from webui.pipelines import decode

        self._module = decode
        self._original = decode.decode_latents
        self.flags: list[torch.Tensor] = []
        decode.decode_latents = self._wrapped

    def _wrapped(self, vae, latents):
        images = self._original(vae, latents)
        self.flags.append(torch.isnan(images).flatten(1).any(dim=1).cpu())
        return images

    def counts(self) -> tuple[int, int]:
        """(images decoded, of which NaN). Hires fix decodes once per image (its first pass stays latent)."""
        return sum(len(f) for f in self.flags), int(sum(int(f.sum()) for f in self.flags))

    def remove(self) -> None:
        self._module.decode_latents = self._original


def nan_flags(images: np.ndarray) -> np.ndarray:
    return np.isnan(images).reshape(len(images), -1).any(axis=1)


# ------------------------------------------------------------------------------------------ timing


def time_side(result: SideResult, run_once: Callable[[int], None], runs: int, device: torch.device,
              after_warmup: Callable[[], None], warmup_steps: int) -> None:
    """1 warm-up of ``warmup_steps`` (0 = the workload's steps), ``after_warmup()`` (resets the probes), then
    ``runs`` timed calls at the workload's steps (``run_once(0)``), synchronised on both ends."""
    sync(device)
    start = time.perf_counter()
    run_once(warmup_steps)
    sync(device)
    result.warmup_s = time.perf_counter() - start
    after_warmup()
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        run_once(0)
        sync(device)
        result.times_s.append(time.perf_counter() - start)


# ------------------------------------------------------------------------------------------ vanilla diffusers


def as_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast only when needed (fp32 on a CPU): the modules are built in fp16, like the file. torch's own ``to``:
    diffusers' override warns about modules to keep in fp32, which these (built, not loaded) have none of."""
    return module if next(module.parameters()).dtype == dtype else torch.nn.Module.to(module, dtype)


def dpm_2m_scheduler(karras: bool = True):
    """DPM++ 2M (Karras sigmas unless told otherwise) over SD's own scheduler config, as diffusers' docs build it."""
    from diffusers import DPMSolverMultistepScheduler

    base_config = json.loads(SCHEDULER_CONFIG.read_text())  # SD1.5's (PNDM); SDXL has the same betas
    return DPMSolverMultistepScheduler.from_config(base_config, algorithm_type="dpmsolver++", solver_order=2,
                                                   use_karras_sigmas=karras)


def vanilla_pipeline(components: dict[str, torch.nn.Module], dtype: torch.dtype, karras: bool = True,
                     img2img: bool = False):
    """``StableDiffusion[XL][Img2Img]Pipeline`` over ``components`` (cast to ``dtype`` if needed), on the CPU
    until the caller places it. diffusers' default attention processor on torch 2 is SDPA (AttnProcessor2_0)."""
    from diffusers import (StableDiffusionImg2ImgPipeline, StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline,
                           StableDiffusionXLPipeline)
    from transformers import CLIPTokenizer

    modules = {name: as_dtype(module, dtype) for name, module in components.items()}
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    if "text_encoder_2" in modules:
        cls = StableDiffusionXLImg2ImgPipeline if img2img else StableDiffusionXLPipeline
        extra = {"requires_aesthetics_score": False} if img2img else {}
        pipe = cls(tokenizer=tokenizer, tokenizer_2=CLIPTokenizer.from_pretrained(TOKENIZER_PAD_BANG_DIR),
                   scheduler=dpm_2m_scheduler(karras), **modules, **extra)
    else:
        cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
        pipe = cls(tokenizer=tokenizer, scheduler=dpm_2m_scheduler(karras), safety_checker=None,
                   feature_extractor=None, requires_safety_checker=False, **modules)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def attention_name(unet: torch.nn.Module) -> str:
    return type(next(iter(unet.attn_processors.values()))).__name__


# ------------------------------------------------------------------------------------------ printing


def fmt(value: float | None, spec: str = ".3f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def print_rows(rows: list[tuple[str, ...]]) -> None:
    """Left-aligned columns; the last column is not padded (it holds free text)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
