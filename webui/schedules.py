"""A1111 1.10's noise schedules: the sigma sequence each schedule type gives for a model and a step count.

A1111 samples with k-diffusion over the model's 1000 discrete noise levels
(sigma_t = sqrt((1 - alphas_cumprod_t) / alphas_cumprod_t)); its schedule types (modules/sd_schedulers.py)
pick ``steps`` of them, or continuous values between the model's sigma_min and sigma_max, and end with 0
(KL Optimal ends at sigma_min, as in A1111). The functions here reproduce those numbers, float32 as A1111
computes them, so the same infotext gives the same noise levels. Imported lazily (it needs torch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["DiscreteSigmas", "ScheduleOptions", "alphas_cumprod_from_config", "schedule_sigmas"]

# Align Your Steps (NVIDIA's published 10-step schedules, as A1111 ships them).
_AYS_SD = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
_AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)
# A1111's option defaults: rho for Karras / Polyexponential, alpha and beta of the Beta schedule.
KARRAS_RHO = 7.0
POLYEXPONENTIAL_RHO = 1.0
BETA_ALPHA = 0.6
BETA_BETA = 0.6
DEFAULT_RHO = {"Karras": KARRAS_RHO, "Polyexponential": POLYEXPONENTIAL_RHO}  # the schedules that take a rho
# Schedules A1111 computes with a function of its own; "Automatic" (the model's plain schedule) takes no overrides.
_OVERRIDABLE = frozenset({"Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                          "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"})


@dataclass(frozen=True)
class ScheduleOptions:
    """A1111's schedule options ``sigma_min``, ``sigma_max``, ``rho`` (0: the model's / schedule's default) and
    ``beta_dist_alpha`` / ``beta_dist_beta`` (the Beta schedule's distribution)."""

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    beta_alpha: float = BETA_ALPHA
    beta_beta: float = BETA_BETA

    def applied(self, schedule: str, model: DiscreteSigmas) -> dict[str, float]:
        """The overrides A1111 applies (and records) for ``schedule`` on ``model``, by their infotext meaning."""
        if schedule not in _OVERRIDABLE:
            return {}
        applied = {}
        if self.sigma_min and self.sigma_min != model.sigma_min:
            applied["sigma_min"] = self.sigma_min
        if self.sigma_max and self.sigma_max != model.sigma_max:
            applied["sigma_max"] = self.sigma_max
        if schedule in DEFAULT_RHO and self.rho and self.rho != DEFAULT_RHO[schedule]:
            applied["rho"] = self.rho
        return applied


def alphas_cumprod_from_config(config: Mapping[str, Any]) -> torch.Tensor:
    """The model's cumulative alphas, computed in float64 and stored float32 as LDM (and so A1111) does."""
    n = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    kind = config.get("beta_schedule", "scaled_linear")
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
    elif kind == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    else:
        raise ValueError(f"beta_schedule {kind!r} is not supported by the k-diffusion samplers")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


class DiscreteSigmas:
    """The model's discrete noise levels and k-diffusion's (unquantized) maps between sigma and timestep."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Interpolates in log sigma between the two neighbouring discrete levels."""
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The (fractional) timestep whose interpolated sigma is ``sigma``; what the UNet is called with."""
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        w = ((self.log_sigmas[low] - log_sigma) / (self.log_sigmas[low] - self.log_sigmas[high])).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def uniform(self, n: int) -> torch.Tensor:
        """k-diffusion's ``get_sigmas(n)``: timesteps spaced linearly from the last to 0 ("Automatic")."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return _append_zero(self.t_to_sigma(t))


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _karras(n: int, lo: float, hi: float, rho: float = KARRAS_RHO) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    lo_inv, hi_inv = lo ** (1 / rho), hi ** (1 / rho)
    return _append_zero((hi_inv + ramp * (lo_inv - hi_inv)) ** rho)


def _exponential(n: int, lo: float, hi: float) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(hi), math.log(lo), n).exp())


def _polyexponential(n: int, lo: float, hi: float, rho: float = POLYEXPONENTIAL_RHO) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(hi) - math.log(lo)) + math.log(lo)))


def _timestep_spaced(model: DiscreteSigmas, n: int, lo: float, hi: float, sgm: bool) -> torch.Tensor:
    """"Normal" (n timesteps from sigma_max's to sigma_min's) and "SGM Uniform" (n + 1 of them, last dropped)."""
    start, end = model.sigma_to_t(torch.tensor(hi)), model.sigma_to_t(torch.tensor(lo))
    timesteps = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    return torch.FloatTensor([float(model.t_to_sigma(t)) for t in timesteps] + [0.0])


def _kl_optimal(n: int, lo: float, hi: float) -> torch.Tensor:
    alpha_min, alpha_max = torch.arctan(torch.tensor(lo)), torch.arctan(torch.tensor(hi))
    i = torch.arange(n + 1)
    return torch.tan(i / n * alpha_min + (1.0 - i / n) * alpha_max)


def _align_your_steps(n: int, sdxl: bool) -> torch.Tensor:
    published = list(_AYS_SDXL if sdxl else _AYS_SD)
    if n == len(published):
        return torch.FloatTensor([*published, 0.0])
    # Log-linear interpolation of the published (decreasing) levels to n points.
    xs = np.linspace(0, 1, len(published))
    ys = np.log(published[::-1])
    interpolated = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return torch.FloatTensor(np.append(interpolated, [0.0]))


def _simple(model: DiscreteSigmas, n: int) -> torch.Tensor:
    stride = len(model.sigmas) / n
    return torch.FloatTensor([float(model.sigmas[-(1 + int(x * stride))]) for x in range(n)] + [0.0])


def _ddim(model: DiscreteSigmas, n: int) -> torch.Tensor:
    """Every (1000 // n)-th level from index 1; like A1111 this can give a step or so more than asked."""
    stride = max(len(model.sigmas) // n, 1)
    picked = [float(model.sigmas[x]) for x in range(1, len(model.sigmas), stride)]
    return torch.FloatTensor(picked[::-1] + [0.0])


def _beta(n: int, lo: float, hi: float, alpha: float = BETA_ALPHA, beta: float = BETA_BETA) -> torch.Tensor:
    from scipy import stats  # lazy: only this schedule needs scipy

    fractions = [stats.beta.ppf(x, alpha, beta) for x in 1 - np.linspace(0, 1, n)]
    return torch.FloatTensor([lo + x * (hi - lo) for x in fractions] + [0.0])


def schedule_sigmas(schedule: str, steps: int, model: DiscreteSigmas, *, sdxl: bool = False,
                    discard_penultimate: bool = False, options: ScheduleOptions | None = None) -> torch.Tensor:
    """A1111's sigma sequence (ending 0, or sigma_min for KL Optimal) for a schedule label and step count.

    ``schedule`` is a label of webui.samplers.SCHEDULE_TYPES with "Automatic" already resolved ("Automatic"
    itself means the model's uniform schedule). ``discard_penultimate`` is A1111's option for DPM2, DPM2 a and
    DPM++ 3M SDE: one more step is computed and the next-to-last sigma dropped. ``options``: A1111's sigma
    min/max and rho overrides and the Beta schedule's alpha and beta.
    """
    options = options or ScheduleOptions()
    applied = options.applied(schedule, model)
    n = steps + 1 if discard_penultimate else steps
    lo, hi = applied.get("sigma_min", model.sigma_min), applied.get("sigma_max", model.sigma_max)
    rho = applied.get("rho", DEFAULT_RHO.get(schedule, 0.0))
    builders = {
        "Automatic": lambda: model.uniform(n),
        "Uniform": lambda: model.uniform(n),
        "Karras": lambda: _karras(n, lo, hi, rho),
        "Exponential": lambda: _exponential(n, lo, hi),
        "Polyexponential": lambda: _polyexponential(n, lo, hi, rho),
        "SGM Uniform": lambda: _timestep_spaced(model, n, lo, hi, sgm=True),
        "KL Optimal": lambda: _kl_optimal(n, lo, hi),
        "Align Your Steps": lambda: _align_your_steps(n, sdxl),
        "Simple": lambda: _simple(model, n),
        "Normal": lambda: _timestep_spaced(model, n, lo, hi, sgm=False),
        "DDIM": lambda: _ddim(model, n),
        "Beta": lambda: _beta(n, lo, hi, options.beta_alpha, options.beta_beta),
    }
    if schedule not in builders:
        raise ValueError(f"Unknown schedule type {schedule!r}")
    sigmas = builders[schedule]()
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas
