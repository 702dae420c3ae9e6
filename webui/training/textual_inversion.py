"""Textual-inversion training: learn N new token vectors so that a word stands for the images of a folder.

The maths is diffusers' ``examples/textual_inversion/textual_inversion.py``: latents of the training images, a
random timestep and noise, the frozen UNet's noise prediction conditioned on a template prompt that holds the new
tokens, MSE to the noise (or velocity), and gradients reach only the new vectors. The workflow is A1111's Train tab
(``modules/textual_inversion``): name, initialization text, vectors per token, prompt templates with ``[name]`` and
``[filewords]`` (the image's ``.txt`` caption, or its file name without leading numbers), A1111's learning-rate
schedule syntax, latents sampled once per image ("once"), and the result as A1111 reads it:
``embeddings/NAME.safetensors`` holding ``emb_params`` [vectors, width] (SDXL: ``clip_l`` and ``clip_g``, one set of
vectors per text encoder) with ``step``/``sd_checkpoint`` metadata.

The vectors live in their own parameter, spliced into the text encoder's input embedding by ``SplicedEmbedding``
(installed with transformers' ``set_input_embeddings``), so the vocabulary table is neither resized nor trained,
the optimizer holds N x width values instead of a 49,408-row table, and the base weights stay exactly as loaded.
All of this runs on the trainer's own copy of the checkpoint (``resources.load_checkpoint``), never the one that
serves generations. SD 1.x, SD 2.x and SDXL (conditioned as SDXL is: both encoders' penultimate layers, the pooled
OpenCLIP output and the size/crop ids).
"""

from __future__ import annotations

import copy
import glob
import json
import math
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from webui.errors import InvalidRequest
from webui.training import datasets
from webui.training.optim_state import load_optimizer, optimizer_state
from webui.training.protocol import Artifact, TrainingMethod, TrainingResources, TrainState
from webui.training.ti_request import (TEMPLATES_DIR, USER_TEMPLATES, TextualInversionRequest, parse_learn_rate,
                                       rate_at, ti_from_dict)

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
SAMPLE_STEPS = 20
_NUMBERS_AT_START = re.compile(r"^[-\d]+\s*")  # A1111's re_numbers_at_start: "00012-cat.png" -> "cat"


class SplicedEmbedding(nn.Module):
    """The text encoder's token embedding with ``vectors`` standing in for ids ``first_id .. first_id + n - 1``
    (tokens added to the trainer's own tokenizer, beyond the base vocabulary)."""

    def __init__(self, base: nn.Embedding, vectors: torch.Tensor, first_id: int):
        super().__init__()
        self.base = base
        self.vectors = nn.Parameter(vectors)
        self.first_id = first_id

    @property
    def weight(self) -> torch.Tensor:  # transformers reads .weight for dtype/device
        return self.base.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        new = input_ids >= self.first_id
        out = self.base(input_ids.masked_fill(new, 0))
        picked = self.vectors[(input_ids - self.first_id).clamp(0, self.vectors.shape[0] - 1)]
        return torch.where(new.unsqueeze(-1), picked.to(out.dtype), out)


# ------------------------------------------------------------------------------------------------------ data


def caption_of(path: Path, data_dir: Path | None = None) -> str:
    """``[filewords]``: the ``.txt`` beside the image, else the file name without leading numbers (A1111).
    With ``data_dir``, a caption file that links out of it is ignored (as image links are)."""
    text_file = path.with_suffix(".txt")
    inside = data_dir is None or Path(os.path.realpath(data_dir)) in Path(os.path.realpath(text_file)).parents
    if inside and text_file.is_file():
        return text_file.read_text(encoding="utf-8", errors="replace").strip()
    return _NUMBERS_AT_START.sub("", path.stem)


def read_template(request: TextualInversionRequest, data_dir: Path) -> list[str]:
    """Lines of the template: ``data_dir/textual_inversion_templates/<name>`` first, then the built-in ones."""
    for folder in (data_dir / USER_TEMPLATES, TEMPLATES_DIR):
        path = folder / request.template
        if path.is_file():
            lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
            lines = [line for line in lines if line]
            if not lines:
                raise InvalidRequest("template", f"'{request.template}' is empty")
            return lines
    known = sorted({p.name for folder in (data_dir / USER_TEMPLATES, TEMPLATES_DIR) if folder.is_dir()
                    for p in folder.glob("*.txt")})
    raise InvalidRequest("template", f"no template '{request.template}' (available: {', '.join(known)})")


def _seed(*parts: int) -> int:
    value = 0x2545F4914F6CDD1D
    for part in parts:
        value = (value * 6364136223846793005 + part + 1442695040888963407) % (1 << 63)
    return value


def _placeholders(name: str, count: int) -> list[str]:
    # Added tokens that no prompt will contain by accident; one per vector.
    return [f"<ti:{name}:{i}>" for i in range(count)]


def _prompt(template: str, placeholder: str, caption: str, request: TextualInversionRequest,
            rng: torch.Generator) -> str:
    """A1111's ``create_text``: tags of the caption, optionally dropped/shuffled, into the template."""
    tags = [tag.strip() for tag in caption.split(",")]
    if request.tag_drop_out > 0:
        tags = [tag for tag in tags if torch.rand((), generator=rng).item() > request.tag_drop_out]
    if request.shuffle_tags:
        tags = [tags[i] for i in torch.randperm(len(tags), generator=rng).tolist()]
    return template.replace("[filewords]", ", ".join(tags)).replace("[name]", placeholder)


# ------------------------------------------------------------------------------------------------------ checks


def _embedding_exists(folder: Path, name: str) -> Path | None:
    """An embedding of that name anywhere under ``embeddings/`` (prompts name embeddings by file stem, whatever
    the sub-folder, so a second one would be ambiguous)."""
    if not folder.is_dir():
        return None
    return next((path for path in sorted(folder.rglob(f"{glob.escape(name)}.*"))
                 if path.stem == name and path.suffix.lower() in EMBEDDING_SUFFIXES), None)


def _files(request: TextualInversionRequest, resources: TrainingResources) -> list[Path]:
    data_dir = resources.models_dir.parent
    existing = _embedding_exists(resources.embeddings_dir, request.name)
    if existing is not None and not request.overwrite:
        where = existing.relative_to(resources.embeddings_dir)
        raise InvalidRequest("name", f"an embedding '{where}' already exists; choose another name or tick "
                             "overwrite")
    read_template(request, data_dir)
    files = resources.images(request.dataset, "dataset")
    for path in files:
        datasets.image_size(path, "dataset")
    return files


def _check_model(request: TextualInversionRequest, model: Any) -> None:
    pipe = model.pipe
    if model.family == "sdxl" and getattr(pipe, "text_encoder", None) is None:
        raise InvalidRequest("checkpoint", "an SDXL refiner has no CLIP-L text encoder; train embeddings on an "
                             "SDXL base checkpoint")
    factor = getattr(pipe, "vae_scale_factor", 8)
    for field in ("width", "height"):
        if getattr(request, field) % factor:
            raise InvalidRequest(field, f"must be a multiple of {factor} for this checkpoint's VAE")
    ids = pipe.tokenizer(request.init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InvalidRequest("init_text", f"'{request.init_text}' gives no tokens")


def check(request: TextualInversionRequest, resources: TrainingResources) -> None:
    """Name, template, folder and images first (cheap), then the checkpoint (raises for a non-diffusion file)."""
    _files(request, resources)
    _check_model(request, resources.load_checkpoint(request.checkpoint))


# ---------------------------------------------------------------------------------------------------- trainer


class TextualInversionTrainer:
    """One embedding being learnt on the trainer's own copy of a checkpoint."""

    def __init__(self, request: TextualInversionRequest, resources: TrainingResources):
        files = _files(request, resources)
        model = resources.load_checkpoint(request.checkpoint)
        _check_model(request, model)
        self.request, self.files = request, files
        self.family = model.family
        self.checkpoint_title = request.checkpoint
        self.checkpoint_hash = resources.checkpoint_hash(request.checkpoint) or ""
        self.output = resources.embeddings_dir / f"{request.name}.safetensors"
        self.templates = read_template(request, resources.models_dir.parent)
        self.captions = [caption_of(path, resources.models_dir.parent) for path in files]
        self.dataset_hash = datasets.dataset_hash(files)
        self.schedule = parse_learn_rate(request.learn_rate, request.steps)
        pipe = model.pipe
        self.scheduler_config = dict(model.scheduler_config)
        self.unet, self.vae = pipe.unet, pipe.vae
        self.is_xl = model.family == "sdxl"
        self.placeholders = _placeholders(request.name, request.num_vectors)
        # The model is the run's own (load_checkpoint returns a new one), so its encoders are changed in place:
        # copying them would cost 0.5 GB (SD1) to 3 GB (SDXL) of RAM. Tokenizers may be shared, so they are copied.
        self.text_encoder, self.tokenizer, self.embedding = self._splice(pipe.text_encoder, pipe.tokenizer)
        self.text_encoder_2 = self.tokenizer_2 = self.embedding_2 = None
        if self.is_xl:
            self.text_encoder_2, self.tokenizer_2, self.embedding_2 = self._splice(pipe.text_encoder_2,
                                                                                   pipe.tokenizer_2)
        for module in (self.unet, self.vae):
            module.requires_grad_(False).eval()
        self.samples_per_step = request.batch_size * request.gradient_accumulation
        self.steps_per_epoch = max(1, math.ceil(len(files) / self.samples_per_step))
        self.total_steps = request.steps
        self.device = torch.device("cpu")
        self.optimizer: torch.optim.Optimizer | None = None
        self.latents: torch.Tensor | None = None
        self.completed = 0

    def _splice(self, text_encoder: nn.Module, tokenizer: Any) -> tuple[nn.Module, Any, SplicedEmbedding]:
        tokenizer = copy.deepcopy(tokenizer)
        text_encoder.requires_grad_(False).eval()
        tokenizer.add_tokens(self.placeholders, special_tokens=True)
        ids = tokenizer.convert_tokens_to_ids(self.placeholders)
        base = text_encoder.get_input_embeddings()
        # Added tokens get the ids after the whole vocabulary, so every id from the first one on is ours (a table
        # padded beyond the vocabulary is fine: the tokenizer never produces those rows' ids).
        if ids != list(range(ids[0], ids[0] + len(ids))) or ids[0] < len(tokenizer) - len(ids):
            raise InvalidRequest("name", "could not add the embedding's tokens to the tokenizer")
        embedding = SplicedEmbedding(base, self._initial_vectors(base, tokenizer), ids[0])
        text_encoder.set_input_embeddings(embedding)
        return text_encoder, tokenizer, embedding

    def _initial_vectors(self, base: nn.Embedding, tokenizer: Any) -> torch.Tensor:
        """A1111's ``create_embedding``: vector i is the init text's token i modulo its length."""
        ids = tokenizer(self.request.init_text, add_special_tokens=False)["input_ids"]
        table = base.weight.detach().float()
        return torch.stack([table[ids[i % len(ids)]] for i in range(self.request.num_vectors)]).clone()

    def embeddings(self) -> dict[str, SplicedEmbedding]:
        """The trained vectors by their key in the file: ``emb_params`` (SD1/SD2) or ``clip_l`` + ``clip_g``."""
        if self.embedding_2 is None:
            return {"emb_params": self.embedding}
        return {"clip_l": self.embedding, "clip_g": self.embedding_2}

    # -- protocol ------------------------------------------------------------------------------------------

    def on_device(self, device: torch.device) -> None:
        self.device = device
        self.optimizer = torch.optim.AdamW([e.vectors for e in self.embeddings().values()], lr=self.schedule[0][0],
                                           weight_decay=0.0)
        self.latents = self._encode_images()

    def _encode_images(self) -> torch.Tensor:
        """Each image resized to the training size and encoded once ("once" sampling), from a seeded draw."""
        request = self.request
        generator = torch.Generator().manual_seed(_seed(request.seed, 0, 1))
        latents = []
        with torch.no_grad():
            for path in self.files:
                image = datasets.open_rgb(path).resize((request.width, request.height), Image.Resampling.BICUBIC)
                pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
                pixels = pixels.unsqueeze(0).to(device=self.device, dtype=self.vae.dtype)
                dist = self.vae.encode(pixels).latent_dist
                noise = torch.randn(dist.mean.shape, generator=generator).to(self.device, dist.mean.dtype)
                latents.append((dist.mean + dist.std * noise).float().cpu() * self.vae.config.scaling_factor)
        return torch.cat(latents)

    def _sample_positions(self, step: int) -> Iterator[list[int]]:
        """The dataset indices of each micro-batch of optimizer step ``step``: one shuffled pass per epoch."""
        size, per_batch = len(self.files), self.request.batch_size
        for micro in range(self.request.gradient_accumulation):
            picked = []
            for k in range(per_batch):
                position = (step * self.request.gradient_accumulation + micro) * per_batch + k
                epoch, index = divmod(position, size)
                order = torch.randperm(size, generator=torch.Generator().manual_seed(_seed(self.request.seed,
                                                                                             epoch, 2)))
                picked.append(int(order[index]))
            yield picked

    def _encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """(hidden states, SDXL's added conditions or None). SDXL: both encoders' penultimate layers side by
        side, the pooled OpenCLIP output and the size/crop ids of an uncropped image at the training size."""
        if not self.is_xl:
            return self.text_encoder(self._ids(self.tokenizer, prompts))[0], None
        out_l = self.text_encoder(self._ids(self.tokenizer, prompts), output_hidden_states=True)
        out_g = self.text_encoder_2(self._ids(self.tokenizer_2, prompts), output_hidden_states=True)
        states = torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1)
        height, width = self.request.height, self.request.width
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * len(prompts), dtype=states.dtype,
                                device=states.device)
        return states, {"text_embeds": out_g[0], "time_ids": time_ids}

    def _ids(self, tokenizer: Any, prompts: list[str]) -> torch.Tensor:
        tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
        return tokens.input_ids.to(self.device)

    def step(self, step: int) -> Mapping[str, float]:
        assert self.optimizer is not None and self.latents is not None, "on_device() first"
        request = self.request
        lr = rate_at(self.schedule, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        noise_scheduler = _noise_scheduler(self.scheduler_config)
        rng = torch.Generator().manual_seed(_seed(request.seed, step, 3))
        placeholder = " ".join(self.placeholders)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for picked in self._sample_positions(step):
            prompts = [_prompt(self.templates[int(torch.randint(0, len(self.templates), (), generator=rng))],
                               placeholder, self.captions[i], request, rng) for i in picked]
            latents = self.latents[picked]
            noise = torch.randn(latents.shape, generator=rng)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(picked),), generator=rng)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise
            states, added = self._encode_prompts(prompts)
            if added is not None:
                added = {key: value.to(self.unet.dtype) for key, value in added.items()}
            prediction = self.unet(noisy.to(self.device, self.unet.dtype), timesteps.to(self.device),
                                   states.to(self.unet.dtype), added_cond_kwargs=added).sample
            loss = F.mse_loss(prediction.float(), target.to(self.device)) / request.gradient_accumulation
            loss.backward()
            total += loss.item()
        self.optimizer.step()
        self.completed = step + 1
        return {"loss": total, "lr": lr, "epoch": float(step // self.steps_per_epoch)}

    def state(self) -> TrainState:
        assert self.optimizer is not None
        tensors, values = optimizer_state("opt", self.optimizer)
        for key, embedding in self.embeddings().items():
            tensors[f"vectors.{key}"] = embedding.vectors.detach().cpu().contiguous().clone()
        values["completed"] = self.completed
        return TrainState(tensors, values)

    def load_state(self, state: TrainState) -> None:
        assert self.optimizer is not None
        with torch.no_grad():
            for key, embedding in self.embeddings().items():
                embedding.vectors.copy_(state.tensors[f"vectors.{key}"])
        load_optimizer("opt", self.optimizer, state.tensors, state.values)
        self.completed = int(state.values["completed"])

    def sample_prompt(self) -> str:
        placeholder = " ".join(self.placeholders)
        if self.request.sample_prompt.strip():
            # [name], or the embedding's name as a whole word (as A1111 matches it in prompts), in one pass.
            named = re.compile(rf"\[name\]|(?<!\w){re.escape(self.request.name)}(?!\w)")
            return named.sub(lambda _: placeholder, self.request.sample_prompt)
        return _prompt(self.templates[0], placeholder, self.captions[0], self.request,
                       torch.Generator().manual_seed(0))

    def samples(self) -> list[Image.Image]:
        """One image from the current embedding (A1111's preview: the first template line, fixed seed)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        request = self.request
        scheduler = _sample_scheduler(self.scheduler_config)
        if self.is_xl:
            pipe = StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder,
                                             text_encoder_2=self.text_encoder_2, tokenizer=self.tokenizer,
                                             tokenizer_2=self.tokenizer_2, unet=self.unet, scheduler=scheduler)
        else:
            pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                           unet=self.unet, scheduler=scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            result = pipe(self.sample_prompt(), width=request.width, height=request.height,
                          num_inference_steps=SAMPLE_STEPS, guidance_scale=7.0,
                          generator=torch.Generator().manual_seed(request.seed))
        return list(result.images)

    def artifact(self) -> Artifact:
        request = self.request
        settings = {key: value for key, value in asdict(request).items() if key != "overwrite"}
        metadata = {
            "format": "pt",
            "name": request.name,
            "step": str(self.completed),
            "sd_checkpoint": self.checkpoint_hash,
            "sd_checkpoint_name": self.checkpoint_title,
            "studio_method": "textual_inversion",
            "studio_family": self.family,
            "studio_dataset_size": str(len(self.files)),
            "studio_dataset_hash": self.dataset_hash,
            "studio_settings": json.dumps(settings, sort_keys=True),
        }
        tensors = {key: embedding.vectors.detach().float().cpu().contiguous().clone()
                   for key, embedding in self.embeddings().items()}
        return Artifact(tensors, self.output, metadata)


def _noise_scheduler(config: dict[str, Any]):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config)


def _sample_scheduler(config: dict[str, Any]):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(config)


def create(request: TextualInversionRequest, resources: TrainingResources) -> TextualInversionTrainer:
    return TextualInversionTrainer(request, resources)


METHOD = TrainingMethod(name="textual_inversion", label="Textual inversion", request_type=TextualInversionRequest,
                        from_dict=ti_from_dict, check=check, create=create, uses_checkpoint=True)
