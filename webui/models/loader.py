"""Turn a checkpoint on disk into a diffusers pipeline, fully offline.

Single files: read the header, derive configs from shapes (``detect``), convert the LDM state dict with
diffusers' own converters, and build the components directly. The tokenizer and scheduler configs ship with
the product (``configs/``), so nothing is fetched from a model hub.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import init_empty_weights
from diffusers import (AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                 convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from webui.errors import ModelLoadError
from webui.models import detect
from webui.types import CheckpointInfo

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
TOKENIZER_DIR = CONFIG_DIR / "clip_tokenizer"
TOKENIZER_PAD_BANG_DIR = CONFIG_DIR / "clip_tokenizer_pad_bang"  # SD 2.x / SDXL's second tokenizer pad with "!"
SCHEDULER_CONFIG = CONFIG_DIR / "scheduler_config.json"


@dataclass
class LoadedModel:
    """A checkpoint ready to run: the pipeline plus what requests and infotext need to know about it."""

    info: CheckpointInfo
    family: str
    variant: str
    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline
    scheduler_config: dict[str, Any]
    default_size: int
    # A job's own VAE (a file from models/VAE), set on a per-job copy (dataclasses.replace); None: the pipe's.
    vae: Any = None
    # The job's textual-inversion embeddings (webui.models.embeddings.JobEmbeddings), set on a per-job copy too;
    # None: prompt words are only words.
    embeddings: Any = None

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype


def base_scheduler_config(prediction_type: str = "epsilon") -> dict[str, Any]:
    config = json.loads(SCHEDULER_CONFIG.read_text())
    config["prediction_type"] = prediction_type
    return config


def load(info: CheckpointInfo, dtype: torch.dtype, allow_pickle: bool = False) -> LoadedModel:
    """Load a checkpoint on the CPU in ``dtype``; the manager decides where it goes next."""
    if info.kind == "diffusers":
        return _load_diffusers_folder(info, dtype)
    if info.kind == "ckpt":
        if not allow_pickle:
            raise ModelLoadError(
                f"{info.name} is a pickle checkpoint (.ckpt/.pt). Pickles can run arbitrary code when loaded, so "
                "they are refused by default. Prefer a .safetensors version of this model, or start with "
                "--allow-pickle if you trust where this file came from.")
        state = _load_pickle(info.path)
        spec = detect.detect({k: tuple(v.shape) for k, v in state.items()}, info.name)
    else:
        spec = detect.detect(detect.read_safetensors_header(info.path), info.name)
        try:
            state = load_file(str(info.path))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{info.name} could not be read: {exc}") from exc
    return _build(info, spec, state, dtype)


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for bad pickles
        raise ModelLoadError(f"{path.name} could not be loaded as a weights-only pickle: {exc}") from exc
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path.name} does not contain a state dict.")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _build(info: CheckpointInfo, spec: detect.ModelSpec, state: dict[str, torch.Tensor],
           dtype: torch.dtype) -> LoadedModel:
    try:
        unet = _instantiate(lambda: UNet2DConditionModel(**spec.unet_config),
                            convert_ldm_unet_checkpoint(state, spec.unet_config), dtype)
        vae = _instantiate(lambda: AutoencoderKL(**spec.vae_config),
                           convert_ldm_vae_checkpoint(state, spec.vae_config), dtype)
        text_encoders = _text_encoders(spec, state, dtype)
    except (RuntimeError, KeyError, ValueError) as exc:
        # A shape mismatch or missing key here means the file is not what its layout claims.
        raise ModelLoadError(f"{info.name}: weights do not match the detected {spec.label} layout ({exc}).") from exc
    prediction = "v_prediction" if spec.needs_vpred_check and _is_v_prediction(info.path, state) else "epsilon"
    scheduler_config = base_scheduler_config(prediction)
    scheduler = _default_scheduler(scheduler_config)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR if spec.family == "sd1" else TOKENIZER_PAD_BANG_DIR)
    if spec.family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1],
            tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR) if text_encoders[0] is not None else None,
            tokenizer_2=tokenizer,
            unet=unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoders[0], tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(info=info, family=spec.family, variant=spec.variant, pipe=pipe,
                       scheduler_config=scheduler_config, default_size=spec.default_size)


def _instantiate(factory: Callable[[], torch.nn.Module], weights: dict[str, torch.Tensor], dtype: torch.dtype):
    # Parameters start empty (meta) and are filled with assign=True: no random init, no second copy in RAM.
    # Buffers (e.g. CLIP's position_ids) are still created for real, which plain torch.device("meta") would not do.
    with init_empty_weights(include_buffers=False):
        model = factory()
    # Cast the tensors rather than the module: diffusers warns about module-level casts after loading.
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()},
                          strict=True, assign=True)
    return model.eval()


def _text_encoders(spec: detect.ModelSpec, state: dict[str, torch.Tensor],
                   dtype: torch.dtype) -> list[torch.nn.Module]:
    if spec.family == "sd1":
        weights = _flatten_text_model(convert_ldm_clip_checkpoint(state))
        return [_instantiate(lambda: CLIPTextModel(CLIPTextConfig(**spec.text_configs[0])), weights, dtype)]
    if spec.family == "sd2":
        # SD 2.x skips OpenCLIP's last resblock. diffusers' converter only ignores index 23 (full-size ViT-H),
        # so drop whichever block is last here: smaller or pruned SD 2.x text encoders load strictly too.
        last = f"{detect.OPENCLIP_SD2}transformer.resblocks.{spec.text_configs[0]['num_hidden_layers']}."
        kept = {k: v for k, v in state.items() if not k.startswith(last)}
        return [_open_clip(CLIPTextModel, spec.text_configs[0], kept, detect.OPENCLIP_SD2, dtype)]
    if spec.variant == "refiner":  # OpenCLIP-bigG only: the pipeline's first text encoder slot stays empty
        return [None, _open_clip(CLIPTextModelWithProjection, spec.text_configs[0], state,
                                 detect.OPENCLIP_SDXL_REFINER, dtype)]
    clip_l = _flatten_text_model(convert_ldm_clip_checkpoint(state))
    return [_instantiate(lambda: CLIPTextModel(CLIPTextConfig(**spec.text_configs[0])), clip_l, dtype),
            _open_clip(CLIPTextModelWithProjection, spec.text_configs[1], state, detect.OPENCLIP_SDXL, dtype)]


def _flatten_text_model(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 5 flattened CLIPTextModel (no ``text_model.`` prefix); position_ids are a buffer it rebuilds."""
    return {k.removeprefix("text_model."): v for k, v in weights.items()
            if not k.endswith("position_ids")}


def _open_clip(cls, config: dict[str, Any], state: dict[str, torch.Tensor], prefix: str,
               dtype: torch.dtype) -> torch.nn.Module:
    model = cls(CLIPTextConfig(**config))  # the converter reads the model's config, so build it for real
    weights = convert_open_clip_checkpoint(model, state, prefix=prefix)
    if cls is CLIPTextModel:
        weights = _flatten_text_model(weights)
    weights = {k: v for k, v in weights.items() if not k.endswith("position_ids")}
    model.load_state_dict(weights, strict=True)
    return model.to(dtype=dtype).eval()


def _is_v_prediction(path: Path, state: dict[str, torch.Tensor]) -> bool:
    """SD 2.x 768-v models predict velocity; the shapes cannot tell, so follow A1111's yaml and ComfyUI's heuristic."""
    yaml = path.with_suffix(".yaml")
    if yaml.is_file():
        return 'parameterization: "v"' in yaml.read_text(errors="ignore") or \
            "parameterization: v" in yaml.read_text(errors="ignore")
    key = f"{detect.UNET}output_blocks.11.1.transformer_blocks.0.norm1.bias"
    return key in state and float(state[key].float().std()) > 0.09


def _default_scheduler(config: dict[str, Any]):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(config)


def _load_diffusers_folder(info: CheckpointInfo, dtype: torch.dtype) -> LoadedModel:
    index = info.path / "model_index.json"
    try:
        class_name = json.loads(index.read_text()).get("_class_name", "")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{info.name}: unreadable model_index.json ({exc}).") from exc
    cls = StableDiffusionXLPipeline if "XL" in class_name else StableDiffusionPipeline
    extra = {} if cls is StableDiffusionXLPipeline else {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = cls.from_pretrained(info.path, local_files_only=True, dtype=dtype, **extra)
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"{info.name}: not a loadable diffusers Stable Diffusion folder ({exc}).") from exc
    pipe.set_progress_bar_config(disable=True)
    in_channels = pipe.unet.config.in_channels
    family = "sdxl" if cls is StableDiffusionXLPipeline else (
        "sd2" if pipe.unet.config.cross_attention_dim == 1024 else "sd1")
    scheduler_config = dict(pipe.scheduler.config)
    return LoadedModel(info=info, family=family,
                       variant={8: "instruct-pix2pix", 9: "inpaint"}.get(in_channels, "normal"),
                       pipe=pipe, scheduler_config=scheduler_config,
                       default_size=pipe.unet.config.sample_size * pipe.vae_scale_factor)
