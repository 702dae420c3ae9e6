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

    def check(self, key: str, value: Any) -> Any:
        """The value to store, or InvalidRequest naming ``key``."""
        value = self._typed(key, value)
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


OPTIONS: dict[str, Option] = {
    # Honoured by this server.
    "CLIP_stop_at_last_layers": Option(int, _CLIP_SKIP.default, _CLIP_SKIP.ge, _CLIP_SKIP.le, honoured=True),
    "provenance_ai_marker": Option(bool, True, honoured=True),   # "AI-generated" marker in XMP and PNG text
    "provenance_watermark": Option(bool, True, honoured=True),   # invisible DWT-DCT watermark
    "provenance_c2pa": Option(bool, True, honoured=True),        # signed C2PA manifest
    "safety_checker": Option(bool, False, honoured=True),        # blur images a local classifier flags
    # A1111 names clients send (often the whole GET /options dict back): accepted at the value this server uses,
    # refused at any other, so nobody believes a setting took effect when it did not.
    "samples_save": Option(bool, True),
    "samples_format": Option(str, "png", choices=("png", "jpg", "jpeg", "webp")),
    "sd_vae": Option(str, "Automatic", honoured=True),  # which VAE file (the container checks it exists)
    "sd_unet": Option(str, "Automatic"),
    "eta_noise_seed_delta": Option(int, 0, 0, 2**32 - 1, honoured=True),  # the default of the request field
    "eta_ddim": Option(float, 0.0, 0, 1),
    "randn_source": Option(str, "GPU", choices=RANDN_SOURCES, honoured=True),  # webui/pipelines/noise.py
    "token_merging_ratio": Option(float, 0.0, 0, 0.9),
    "sd_checkpoint_cache": Option(int, 0, 0, 10),
    "sd_vae_checkpoint_cache": Option(int, 0, 0, 10),
    "save_to_dirs": Option(bool, True),
    "grid_save": Option(bool, True),
    "return_grid": Option(bool, True),
    "enable_pnginfo": Option(bool, True),
    "jpeg_quality": Option(int, 80, 1, 100),
    "webp_lossless": Option(bool, False),
    "live_previews_enable": Option(bool, True, honoured=True),  # webui/services/live_preview.py
    "show_progress_every_n_steps": Option(int, 10, -1, 32, honoured=True),  # -1: after each batch; 0: never
    "img2img_color_correction": Option(bool, False),
    "img2img_fix_steps": Option(bool, False, honoured=True),
    "add_model_hash_to_info": Option(bool, True),
    "add_model_name_to_info": Option(bool, True),
    "do_not_show_images": Option(bool, False),
    # A1111's "Sampler parameters" (eta_ancestral, s_churn... sgm_noise_multiplier): honoured by txt2img's
    # k-diffusion samplers; type, bounds and default from their rows in webui/parameters.py.
    **{p.setting: Option(p.type, p.default, p.ge, p.le, honoured=True) for p in SAMPLER_OPTION_PARAMS},
    # UniPC is diffusers' here, run with A1111's defaults: those are accepted, any other value refused.
    "uni_pc_variant": Option(str, "bh1", choices=("bh1", "bh2", "vary_coeff")),
    "uni_pc_skip_type": Option(str, "time_uniform", choices=("time_uniform", "time_quadratic", "logSNR")),
    "uni_pc_order": Option(int, 3, 1, 50),
    "uni_pc_lower_order_final": Option(bool, True),
    # A1111's "Save a copy of image before applying highres fix" (NNNNN-SEED-before-highres-fix.png).
    "save_images_before_highres_fix": Option(bool, False, honoured=True),
    # The live preview (webui/pipelines/preview.py): A1111's "Approx NN" and "TAESD" need networks this server
    # does not ship, and only the combined (CFG) prediction is shown, so those choices are refused.
    "show_progress_type": Option(str, APPROX_CHEAP, choices=PREVIEW_METHODS, honoured=True),
    "live_preview_content": Option(str, COMBINED, choices=PREVIEW_CONTENTS, honoured=True),
    # The UI asks before starting a job estimated to take longer (webui/services/job_estimate.py); 0: never asks.
    "confirm_long_jobs_seconds": Option(int, 600, 0, 30 * 24 * 3600, honoured=True),
}
DEFAULTS: dict[str, Any] = {key: option.default for key, option in OPTIONS.items()}


def _key_label(key: Any) -> str:
    """A key as it may be quoted back: bounded in length, unencodable characters escaped."""
    text = safe_label(str(key))
    return text if len(text) <= 64 else text[:64] + "…"


class OptionsService:
    def __init__(self, config_file: Path, manager: ModelManager,
                 requirements: dict[str, Callable[[Any], str | None]] | None = None,
                 switch: Callable[[str], Any] | None = None):
        """``switch(title)`` queues a checkpoint switch and returns its job (CheckpointService.submit_switch)."""
        self._file = config_file
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

    def update(self, changes: dict[str, Any]) -> Any:
        """Apply options, all or none: every key is checked before anything changes. A model switch is queued as
        a job (an unknown name is refused first, with nothing changed) and returned, so the caller can wait for
        it and report a file that does not load; None when no switch was asked for."""
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
            option = OPTIONS.get(key)
            if option is None:
                raise InvalidRequest(_key_label(key), "unknown option. This server accepts: "
                                                      f"{', '.join([CHECKPOINT_KEY, *OPTIONS])}")
            checked[key] = option.check(key, value)
            unmet = self._requirements.get(key, lambda _value: None)(checked[key])
            if unmet:
                raise InvalidRequest(key, unmet)
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
