"""Runtime options as A1111's ``/sdapi/v1/options`` exposes them, typed and bounded.

Only the options in ``OPTIONS`` are accepted, each with its type and limits; anything else is refused with a 422
naming the key, so a client can neither fill ``config.json`` with arbitrary data nor set an option this server
would silently ignore under a misspelt name. The table holds the A1111 v1.10 names that clients commonly set.

Honoured here: ``sd_model_checkpoint`` (queues a checkpoint switch job), ``CLIP_stop_at_last_layers`` (the API's default clip
skip), ``randn_source`` and ``eta_noise_seed_delta`` (the API's default noise source and ENSD), the
``provenance_*`` / ``safety_checker`` switches (read by the image writers), ``sd_vae`` (the VAE of jobs that do
not name one) and A1111's sampler parameters (``eta_ancestral``, ``s_churn``... for the API's jobs). The other A1111 names are
stored and echoed so that clients which set them keep working. Stored in ``config.json`` under the data dir,
written atomically; unknown or invalid entries found there at start-up are dropped with a log line.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from webui.errors import InvalidRequest
from webui.models.manager import ModelManager
from webui.atomic import atomic_write_text
from webui.parameters import PARAMS, RANDN_SOURCES, SAMPLER_OPTION_PARAMS
from webui.samplers import SCHEDULE_TYPES, sampler_names
from webui.services.saving import path_problem, resolve_outdir
from webui.stored_options import MEMORY_PROFILE_KEY
from webui.config import MEMORY_PROFILES
from webui.pipelines.preview import APPROX_CHEAP, COMBINED, CONTENTS as PREVIEW_CONTENTS, METHODS as PREVIEW_METHODS
from webui.types import safe_label, text_problem

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "sd_model_checkpoint"  # not stored as a value: the manager's selection is the truth
MAX_TEXT = 256  # option strings are names (a VAE file, a format), never documents
_CLIP_SKIP = next(p for p in PARAMS if p.setting == "CLIP_stop_at_last_layers")  # its bounds, declared once


@dataclass(frozen=True)
class Option:
    """One accepted option: its type, default and bounds (numbers) or choices (strings)."""

    type: type
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    honoured: bool = False  # False: an A1111 name we accept only at the value this server actually uses
    label: str = ""    # the Settings tab shows rows with a label, under their section (webui/ui/settings.py)
    section: str = ""
    path: bool = False  # a folder inside outputs/: never set over the API (webui/services/saving.py)
    restart: str = ""   # when the change applies, if not at the next job ("after a restart")

    def check(self, key: str, value: Any) -> Any:
        """The value to store, or InvalidRequest naming ``key``."""
        value = self._typed(key, value)
        if self.path and (problem := path_problem(value)) is not None:
            raise InvalidRequest(key, problem)
        if not self.honoured and value != self.default:
            # Storing it would claim a behaviour we do not have (a JPEG format, another noise source...).
            raise InvalidRequest(key, f"{value!r} is not supported by this server yet; it works as "
                                      f"{self.default!r} (clients may send that value back unchanged)")
        return value

    def _typed(self, key: str, value: Any) -> Any:
        if self.type is bool:
            if not isinstance(value, bool):
                raise InvalidRequest(key, "must be true or false")
            return value
        if self.type is str:
            return self._check_text(key, value)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or (isinstance(value, float) and not math.isfinite(value)):
            raise InvalidRequest(key, f"must be a number{self._range()}")
        if self.type is int and isinstance(value, float) and not value.is_integer():
            raise InvalidRequest(key, f"must be an integer{self._range()}")
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise InvalidRequest(key, f"must be{self._range()}")
        return int(value) if self.type is int else float(value)

    def _check_text(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidRequest(key, "must be a string")
        if len(value) > MAX_TEXT:
            raise InvalidRequest(key, f"is {len(value)} characters long; at most {MAX_TEXT} are accepted")
        if (problem := text_problem(value)) is not None:
            raise InvalidRequest(key, problem)
        if self.choices and value not in self.choices:
            raise InvalidRequest(key, f"must be one of {', '.join(self.choices)}")
        return value

    def _range(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f" from {self.minimum:g} to {self.maximum:g}"
        return f" of at least {self.minimum:g}" if self.minimum is not None else ""


SAVING, PATHS, DIRS = "Saving images/grids", "Paths for saving", "Saving to a directory"
SD, SAMPLERS, PREVIEWS = "Stable Diffusion", "Sampler parameters", "Live previews"
FORMATS = ("png", "jpg", "jpeg", "webp")
_PATTERN_HELP = "tags: [seed] [prompt_words] [model_name] [date] [datetime<%Y%m%d>] [steps] [cfg] ..."


# A1111's labels of its "Sampler parameters" settings (the rows themselves come from webui/parameters.py).
_SAMPLER_LABELS = {
    "eta_ancestral": "Eta for k-diffusion samplers (noise multiplier; ancestral and SDE samplers)",
    "s_churn": "sigma churn", "s_tmin": "sigma tmin", "s_tmax": "sigma tmax (0 = infinity)",
    "s_noise": "sigma noise", "sigma_min": "Custom sigma min (0 = the model's)",
    "sigma_max": "Custom sigma max (0 = the model's)", "rho": "Custom rho (Karras, Polyexponential)",
    "beta_dist_alpha": "Beta scheduler - alpha", "beta_dist_beta": "Beta scheduler - beta",
    "always_discard_next_to_last_sigma": "Always discard next-to-last sigma",
    "sgm_noise_multiplier": "SGM noise multiplier (match SDXL's original noise scaling)",
}


def _form_defaults() -> dict[str, Option]:
    """Options the generation forms start from, with their rows' defaults and bounds (webui/parameters.py)."""
    by_name = {p.name: p for p in PARAMS}
    common = dict(honoured=True, section="Defaults", restart="at the next page load")
    steps, cfg = by_name["steps"], by_name["cfg_scale"]
    return {
        "studio_default_sampler": Option(str, by_name["sampler_name"].default, choices=tuple(sampler_names()),
                                         label="Sampling method the forms start with", **common),
        "studio_default_scheduler": Option(str, by_name["scheduler"].default, choices=SCHEDULE_TYPES,
                                           label="Schedule type the forms start with (Automatic if the "
                                                 "sampler has no such schedule)", **common),
        "studio_default_steps": Option(int, steps.default, 1, steps.widget.maximum,
                                       label="Sampling steps the forms start with", **common),
        "studio_default_cfg_scale": Option(float, cfg.default, cfg.widget.minimum, cfg.widget.maximum,
                                           label="CFG scale the forms start with", **common),
    }


def _outdir(default: str, label: str) -> Option:
    return Option(str, default, honoured=True, label=label, section=PATHS, path=True)


OPTIONS: dict[str, Option] = {
    # Honoured by this server.
    "CLIP_stop_at_last_layers": Option(int, _CLIP_SKIP.default, _CLIP_SKIP.ge, _CLIP_SKIP.le, honoured=True,
                                       label="Clip skip (default for API jobs)", section=SD),
    "provenance_ai_marker": Option(bool, True, honoured=True),   # "AI-generated" marker in XMP and PNG text
    "provenance_watermark": Option(bool, True, honoured=True),   # invisible DWT-DCT watermark
    "provenance_c2pa": Option(bool, True, honoured=True),        # signed C2PA manifest
    "safety_checker": Option(bool, False, honoured=True),        # blur images a local classifier flags
    # A1111's saving options (webui/services/saving.py), read per job.
    "samples_save": Option(bool, True, honoured=True, label="Always save all generated images", section=SAVING),
    "samples_format": Option(str, "png", choices=FORMATS, honoured=True, label="File format for images",
                             section=SAVING),
    "samples_filename_pattern": Option(str, "", honoured=True, label=f"Images filename pattern ({_PATTERN_HELP})",
                                       section=SAVING),
    "save_images_add_number": Option(bool, True, honoured=True, label="Add number to filename when saving",
                                     section=SAVING),
    "grid_save": Option(bool, True, honoured=True, label="Always save all generated image grids", section=SAVING),
    "grid_format": Option(str, "png", choices=FORMATS, honoured=True, label="File format for grids",
                          section=SAVING),
    "grid_extended_filename": Option(bool, False, honoured=True, section=SAVING,
                                     label="Add extended info (seed, prompt) to filename when saving grid"),
    "grid_only_if_multiple": Option(bool, True, honoured=True, label="Do not save grids consisting of one picture",
                                    section=SAVING),
    "grid_prevent_empty_spots": Option(bool, False, honoured=True, section=SAVING,
                                       label="Prevent empty spots in grid (when set to autodetect)"),
    "n_rows": Option(int, -1, -1, 16, honoured=True, section=SAVING,
                     label="Grid row count; -1 for autodetect and 0 for it to be same as batch size"),
    "return_grid": Option(bool, True, honoured=True, label="Show grid in gallery (first)", section=SAVING),
    "save_txt": Option(bool, False, honoured=True, section=SAVING,
                       label="Create a text file next to every image with generation parameters"),
    "jpeg_quality": Option(int, 80, 1, 100, honoured=True, label="Quality for saved jpeg and webp images",
                           section=SAVING),
    "webp_lossless": Option(bool, False, honoured=True, label="Use lossless compression for webp images",
                            section=SAVING),
    "enable_pnginfo": Option(bool, True),
    "save_images_before_color_correction": Option(bool, False),
    "save_mask": Option(bool, False),
    "save_mask_composite": Option(bool, False),
    "export_for_4chan": Option(bool, False),  # A1111: True; no JPEG copy of large images is made here
    "img_downscale_threshold": Option(float, 4.0, 0, 1e6),
    "target_side_length": Option(int, 4000, 0, 100_000),
    "img_max_size_mp": Option(float, 200, 0, 1e6),
    "use_original_name_batch": Option(bool, True),
    "save_init_img": Option(bool, False),
    "save_incomplete_images": Option(bool, False),
    "grid_zip_filename_pattern": Option(str, ""),
    "font": Option(str, ""),
    "grid_text_active_color": Option(str, "#000000"),
    "grid_text_inactive_color": Option(str, "#999999"),
    "grid_background_color": Option(str, "#ffffff"),
    # Folders: relative to the data dir as A1111 writes them, always inside outputs/; Settings tab only.
    "outdir_samples": _outdir("", "Output directory for images; if empty, defaults to the folders below"),
    "outdir_txt2img_samples": _outdir("outputs/txt2img-images", "Output directory for txt2img images"),
    "outdir_img2img_samples": _outdir("outputs/img2img-images", "Output directory for img2img images"),
    "outdir_extras_samples": Option(str, "outputs/extras-images", path=True),
    "outdir_grids": _outdir("", "Output directory for grids; if empty, defaults to the folders below"),
    "outdir_txt2img_grids": _outdir("outputs/txt2img-grids", "Output directory for txt2img grids"),
    "outdir_img2img_grids": _outdir("outputs/img2img-grids", "Output directory for img2img grids"),
    # A1111's default is log/images, outside outputs/; here everything the server writes stays in outputs/.
    "outdir_save": Option(str, "outputs/save", path=True),
    "outdir_init_images": Option(str, "outputs/init-images", path=True),
    "save_to_dirs": Option(bool, True, honoured=True, label="Save images to a subdirectory", section=DIRS),
    "grid_save_to_dirs": Option(bool, True, honoured=True, label="Save grids to a subdirectory", section=DIRS),
    "use_save_to_dirs_for_ui": Option(bool, False),
    "directories_filename_pattern": Option(str, "[date]", honoured=True, label="Directory name pattern",
                                           section=DIRS),
    "directories_max_prompt_words": Option(int, 8, 1, 20, honoured=True, section=DIRS,
                                           label="Max prompt words for [prompt_words] pattern"),
    # A1111 names clients send (often the whole GET /options dict back): accepted at the value this server uses,
    # refused at any other, so nobody believes a setting took effect when it did not.
    "sd_vae": Option(str, "Automatic", honoured=True),  # which VAE file (the container checks it exists)
    "sd_unet": Option(str, "Automatic"),
    "eta_noise_seed_delta": Option(int, 0, 0, 2**32 - 1, honoured=True, section=SD,
                                   label="Eta noise seed delta (ENSD; default for API jobs)"),
    "eta_ddim": Option(float, 0.0, 0, 1),
    "randn_source": Option(str, "GPU", choices=RANDN_SOURCES, honoured=True, section=SD,
                           label="Random number generator source (default for API jobs)"),
    "token_merging_ratio": Option(float, 0.0, 0, 0.9),
    "token_merging_ratio_img2img": Option(float, 0.0, 0, 0.9),
    "token_merging_ratio_hr": Option(float, 0.0, 0, 0.9),
    # A1111 counts checkpoints cached in RAM; ours is sized in GiB (--ram-cache-gib), so a count is refused.
    "sd_checkpoint_cache": Option(int, 0, 0, 10),
    "sd_vae_checkpoint_cache": Option(int, 0, 0, 10),
    "sd_checkpoints_limit": Option(int, 1, 1, 10),
    "sd_checkpoints_keep_in_cpu": Option(bool, True),
    "sd_vae_overrides_per_model_preferences": Option(bool, True),
    "sd_vae_encode_method": Option(str, "Full", choices=("Full", "TAESD")),
    "sd_vae_decode_method": Option(str, "Full", choices=("Full", "TAESD")),
    "auto_vae_precision": Option(bool, True),
    "upcast_attn": Option(bool, False),
    "enable_quantization": Option(bool, False),
    "enable_emphasis": Option(bool, True),
    "emphasis": Option(str, "Original", choices=("Original", "No norm", "None")),
    "enable_batch_seeds": Option(bool, True),
    "comma_padding_backtrack": Option(int, 20, 0, 74),
    "tiling": Option(bool, False),
    "s_min_uncond": Option(float, 0.0, 0, 15),
    "pad_cond_uncond": Option(bool, False),
    "persistent_cond_cache": Option(bool, True),
    "batch_cond_uncond": Option(bool, True),
    "initial_noise_multiplier": Option(float, 1.0, 0, 1.5),
    "img2img_extra_noise": Option(float, 0.0, 0, 1),
    "img2img_background_color": Option(str, "#ffffff"),
    "inpainting_mask_weight": Option(float, 1.0, 0, 1),
    "ddim_discretize": Option(str, "uniform", choices=("uniform", "quad")),
    "sdxl_crop_top": Option(int, 0, 0, 16384),
    "sdxl_crop_left": Option(int, 0, 0, 16384),
    "sdxl_refiner_low_aesthetic_score": Option(float, 2.5, 0, 10),
    "sdxl_refiner_high_aesthetic_score": Option(float, 6.0, 0, 10),
    "img2img_color_correction": Option(bool, False),
    "img2img_fix_steps": Option(bool, False, honoured=True, section=SAMPLERS,
                                label="With img2img, do exactly the amount of steps the slider specifies"),
    "add_model_hash_to_info": Option(bool, True),
    "add_model_name_to_info": Option(bool, True),
    "add_vae_name_to_info": Option(bool, True),
    "add_vae_hash_to_info": Option(bool, True),
    "add_user_name_to_info": Option(bool, False),
    "add_version_to_infotext": Option(bool, True),
    "disable_weights_auto_swap": Option(bool, True),
    "infotext_styles": Option(str, "Apply if any", choices=("Ignore", "Apply", "Discard", "Apply if any")),
    "do_not_show_images": Option(bool, False),
    # Live previews (webui/services/live_preview.py, webui/pipelines/preview.py), read per job.
    "live_previews_enable": Option(bool, True, honoured=True, section=PREVIEWS, label="Show live previews of the image"),
    "show_progress_every_n_steps": Option(int, 10, -1, 32, honoured=True, section=PREVIEWS,
                                          label="Live preview every N sampling steps (-1: after each batch; 0: never)"),
    "live_previews_image_format": Option(str, "png", choices=("png", "jpeg", "webp")),
    "show_progress_grid": Option(bool, True),
    # A1111's "Approx NN" (a pickled network) is refused; TAESD reads models/VAE-approx
    # (webui/models/preview_decoders.py). Only the combined (CFG) prediction is shown.
    "show_progress_type": Option(str, APPROX_CHEAP, choices=PREVIEW_METHODS, honoured=True, section=PREVIEWS,
                                 label="Live preview method (Approx cheap: a linear latent map; TAESD: the tiny "
                                       "decoder in models/VAE-approx, taesd_decoder.safetensors or taesdxl_decoder."
                                       "safetensors from madebyollin/taesd, Approx cheap while they are missing; "
                                       "Full: a VAE decode, slow; Approx NN is not supported)"),
    "live_preview_content": Option(str, COMBINED, choices=PREVIEW_CONTENTS, honoured=True, section=PREVIEWS,
                                   label="Live preview subject"),
    "live_preview_refresh_period": Option(int, 1000, 0, 60_000),
    "live_preview_fast_interrupt": Option(bool, False),
    "live_preview_allow_lowvram_full": Option(bool, False),
    # UI options A1111 clients read (e.g. send_seed): this UI always behaves as their defaults.
    "send_seed": Option(bool, True),
    "send_size": Option(bool, True),
    "show_progressbar": Option(bool, True),
    "show_progress_in_title": Option(bool, True),
    "js_modal_lightbox": Option(bool, True),
    "js_modal_lightbox_initially_zoomed": Option(bool, True),
    "samplers_in_dropdown": Option(bool, True),
    "dimensions_and_batch_together": Option(bool, True),
    "keyedit_precision_attention": Option(float, 0.1, 0, 0.2),
    "keyedit_precision_extra": Option(float, 0.05, 0, 0.2),
    "disable_token_counters": Option(bool, False),
    "hires_fix_show_sampler": Option(bool, False),
    "hires_fix_show_prompts": Option(bool, False),
    "localization": Option(str, "None"),
    "gradio_theme": Option(str, "Default"),
    "samples_log_stdout": Option(bool, False),
    "multiple_tqdm": Option(bool, True),
    "memmon_poll_rate": Option(int, 8, 0, 40),
    "list_hidden_files": Option(bool, True),
    "disable_mmap_load_safetensors": Option(bool, False),
    "hide_ldm_prints": Option(bool, True),
    "show_warnings": Option(bool, False),
    # A1111's "Sampler parameters" (eta_ancestral, s_churn... sgm_noise_multiplier): honoured by txt2img's
    # k-diffusion samplers; type, bounds and default from their rows in webui/parameters.py.
    **{p.setting: Option(p.type, p.default, p.ge, p.le, honoured=True, section=SAMPLERS,
                         label=_SAMPLER_LABELS.get(p.setting, p.setting))
       for p in SAMPLER_OPTION_PARAMS},
    # UniPC is diffusers' here, run with A1111's defaults: those are accepted, any other value refused.
    "uni_pc_variant": Option(str, "bh1", choices=("bh1", "bh2", "vary_coeff")),
    "uni_pc_skip_type": Option(str, "time_uniform", choices=("time_uniform", "time_quadratic", "logSNR")),
    "uni_pc_order": Option(int, 3, 1, 50),
    "uni_pc_lower_order_final": Option(bool, True),
    # What the txt2img/img2img forms start from (webui/ui/form_defaults.py); the API keeps A1111's defaults.
    **_form_defaults(),
    # The --memory-profile of the next start when the flag is not given (webui/stored_options.py).
    MEMORY_PROFILE_KEY: Option(str, "auto", choices=MEMORY_PROFILES, honoured=True, section="Memory",
                               label="Memory profile: auto, 8gb, 4gb (VAE tiling, offload) or cpu",
                               restart="after a restart; the --memory-profile flag wins"),
    # A1111's "Save a copy of image before applying highres fix" (NNNNN-SEED-before-highres-fix.png).
    "save_images_before_highres_fix": Option(bool, False, honoured=True, section=SAVING,
                                             label="Save a copy of image before applying highres fix"),
    # A1111's upscaler tiling (webui/pipelines/upscale.py), in input pixels; tile 0 = the whole image at once.
    "ESRGAN_tile": Option(int, 192, 0, 512, honoured=True, section="Upscaling",
                          label="Tile size for upscaler models (0 = no tiling)"),
    "ESRGAN_tile_overlap": Option(int, 8, 0, 48, honoured=True, section="Upscaling",
                                  label="Tile overlap for upscaler models, in pixels"),
    # The UI asks before starting a job estimated to take longer (webui/services/job_estimate.py); 0: never asks.
    "confirm_long_jobs_seconds": Option(int, 600, 0, 30 * 24 * 3600, honoured=True, section="Confirmations",
                                        label="Ask before starting a job estimated to take longer than this many "
                                              "seconds (0: never ask)"),
}
DEFAULTS: dict[str, Any] = {key: option.default for key, option in OPTIONS.items()}


def _key_label(key: Any) -> str:
    """A key as it may be quoted back: bounded in length, unencodable characters escaped."""
    text = safe_label(str(key))
    return text if len(text) <= 64 else text[:64] + "…"


class OptionsService:
    def __init__(self, config_file: Path, manager: ModelManager,
                 requirements: dict[str, Callable[[Any], str | None]] | None = None,
                 switch: Callable[[str], Any] | None = None, outputs_dir: Path | None = None):
        """``switch(title)`` queues a checkpoint switch and returns its job (CheckpointService.submit_switch).
        ``outputs_dir``: where folder options must lead (checked through symbolic links when set)."""
        self._file = config_file
        self._outputs_dir = outputs_dir
        self._manager = manager
        self._switch = switch
        # Per key: what a value needs that is not in its type (e.g. the safety checker's weights); None = met.
        self._requirements = requirements or {}
        self._lock = threading.Lock()
        self._values = {**DEFAULTS, **self._read()}

    def _read(self) -> dict[str, Any]:
        """The stored options that are still valid; a hand-edited or older file never stops the server."""
        try:
            data = json.loads(self._file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("Ignoring %s: %s", self._file, exc)
            return {}
        if not isinstance(data, dict):
            log.warning("Ignoring %s: not a JSON object", self._file)
            return {}
        kept: dict[str, Any] = {}
        for key, value in data.items():
            if key == CHECKPOINT_KEY:
                # Kept as written (so rewriting the file preserves it); the model manager decides which
                # checkpoint is selected, and get_all() reports that.
                if isinstance(value, str) and len(value) <= 1024 and text_problem(value) is None:
                    kept[key] = value
                continue
            option = OPTIONS.get(key)
            try:
                if option is None:
                    raise InvalidRequest(_key_label(key), "unknown option")
                kept[key] = option.check(key, value)
            except InvalidRequest as exc:
                log.warning("Dropping option from %s: %s", self._file, exc)
        return kept

    def get_all(self) -> dict[str, Any]:
        selected = self._manager.selected
        with self._lock:
            values = dict(self._values)
        values[CHECKPOINT_KEY] = selected.title if selected else None
        return values

    def value(self, key: str) -> Any:
        """One option's current value (its default until set); KeyError for a name not in ``OPTIONS``."""
        default = OPTIONS[key].default
        with self._lock:
            return self._values.get(key, default)

    def check_overrides(self, overrides: dict[str, Any], per_request: frozenset[str]) -> None:
        """A1111's ``override_settings``: the keys in ``per_request`` are applied by the caller; any other key is
        accepted only at its current value (it changes nothing), so no override is silently ignored."""
        for key, value in overrides.items():
            if key in per_request:
                continue
            field = f"override_settings.{_key_label(key)}"
            option = OPTIONS.get(key)
            if option is None:
                raise InvalidRequest(field, "unknown option")
            if option._typed(field, value) != self.value(key):
                raise InvalidRequest(field, "cannot be changed per request on this server yet; "
                                            f"send {self.value(key)!r} or leave it out")

    @property
    def clip_skip(self) -> int:
        return int(self.value("CLIP_stop_at_last_layers"))

    def _checked(self, key: str, value: Any, allow_paths: bool) -> Any:
        """The value to store for one key, or InvalidRequest naming it."""
        option = OPTIONS.get(key)
        if option is None:
            raise InvalidRequest(_key_label(key), "unknown option. This server accepts: "
                                                  f"{', '.join([CHECKPOINT_KEY, *OPTIONS])}")
        if option.path and not allow_paths and option._typed(key, value) != self.value(key):
            raise InvalidRequest(key, "is a folder on the server and cannot be set over the API; "
                                      "set it in the Settings tab")
        checked = option.check(key, value)
        if option.path and self._outputs_dir is not None and checked != self.value(key):
            resolve_outdir(key, checked, self._outputs_dir)  # no link leading out of outputs/
        unmet = self._requirements.get(key, lambda _value: None)(checked)
        if unmet:
            raise InvalidRequest(key, unmet)
        return checked

    def problems(self, changes: dict[str, Any], *, allow_paths: bool = False) -> list[str]:
        """Every key's problem at once (the Settings tab shows them all), without changing anything."""
        found = []
        for key, value in changes.items():
            try:
                self._checked(key, value, allow_paths)
            except InvalidRequest as exc:
                found.append(str(exc))
        return found

    def update(self, changes: dict[str, Any], *, allow_paths: bool = False) -> Any:
        """Apply options, all or none: every key is checked before anything changes. A model switch is queued as
        a job (an unknown name is refused first, with nothing changed) and returned, so the caller can wait for
        it and report a file that does not load; None when no switch was asked for.

        Folder options (``outdir_*``) change only with ``allow_paths`` (the Settings tab, never the API: a remote
        client must not choose where the server writes); posting back their current value is accepted."""
        if not isinstance(changes, dict):
            raise InvalidRequest("body", "expected a JSON object of option names to values")
        checked: dict[str, Any] = {}
        checkpoint = None
        for key, value in changes.items():
            if key == CHECKPOINT_KEY:
                if value is not None and not (isinstance(value, str) and text_problem(value) is None
                                              and len(value) <= 1024):
                    raise InvalidRequest(CHECKPOINT_KEY, "must be a checkpoint title")
                checkpoint = value
                continue
            checked[key] = self._checked(key, value, allow_paths)
        job = None
        if checkpoint is not None:
            if self._switch is None:
                raise InvalidRequest(CHECKPOINT_KEY, "this server cannot switch checkpoints")
            job = self._switch(checkpoint)
        if checked:
            with self._lock:
                self._values.update(checked)
                try:
                    atomic_write_text(self._file, json.dumps(self._values, indent=1))
                except OSError as exc:  # a full or read-only disk: the options still apply until restart
                    log.warning("Could not save options to %s: %s", self._file, exc)
        return job
