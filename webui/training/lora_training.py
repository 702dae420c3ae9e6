"""LoRA and DreamBooth-LoRA training on an SD1.x/SD2.x or SDXL checkpoint.

Follows diffusers' ``examples/text_to_image/train_text_to_image_lora.py`` and
``examples/dreambooth/train_dreambooth_lora(_sdxl).py``: peft ``LoraConfig`` adapters on the UNet's attention
projections (and the text encoders' when asked), frozen base weights, noise-prediction MSE (v-prediction when the
checkpoint is), prior-preservation loss for DreamBooth with class images, AdamW and diffusers' ``get_scheduler``.
All randomness of a step (latent sampling, noise, timesteps, flips) comes from one generator whose state is part of
the resume state, and the data order from (seed, epoch): a resumed run equals an uninterrupted one exactly.
The result is written with kohya/A1111 keys (``lora_unet_*``, ``lora_te_*``/``lora_te1_*``/``lora_te2_*``) and
kohya's ``ss_*`` metadata, so A1111, ComfyUI and diffusers' ``load_lora_weights`` all load it.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.optimization import get_scheduler
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image

from webui.errors import InvalidRequest
from webui.training import lora_data
from webui.training.lora_request import LoraTrainRequest, from_dict
from webui.training.protocol import Artifact, TrainingMethod, TrainingResources, TrainState

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
GRAD_CLIP = 1.0
BASE_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


def eight_bit_adam_problem() -> str | None:
    """Why 8-bit AdamW cannot be used here, or None."""
    if not torch.cuda.is_available():
        return "8-bit AdamW needs a CUDA device; this server trains on the CPU"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "8-bit AdamW needs the bitsandbytes package, which is not installed"
    return None


def check(request: LoraTrainRequest, resources: TrainingResources) -> None:
    """Everything that can be checked before loading the model: folders, images, captions, settings."""
    resources.checkpoint_hash(request.base_model)  # the service raises InvalidRequest for unknown/non-diffusion
    images = resources.images(request.data_dir, "data_dir")
    lora_data.check_images(images, "data_dir")
    lora_data.captions(images, request.caption_extension, request.prompt_for_all, "data_dir")
    if request.class_data_dir:
        class_images = resources.images(request.class_data_dir, "class_data_dir")
        lora_data.check_images(class_images, "class_data_dir")
    if request.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise InvalidRequest("mixed_precision", "fp16 needs a CUDA device (on the CPU it is unusably slow): "
                                                "use bf16 or no")
    if request.optimizer == "adamw8bit" and (problem := eight_bit_adam_problem()):
        raise InvalidRequest("optimizer", f"{problem}: use adamw")


def estimated_bytes(request: LoraTrainRequest, weight_bytes: int, unet_params: int) -> int:
    """What a run needs, roughly: the weights plus activations, which grow with the UNet's size, the batch and
    the pixels (about 2.3 GB for SD1.5 at 512x512, batch 1); gradient checkpointing cuts them about 4x, prior
    preservation doubles the batch."""
    activations = request.batch_size * request.resolution ** 2 * 4 * unet_params / 1e6 * 2.5
    if request.gradient_checkpointing:
        activations /= 4
    if request.class_data_dir:
        activations *= 2
    return int(weight_bytes + activations)


def memory_problem(request: LoraTrainRequest, weight_bytes: int, unet_params: int, free: int,
                   where: str) -> str | None:
    """Why the run cannot fit in ``free`` bytes (``where``: "free on the GPU" ...), or None."""
    needed = estimated_bytes(request, weight_bytes, unet_params)
    if needed <= free:
        return None
    return (f"this run needs about {needed / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB is {where}: lower "
            "batch size or resolution, or enable gradient checkpointing")


def output_path(request: LoraTrainRequest, resources: TrainingResources) -> Path:
    return resources.models_dir / "Lora" / f"{request.output_name}.safetensors"


@dataclass
class _Data:
    examples: list[lora_data.Example]
    class_examples: list[lora_data.Example]
    order: lora_data.BatchOrder
    dataset_hash: str
    tag_frequency: dict[str, int]


def _load_data(request: LoraTrainRequest, resources: TrainingResources, multiple: int) -> _Data:
    images = resources.images(request.data_dir, "data_dir")
    texts = lora_data.captions(images, request.caption_extension, request.prompt_for_all, "data_dir")
    square = (request.resolution, request.resolution)
    # Prior preservation adds class images to every batch, so all must share one size: centre crops then.
    if request.crop == "bucket" and not request.class_data_dir:
        step = 64 if request.resolution >= 256 and 64 % multiple == 0 else multiple
        choices = lora_data.buckets(request.resolution, step)
        sizes = [lora_data.bucket_for(path, choices) for path in images]
    else:
        sizes = [square] * len(images)
    examples = [lora_data.prepare(path, text, size) for path, text, size in zip(images, texts, sizes)]
    class_examples: list[lora_data.Example] = []
    if request.class_data_dir:
        class_examples = [lora_data.prepare(path, request.class_prompt, square)
                          for path in resources.images(request.class_data_dir, "class_data_dir")]
    frequency: dict[str, int] = {}
    for text in texts:
        for tag in (t.strip() for t in text.split(",")):
            if tag:
                frequency[tag] = frequency.get(tag, 0) + 1
    return _Data(examples, class_examples, lora_data.BatchOrder(sizes, request.batch_size, request.seed),
                 lora_data.dataset_hash(images, texts), frequency)


def _kohya_key(component: str, peft_key: str, family: str) -> str:
    """``down_blocks.0...to_q.lora_A.weight`` of ``unet`` -> ``lora_unet_down_blocks_0_..._to_q.lora_down.weight``."""
    module, _, tail = peft_key.rpartition(".lora_")
    kind = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[tail]
    if component == "unet":
        prefix = "lora_unet"
    else:
        if not module.startswith("text_model."):  # transformers 5 names CLIP modules without it; kohya has it
            module = f"text_model.{module}"
        prefix = {"text_encoder": "lora_te1" if family == "sdxl" else "lora_te", "text_encoder_2": "lora_te2"}[
            component]
    return f"{prefix}_{module.replace('.', '_')}.{kind}"


class LoraTrainer:
    """One LoRA run; its modules are attributes so the runner's ``DeviceOwner.resident`` places them."""

    def __init__(self, request: LoraTrainRequest, resources: TrainingResources):
        self.request = request
        self._resources = resources
        self._started_at = time.time()
        model = resources.load_checkpoint(request.base_model)
        if model.family not in BASE_VERSIONS or model.variant != "normal":
            raise InvalidRequest("base_model", f"{request.base_model} is a {model.family} {model.variant} "
                                               "checkpoint; LoRA training needs a normal SD1.x, SD2.x or SDXL one")
        self.family = model.family
        self._info = model.info
        pipe = model.pipe
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.text_encoder = pipe.text_encoder
        self.text_encoder_2 = getattr(pipe, "text_encoder_2", None)
        self._tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]
        self._scheduler_config = model.scheduler_config
        self.noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
        self._vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        multiple = self._vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if request.resolution % multiple:
            raise InvalidRequest("resolution", f"must be a multiple of {multiple} for this checkpoint")
        self._check_memory()
        self._data = _load_data(request, resources, multiple)
        micro_per_epoch = self._data.order.per_epoch
        self.steps_per_epoch = max(1, micro_per_epoch // request.gradient_accumulation)
        self.total_steps = request.max_train_steps or request.epochs * self.steps_per_epoch
        for module in self._text_encoders() + [self.unet, self.vae]:
            module.requires_grad_(False)
        # LoRA's initial A matrices are random: drawn from the run's seed without touching the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(request.seed)
            config = dict(r=request.rank, lora_alpha=request.alpha, init_lora_weights="gaussian", lora_dropout=0.0)
            self.unet.add_adapter(LoraConfig(target_modules=UNET_TARGETS, **config))
            if request.train_text_encoder:
                for encoder in self._text_encoders():
                    encoder.add_adapter(LoraConfig(target_modules=TEXT_TARGETS, **config))
        self._trainable = [(name, p) for name, p in self._named_components() if p.requires_grad]
        self._generator = torch.Generator().manual_seed(request.seed)
        self._device = torch.device("cpu")
        self._optimizer: Any = None
        self._lr_scheduler: Any = None
        self._scaler: Any = None

    # ------------------------------------------------------------------------------------------ set-up

    def _text_encoders(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]

    def _components(self) -> dict[str, torch.nn.Module]:
        found = {"unet": self.unet, "text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2}
        return {name: module for name, module in found.items() if module is not None}

    def _named_components(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(f"{component}.{name}", p) for component, module in self._components().items()
                for name, p in module.named_parameters()]

    def _check_memory(self) -> None:
        weights = sum(p.numel() * p.element_size() for m in [self.unet, self.vae, *self._text_encoders()]
                      for p in m.parameters())
        unet_params = sum(p.numel() for p in self.unet.parameters())
        if torch.cuda.is_available():
            free, where = torch.cuda.mem_get_info()[0], "free on the GPU"
        else:
            import psutil  # a dependency of accelerate, so always installed with it

            free, where = psutil.virtual_memory().available, "of RAM available"
        if (problem := memory_problem(self.request, weights, unet_params, free, where)) is not None:
            raise InvalidRequest("batch_size", problem)

    def on_device(self, device: torch.device) -> None:
        request = self.request
        self._device = device
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(request.mixed_precision)
        if dtype is not None:  # frozen weights in half precision, trained LoRA weights stay fp32 (as diffusers)
            for module in [self.unet, *self._text_encoders()]:
                for p in module.parameters():
                    if not p.requires_grad:
                        p.data = p.data.to(dtype)
        if request.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if request.train_text_encoder:
                for encoder in self._text_encoders():
                    encoder.gradient_checkpointing_enable()
        params = [p for _, p in self._trainable]
        if request.optimizer == "adamw8bit":
            import bitsandbytes as bnb

            self._optimizer = bnb.optim.AdamW8bit(params, lr=request.learning_rate)
        else:
            self._optimizer = torch.optim.AdamW(params, lr=request.learning_rate)
        self._lr_scheduler = get_scheduler(request.lr_scheduler, self._optimizer,
                                           num_warmup_steps=request.lr_warmup_steps,
                                           num_training_steps=self.total_steps)
        if request.mixed_precision == "fp16":
            self._scaler = torch.amp.GradScaler(device.type)

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.request.mixed_precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=dtype)

    # ------------------------------------------------------------------------------------------ one step

    def _randn(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self._generator).to(self._device)

    def _encode_prompts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        ids = [tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(self._device) for tok in self._tokenizers]
        if self.family != "sdxl":
            return self.text_encoder(ids[0])[0], None
        hidden, pooled = [], None
        for encoder, input_ids in zip(self._text_encoders(), ids):
            out = encoder(input_ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's (CLIP-G's) projected pooled output
        return torch.cat(hidden, dim=-1), pooled

    def _loss(self, examples: list[lora_data.Example], instances: int) -> torch.Tensor:
        """MSE over the first ``instances`` examples, plus the prior-loss weight times the MSE over the rest
        (DreamBooth's class images)."""
        pixels = torch.stack([e.pixels for e in examples])
        flips = torch.rand(len(examples), generator=self._generator) < 0.5 if self.request.random_flip else None
        if flips is not None:
            pixels = torch.where(flips[:, None, None, None], pixels.flip(-1), pixels)
        pixels = pixels.to(self._device, self.vae.dtype)
        with torch.no_grad():
            dist = self.vae.encode(pixels).latent_dist
            latents = (dist.mean + dist.std * self._randn(dist.mean.shape).to(dist.mean.dtype))
            latents = latents.float() * self.vae.config.scaling_factor
        noise = self._randn(latents.shape)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(examples),),
                                  generator=self._generator).to(self._device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = (self.noise_scheduler.get_velocity(latents, noise, timesteps)
                  if self.noise_scheduler.config.prediction_type == "v_prediction" else noise)
        with self._autocast():
            grad = torch.enable_grad() if self.request.train_text_encoder else torch.no_grad()
            with grad:
                embeds, pooled = self._encode_prompts([e.caption for e in examples])
            extra = {}
            if self.family == "sdxl":
                height, width = examples[0].pixels.shape[-2:]
                time_ids = torch.tensor([[*e.original_size, *e.crop_top_left, height, width] for e in examples],
                                        dtype=embeds.dtype, device=self._device)
                extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
            prediction = self.unet(noisy, timesteps, embeds, **extra).sample
        per_example = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        loss = per_example[:instances].mean()
        if len(examples) > instances:
            loss = loss + self.request.prior_loss_weight * per_example[instances:].mean()
        return loss

    def step(self, step: int) -> Mapping[str, float]:
        request = self.request
        for module in self._components().values():
            module.train()
        lr = self._lr_scheduler.get_last_lr()[0]
        total, epoch = 0.0, 0
        for k in range(request.gradient_accumulation):
            epoch, indices = self._data.order.batch(step * request.gradient_accumulation + k)
            examples = [self._data.examples[i] for i in indices]
            if self._data.class_examples:  # prior preservation: as many class images, cycling through them
                count = len(self._data.class_examples)
                start = (step * request.gradient_accumulation + k) * len(examples)
                examples += [self._data.class_examples[(start + i) % count] for i in range(len(indices))]
            loss = self._loss(examples, len(indices)) / request.gradient_accumulation
            (self._scaler.scale(loss) if self._scaler else loss).backward()
            total += float(loss.detach())
        params = [p for _, p in self._trainable]
        if self._scaler:
            self._scaler.unscale_(self._optimizer)
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        if self._scaler:
            self._scaler.step(self._optimizer)
            self._scaler.update()
        else:
            self._optimizer.step()
        self._lr_scheduler.step()
        self._optimizer.zero_grad(set_to_none=True)
        return {"loss": total, "lr": lr, "epoch": float(epoch + 1)}

    # ------------------------------------------------------------------------------------------ resume

    def state(self) -> TrainState:
        tensors = {f"param.{name}": p.detach().cpu().clone() for name, p in self._trainable}
        optimizer = self._optimizer.state_dict()
        opt_values: dict[str, dict[str, Any]] = {}
        for index, slots in optimizer["state"].items():
            opt_values[str(index)] = {}
            for key, value in slots.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"opt.{index}.{key}"] = value.detach().cpu().clone()
                else:
                    opt_values[str(index)][key] = value
        tensors["rng.generator"] = self._generator.get_state()
        values = {"optimizer_groups": optimizer["param_groups"], "optimizer_values": opt_values,
                  "scheduler": self._lr_scheduler.state_dict(), "seed": self.request.seed,
                  "scaler": self._scaler.state_dict() if self._scaler else None}
        return TrainState(tensors=tensors, values=json.loads(json.dumps(values)))

    def load_state(self, state: TrainState) -> None:
        mine = dict(self._trainable)
        missing = [name for name in mine if f"param.{name}" not in state.tensors]
        if missing:
            raise InvalidRequest("resume_from", f"the resume state does not match this run's settings "
                                                f"(no {missing[0]}): resume with the same rank and modules")
        with torch.no_grad():
            for name, p in mine.items():
                saved = state.tensors[f"param.{name}"]
                if saved.shape != p.shape:
                    raise InvalidRequest("resume_from", f"{name} has shape {tuple(saved.shape)} in the resume "
                                                        f"state, {tuple(p.shape)} here: use the same rank")
                p.copy_(saved)
        slots: dict[int, dict[str, Any]] = {}
        for index, extra in state.values["optimizer_values"].items():
            slots[int(index)] = dict(extra)
        for key, tensor in state.tensors.items():
            if key.startswith("opt."):
                _, index, slot = key.split(".", 2)
                slots.setdefault(int(index), {})[slot] = tensor.to(self._device) if slot != "step" else tensor
        self._optimizer.load_state_dict({"state": slots, "param_groups": state.values["optimizer_groups"]})
        self._lr_scheduler.load_state_dict(state.values["scheduler"])
        self._generator.set_state(state.tensors["rng.generator"])
        if self._scaler and state.values.get("scaler"):
            self._scaler.load_state_dict(state.values["scaler"])

    # ------------------------------------------------------------------------------------------ results

    def samples(self) -> list[Image.Image]:
        request = self.request
        if not request.sample_prompts:
            return []
        for module in self._components().values():
            module.eval()
        scheduler = EulerDiscreteScheduler.from_config(self._scheduler_config)
        if self.family == "sdxl":
            pipe: Any = StableDiffusionXLPipeline(
                vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                tokenizer=self._tokenizers[0], tokenizer_2=self._tokenizers[1], unet=self.unet, scheduler=scheduler)
        else:
            pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder,
                                           tokenizer=self._tokenizers[0], unet=self.unet, scheduler=scheduler,
                                           safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        images = []
        with torch.no_grad(), self._autocast():
            for index, prompt in enumerate(request.sample_prompts):
                generator = torch.Generator().manual_seed(request.seed + index)  # the same sample each time
                images += pipe(prompt, num_inference_steps=request.sample_steps, height=request.resolution,
                               width=request.resolution, generator=generator).images
        return images

    def artifact(self) -> Artifact:
        request = self.request
        tensors: dict[str, torch.Tensor] = {}
        for component, module in self._components().items():
            if component != "unet" and not request.train_text_encoder:
                continue
            for key, value in get_peft_model_state_dict(module).items():
                kohya = _kohya_key(component, key, self.family)
                tensors[kohya] = value.detach().float().cpu().contiguous()
                if kohya.endswith(".lora_down.weight"):
                    tensors[kohya.replace(".lora_down.weight", ".alpha")] = torch.tensor(float(request.alpha))
        data = self._data
        info = self._info
        resolution = f"({request.resolution}, {request.resolution})"
        metadata = {
            "ss_base_model_version": BASE_VERSIONS[self.family],
            "ss_sd_model_name": info.name if info is not None else request.base_model,
            "ss_sd_model_hash": self._resources.checkpoint_hash(request.base_model) or "",
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(request.rank),
            "ss_network_alpha": str(request.alpha),
            "ss_network_train_unet_only": str(not request.train_text_encoder),
            "ss_resolution": resolution,
            "ss_enable_bucket": str(request.crop == "bucket" and not request.class_data_dir),
            "ss_max_train_steps": str(self.total_steps),
            "ss_steps": str(self.total_steps),
            "ss_epoch": str(max(1, -(-self.total_steps // self.steps_per_epoch))),
            "ss_num_train_images": str(len(data.examples)),
            "ss_num_reg_images": str(len(data.class_examples)),
            "ss_batch_size_per_device": str(request.batch_size),
            "ss_gradient_accumulation_steps": str(request.gradient_accumulation),
            "ss_learning_rate": str(request.learning_rate),
            "ss_unet_lr": str(request.learning_rate),
            "ss_text_encoder_lr": str(request.learning_rate if request.train_text_encoder else 0),
            "ss_lr_scheduler": request.lr_scheduler,
            "ss_lr_warmup_steps": str(request.lr_warmup_steps),
            "ss_mixed_precision": request.mixed_precision,
            "ss_gradient_checkpointing": str(request.gradient_checkpointing),
            "ss_optimizer": "bitsandbytes.optim.AdamW8bit" if request.optimizer == "adamw8bit"
                            else "torch.optim.AdamW",
            "ss_prior_loss_weight": str(request.prior_loss_weight),
            "ss_seed": str(request.seed),
            "ss_output_name": request.output_name,
            "ss_training_started_at": str(self._started_at),
            "ss_training_finished_at": str(time.time()),
            "ss_tag_frequency": json.dumps({Path(request.data_dir).name: data.tag_frequency}),
            "ss_dataset_dirs": json.dumps({Path(request.data_dir).name: {"n_repeats": 1,
                                                                          "img_count": len(data.examples)}}),
            "ss_v2": str(self.family == "sd2"),
            "modelspec.architecture": {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2",
                                       "sdxl": "stable-diffusion-xl-v1-base"}[self.family] + "/lora",
            "modelspec.title": request.output_name,
            "studio_dataset_hash": data.dataset_hash,
            "studio_method": "dreambooth_lora" if request.dreambooth else "lora",
            "studio_settings": json.dumps(request.settings_json()),
        }
        return Artifact(tensors=tensors, path=output_path(request, self._resources), metadata=metadata)


def create(request: LoraTrainRequest, resources: TrainingResources) -> LoraTrainer:
    return LoraTrainer(request, resources)


METHOD = TrainingMethod(name="lora", label="LoRA", request_type=LoraTrainRequest,
                        from_dict=lambda body: from_dict(body, method="lora"), check=check, create=create)
DREAMBOOTH_METHOD = TrainingMethod(name="dreambooth_lora", label="DreamBooth LoRA", request_type=LoraTrainRequest,
                                   from_dict=lambda body: from_dict(body, method="dreambooth_lora"), check=check,
                                   create=create)
