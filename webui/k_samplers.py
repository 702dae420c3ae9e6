"""A1111's k-diffusion samplers, step for step, behind diffusers' scheduler interface.

diffusers' Karras-style schedulers cannot take an arbitrary sigma sequence (in diffusers 0.42 only Euler and
UniPC accept ``sigmas=``), so A1111's schedules could not be reproduced with them. Here each sampler is
written once as a Python generator that follows k-diffusion's algorithm: it yields
``(x, sigma, starts_a_step)`` where it needs the denoiser and receives the denoised latents back.
:class:`KDiffusionScheduler` drives it from the pipeline's ordinary loop (``scale_model_input`` -> UNet ->
``step``), turning the UNet's eps (or v) output into denoised latents the way k-diffusion's CompVis
denoisers do, and calling the UNet at the fractional timestep of each sigma.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from types import MappingProxyType

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from webui.schedules import DiscreteSigmas, ScheduleOptions, alphas_cumprod_from_config, schedule_sigmas

__all__ = ["ALGORITHMS", "BrownianNoise", "ImageStart", "KDiffusionScheduler", "SamplerOptions", "img2img_steps"]

Noise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StepNoise(Protocol):
    def next(self, like: torch.Tensor) -> torch.Tensor: ...


# Yields (x, sigma, starts_a_step) where the denoiser is needed, receives the denoised x, returns the final x.
Sampler = Generator[tuple[torch.Tensor, torch.Tensor, bool], torch.Tensor, torch.Tensor]
ETA = 1.0  # A1111's "Eta for ancestral samplers" default; also the SDE samplers' eta
S_NOISE = 1.0
_CHURN_CAP = 2 ** 0.5 - 1  # k-diffusion's cap on gamma


@dataclass(frozen=True)
class SamplerOptions:
    """A1111's "Sampler parameters" options, as its samplers take them (defaults: A1111's).

    Which algorithm takes which is ``Algorithm.takes`` (A1111's ``sampler_extra_params`` plus ``eta`` where the
    k-diffusion function has one); the rest shape the schedule or the starting noise.
    """

    eta: float = ETA
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = S_NOISE
    schedule: ScheduleOptions = ScheduleOptions()
    always_discard_penultimate_sigma: bool = False
    sgm_noise_multiplier: bool = False  # start from noise * sqrt(1 + sigma_max**2), as SGM's (SDXL's) code


CHURN = frozenset({"s_churn", "s_tmin", "s_tmax", "s_noise"})


def _to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def _ancestral_step(sigma_from, sigma_to, eta=ETA):
    """Noise level to step down to, and noise to add back (k-diffusion's get_ancestral_step)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    return (sigma_to ** 2 - sigma_up ** 2) ** 0.5, sigma_up


def _sigma_fn(t):
    return t.neg().exp()


def _t_fn(sigma):
    return sigma.log().neg()


def _churn(x, sigmas, i, noise: Noise, s_churn, s_tmin, s_tmax, s_noise):
    """k-diffusion's stochastic churn before step ``i``: the raised sigma, and x with the matching noise added.

    k-diffusion draws the noise on every step whenever it runs these samplers; A1111 feeds that draw from the
    image's stream, so it is drawn here on every step too (when churn is on at all), to keep the streams aligned.
    """
    if not s_churn:
        return x, sigmas[i]
    gamma = min(s_churn / (len(sigmas) - 1), _CHURN_CAP) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    eps = noise(sigmas[i], sigmas[i]) * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def euler(x, sigmas, noise: Noise, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=S_NOISE) -> Sampler:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = yield x, sigma_hat, True
        x = x + _to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


def euler_ancestral(x, sigmas, noise: Noise, eta=ETA, s_noise=S_NOISE) -> Sampler:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i], True
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def heun(x, sigmas, noise: Noise, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=S_NOISE) -> Sampler:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = yield x, sigma_hat, True
        d = _to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = yield x_2, sigmas[i + 1], False
            x = x + (d + _to_d(x_2, sigmas[i + 1], denoised_2)) / 2 * dt
    return x


def dpm_2(x, sigmas, noise: Noise, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=S_NOISE) -> Sampler:
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = yield x, sigma_hat, True
        d = _to_d(x, sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            denoised_2 = yield x_2, sigma_mid, False
            x = x + _to_d(x_2, sigma_mid, denoised_2) * (sigmas[i + 1] - sigma_hat)
    return x


def dpm_2_ancestral(x, sigmas, noise: Noise, eta=ETA, s_noise=S_NOISE) -> Sampler:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i], True
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = _to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            denoised_2 = yield x_2, sigma_mid, False
            x = x + _to_d(x_2, sigma_mid, denoised_2) * (sigma_down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _lms_coefficient(order: int, t: Sequence[float], i: int, j: int) -> float:
    from scipy import integrate  # lazy: only LMS needs scipy

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


def lms(x, sigmas, noise: Noise, order: int = 4) -> Sampler:
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i], True
        ds.append(_to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [_lms_coefficient(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def dpmpp_2s_ancestral(x, sigmas, noise: Noise, eta=ETA, s_noise=S_NOISE) -> Sampler:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i], True
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = yield x_2, _sigma_fn(s), False
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def dpmpp_sde(x, sigmas, noise: Noise, eta=ETA, s_noise=S_NOISE, r: float = 1 / 2) -> Sampler:
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i], True
        if sigmas[i + 1] == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = _ancestral_step(_sigma_fn(t), _sigma_fn(s), eta)
        s_ = _t_fn(sd)
        x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(_sigma_fn(t), _sigma_fn(s)) * s_noise * su
        denoised_2 = yield x_2, _sigma_fn(s), False
        sd, su = _ancestral_step(_sigma_fn(t), _sigma_fn(t_next), eta)
        t_next_ = _t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise(_sigma_fn(t), _sigma_fn(t_next)) * s_noise * su
    return x


def dpmpp_2m(x, sigmas, noise: Noise) -> Sampler:
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i], True
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t_fn(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def _dpmpp_2m_sde(x, sigmas, noise: Noise, heun_solver: bool, eta=ETA, s_noise=S_NOISE) -> Sampler:
    old_denoised = h_last = h = None
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i], True
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if heun_solver:
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


def dpmpp_2m_sde(x, sigmas, noise: Noise, eta=ETA, s_noise=S_NOISE) -> Sampler:
    return (yield from _dpmpp_2m_sde(x, sigmas, noise, False, eta, s_noise))


def dpmpp_2m_sde_heun(x, sigmas, noise: Noise, eta=ETA, s_noise=S_NOISE) -> Sampler:
    return (yield from _dpmpp_2m_sde(x, sigmas, noise, True, eta, s_noise))


def dpmpp_3m_sde(x, sigmas, noise: Noise, eta=ETA, s_noise=S_NOISE) -> Sampler:
    denoised_1 = denoised_2 = h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i], True
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@dataclass(frozen=True)
class Algorithm:
    run: Callable[..., Sampler]
    brownian: bool = False  # noise from a Brownian tree seeded per image (A1111's "brownian_noise")
    takes: frozenset[str] = frozenset()  # the SamplerOptions A1111 passes it (sampler_extra_params, eta)

    def kwargs(self, options: SamplerOptions) -> dict[str, float]:
        return {name: getattr(options, name) for name in self.takes}


_ETA_NOISE = frozenset({"eta", "s_noise"})
ALGORITHMS: Mapping[str, Algorithm] = MappingProxyType({
    "euler": Algorithm(euler, takes=CHURN),
    "euler_ancestral": Algorithm(euler_ancestral, takes=frozenset({"eta"})),  # A1111 passes it no s_noise
    "heun": Algorithm(heun, takes=CHURN),
    "dpm_2": Algorithm(dpm_2, takes=CHURN),
    "dpm_2_ancestral": Algorithm(dpm_2_ancestral, takes=_ETA_NOISE),
    "lms": Algorithm(lms),
    "dpmpp_2s_ancestral": Algorithm(dpmpp_2s_ancestral, takes=_ETA_NOISE),
    "dpmpp_2m": Algorithm(dpmpp_2m),
    "dpmpp_sde": Algorithm(dpmpp_sde, brownian=True, takes=_ETA_NOISE),
    "dpmpp_2m_sde": Algorithm(dpmpp_2m_sde, brownian=True, takes=_ETA_NOISE),
    "dpmpp_2m_sde_heun": Algorithm(dpmpp_2m_sde_heun, brownian=True, takes=_ETA_NOISE),
    "dpmpp_3m_sde": Algorithm(dpmpp_3m_sde, brownian=True, takes=_ETA_NOISE),
})


class BrownianNoise:
    """Brownian-tree noise, one tree per image seeded with its seed, as A1111 gives the SDE samplers.

    Batch-independent: image k of a batch gets the same noise as a single run with its seed.
    """

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: Sequence[int]):
        import torchsde  # lazy: only the SDE samplers need it

        positive = sigmas[sigmas > 0]
        self._t0, self._t1 = positive.min(), sigmas.max()
        self._dtype = x.dtype
        # float32 even for fp16 latents: the same numbers as A1111's float32 trees, and torchsde's
        # interval arithmetic is not meant for half precision.
        w0 = torch.zeros_like(x[0], dtype=torch.float32)
        self._trees = [torchsde.BrownianTree(self._t0, w0, self._t1, entropy=seed) for seed in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w = torch.stack([tree(lo, hi) for tree in self._trees]) * sign
        return (w / (t1 - t0).abs().sqrt()).to(self._dtype)


def img2img_steps(steps: int, denoising_strength: float, fixed_steps: bool) -> tuple[int, int]:
    """(length of the schedule, t_enc) for sampling from an image, as A1111's ``setup_img2img_steps``.

    By default the schedule is the one for ``steps`` and its last ``t_enc + 1`` steps run (t_enc =
    int(strength * steps)). With ``fixed_steps`` (A1111's ``img2img_fix_steps`` option, and always in the hires
    pass) the schedule is stretched to ``int(steps / strength)`` so that exactly ``steps`` steps run.
    """
    strength = min(denoising_strength, 0.999)
    if fixed_steps:
        return (int(steps / strength) if denoising_strength > 0 else 0), steps - 1
    return steps, int(strength * steps)


@dataclass(frozen=True)
class ImageStart:
    """What A1111's ``sample_img2img`` starts from: init latents, its own noise for them, the strength.

    ``generators`` (one per image) continue the noise's stream for the ancestral samplers' step noise, as
    A1111's image RNG does; the pipeline's own ``generator`` is not used, since diffusers draws (and discards)
    a noise tensor from it before sampling: give the pipeline other generator objects than these.
    """

    latents: torch.Tensor
    noise: torch.Tensor
    denoising_strength: float
    fixed_steps: bool = False
    generators: Sequence[torch.Generator] | None = None
    # Inpainting: 1 where the original is kept. As A1111's CFG denoiser, every denoised prediction (and the result)
    # takes the init latents there, so only the masked area is sampled.
    keep_mask: torch.Tensor | None = None

    def first_latents(self, sigma: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``latents + noise * sigma`` in float32: where A1111's img2img sampling starts."""
        return self.latents.to(device, torch.float32) + self.noise.to(device, torch.float32) * sigma.to(device)

    def blend(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep_mask is None:
            return x
        keep = self.keep_mask.to(x.device, x.dtype)
        return x * (1 - keep) + self.latents.to(x.device, x.dtype) * keep


def _generator_noise(generator) -> Noise:
    """Ancestral noise: each image's next normal sample from its own generator (same as a single run)."""
    def draw(_sigma, _sigma_next, *, like: torch.Tensor) -> torch.Tensor:
        gens = generator if isinstance(generator, list) else [generator] * like.shape[0]
        shape = (1, *like.shape[1:])
        parts = [torch.randn(shape, generator=g, dtype=torch.float32,
                             device=g.device if g is not None else like.device) for g in gens]
        return torch.cat(parts).to(like.device, like.dtype)
    return draw


class KDiffusionScheduler(SchedulerMixin, ConfigMixin):
    """One A1111 k-diffusion sampler over an A1111 schedule, as a diffusers scheduler.

    ``timesteps`` lists one (fractional) timestep per UNet call, so second-order samplers have more entries
    than steps, as diffusers' own Heun does. ``noise_sampler_seed`` (one seed per image) must be set for the
    SDE samplers to reproduce A1111; without it their noise is random. ``step_noise`` (an object whose
    ``next(like)`` returns one normal draw per image, e.g. webui/pipelines/noise.ImageNoise) is where the other
    samplers' noise comes from, as A1111's ``rng.next()``; without it, from the generators ``step`` is given.
    """

    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", trained_betas=None, prediction_type: str = "epsilon",
                 algorithm: str = "euler", schedule: str = "Automatic", discard_penultimate_sigma: bool = False,
                 sdxl: bool = False):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"Unknown k-diffusion algorithm {algorithm!r}")
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type {prediction_type!r} is not supported by the k-diffusion samplers")
        self.model_sigmas = DiscreteSigmas(alphas_cumprod_from_config(self.config))
        self.noise_sampler_seed: list[int] | None = None
        self.image_start: ImageStart | None = None  # set by start_from_image: sample from an image (img2img)
        self.step_noise: StepNoise | None = None
        self.options = SamplerOptions()  # set before the pipeline runs; read by set_timesteps and the sampler
        self.sigmas: torch.Tensor | None = None
        self.noise_sigmas: torch.Tensor | None = None  # the whole schedule, which the Brownian tree spans
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._calls: list[torch.Tensor] = []
        self.step_of_call: list[int] = []
        self._reset()

    def _reset(self) -> None:
        self._run: Sampler | None = None
        self._generator = None
        self._step_index = 0
        self._pending: tuple[torch.Tensor, torch.Tensor, bool] | None = None
        # The last denoised prediction (after CFG): A1111's live preview "Combined", and what a stopped batch
        # returns (A1111's last_latent).
        self.denoised: torch.Tensor | None = None

    # ------------------------------------------------------------------ diffusers' scheduler interface

    @property
    def init_noise_sigma(self) -> float:
        """k-diffusion starts from noise * sigmas[0] (A1111's SGM noise multiplier: sqrt(1 + sigmas[0]**2))."""
        sigma = self.sigmas[0] if self.sigmas is not None else torch.tensor(self.model_sigmas.sigma_max)
        return float(torch.sqrt(1.0 + sigma ** 2.0)) if self.options.sgm_noise_multiplier else float(sigma)

    @property
    def step_index(self) -> int:
        return self._step_index

    @property
    def begin_index(self) -> int:
        return 0

    def set_begin_index(self, begin_index: int = 0) -> None:
        if begin_index:
            raise ValueError("The k-diffusion schedulers slice the schedule themselves (start_from_image); "
                             "run diffusers' img2img pipelines with strength=1.0")

    def start_from_image(self, start: ImageStart) -> None:
        """Sample from an image as A1111's ``KDiffusionSampler.sample_img2img``: call before the pipeline.

        ``set_timesteps(steps)`` then keeps the tail ``sigmas[schedule - t_enc - 1:]`` of A1111's schedule (see
        :func:`img2img_steps`), and ``add_noise`` starts from ``latents + noise * that tail's first sigma``. Run a
        diffusers img2img pipeline with ``strength=1.0`` and the latents as ``image``: it then takes every
        timestep given here, and the ``t_enc + 1`` steps that run are A1111's.
        """
        self.image_start = start

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """A1111's img2img start ``x + noise * sigma_sched[0]``, with the noise of :meth:`start_from_image`
        (float32, as A1111 samples); diffusers' ``noise`` and its copy of the latents are not used."""
        start = self.image_start
        if start is None:
            raise RuntimeError("add_noise needs start_from_image(...) first")
        return start.first_latents(self.sigmas[0], original_samples.device).to(original_samples.dtype)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        config = self.config
        self.num_inference_steps = num_inference_steps
        start = self.image_start
        schedule_steps, t_enc = (num_inference_steps, num_inference_steps - 1) if start is None else \
            img2img_steps(num_inference_steps, start.denoising_strength, start.fixed_steps)
        if schedule_steps < 1:
            raise ValueError("denoising strength 0 samples nothing; skip sampling instead")
        discard = config.discard_penultimate_sigma or self.options.always_discard_penultimate_sigma
        self.noise_sigmas = schedule_sigmas(config.schedule, schedule_steps, self.model_sigmas, sdxl=config.sdxl,
                                            discard_penultimate=discard, options=self.options.schedule)
        self.sigmas = self.noise_sigmas[schedule_steps - t_enc - 1:]
        calls = self.denoiser_calls(self.sigmas)
        self._calls = [sigma for sigma, _starts in calls]
        # A1111 counts sampler steps, not UNet calls: the step each call belongs to (1-based), for progress.
        self.step_of_call = list(itertools.accumulate(int(starts) for _sigma, starts in calls))
        sigmas_called = torch.stack(self._calls)
        self.timesteps = self.model_sigmas.sigma_to_t(sigmas_called).to(device=device)
        self._reset()

    def denoiser_calls(self, sigmas: torch.Tensor) -> list[tuple[torch.Tensor, bool]]:
        """(sigma, starts a step) for every denoiser call the sampler makes over ``sigmas``.

        They depend on the sigmas alone, so a dry run over a dummy one-element latent finds them.
        """
        algorithm = ALGORITHMS[self.config.algorithm]
        run = algorithm.run(torch.zeros(1), sigmas, lambda _s, _n: torch.zeros(1), **algorithm.kwargs(self.options))
        calls = []
        try:
            _x, sigma, starts = next(run)
            while True:
                calls.append((sigma, starts))
                _x, sigma, starts = run.send(torch.zeros(1))
        except StopIteration:
            return calls

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        if self._run is None:
            # Here, not in step: Euler's churn changes x before the first UNet call. With CFG the pipeline hands
            # over [latents, latents]; one copy per image is the sampler's.
            images = len(self.noise_sampler_seed) if self.noise_sampler_seed else sample.shape[0]
            self._start(sample[:images] if sample.shape[0] % images == 0 else sample)
        x = self._own_latents(sample)
        sigma = self._calls[self._step_index].to(x.device)
        return (x / (sigma ** 2 + 1) ** 0.5).to(sample.dtype)

    def _own_latents(self, sample: torch.Tensor) -> torch.Tensor:
        """The sampler's float32 latents behind ``sample`` (the pipeline's may be fp16 copies, and doubled for CFG).

        Before the first step they are the image start's, whatever the pipeline prepared: diffusers' inpainting
        pipeline starts from ``noise * init_noise_sigma`` alone when given the whole (already sliced) schedule.
        """
        if self._pending is None and self.image_start is None:
            return sample.float()
        x = self._pending[0] if self._pending is not None else self._initial_latents(sample)
        copies, rest = divmod(sample.shape[0], x.shape[0])
        if rest or sample.shape[1:] != x.shape[1:]:
            return sample.float()
        return x if copies == 1 else x.repeat(copies, *([1] * (x.ndim - 1)))

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        if self._run is None:
            self._start(sample)
        if self.image_start is None or not self.image_start.generators:
            self._generator = generator
        x, sigma, _starts = self._pending
        sigma = sigma.to(x.device)
        output = model_output.float()
        if self.config.prediction_type == "v_prediction":
            denoised = output * (-sigma / (sigma ** 2 + 1) ** 0.5) + x / (sigma ** 2 + 1)
        else:
            denoised = x - output * sigma
        if self.image_start is not None:
            denoised = self.image_start.blend(denoised)
        self._step_index += 1
        self.denoised = denoised
        try:
            self._pending = self._run.send(denoised)
            prev = self._pending[0]
        except StopIteration as done:
            prev = done.value if self.image_start is None else self.image_start.blend(done.value)
            self._pending = None
        prev = prev.to(sample.dtype)  # the pipeline keeps its latents in the UNet's dtype
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def _start(self, sample: torch.Tensor) -> None:
        """Start the sampler on float32 latents, as A1111 samples (only the UNet runs in half precision)."""
        algorithm = ALGORITHMS[self.config.algorithm]
        if self.image_start is not None and self.image_start.generators:
            self._generator = list(self.image_start.generators)  # the image noise's own streams
        x = self._initial_latents(sample)
        sigmas = self.sigmas.to(x.device)
        if algorithm.brownian:
            seeds = self.noise_sampler_seed or [int(torch.randint(0, 2 ** 63 - 1, []).item())] * x.shape[0]
            # A1111 spans the tree over the whole schedule, also when img2img runs only its tail.
            noise: Noise = BrownianNoise(x, self.noise_sigmas.to(x.device), seeds)
        elif self.step_noise is not None:
            source = self.step_noise
            noise = lambda _s, _n: source.next(x)  # noqa: E731
        else:
            # The generators ``step`` was given (diffusers passes them on every call); churn noise drawn before
            # the first step has none yet and comes from torch's global generator.
            noise = lambda s, n: _generator_noise(self._generator)(s, n, like=x)  # noqa: E731
        self._run = algorithm.run(x, sigmas, noise, **algorithm.kwargs(self.options))
        self._pending = next(self._run)

    def _initial_latents(self, sample: torch.Tensor) -> torch.Tensor:
        """Float32 latents the sampler starts from: the image start's, or the pipeline's first batch."""
        if self.image_start is None:
            return sample.float()
        return self.image_start.first_latents(self.sigmas[0], sample.device)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ------------------------------------------------------------------ the refiner (webui/pipelines/refiner.py)

    def refiner_switch_call(self, switch_at: float) -> int | None:
        """Index of the first denoiser call that A1111 1.6+ runs on the refiner (None: it never switches).

        A1111 decides before every denoiser call, by noise level: the call's sigma is matched to the nearest of
        the model's 1000 discrete sigmas, index ``t``, and the refiner takes over once ``(999 - t) / 1000``
        reaches ``switch_at`` (float32, as A1111 compares). At 1.0 it never does. Call after ``set_timesteps``.
        """
        table = self.model_sigmas.sigmas
        for index, sigma in enumerate(self._calls):
            timestep = torch.argmin((table - sigma.to(table.device)).abs())
            if not bool((999 - timestep) / 1000 < switch_at):
                return index
        return None

    @property
    def latents(self) -> torch.Tensor | None:
        """The running sampler's float32 latents at the next denoiser call (None before the first step).

        The sampler's state (its latents, a multistep sampler's history, the noise streams) lives in this
        object between calls, so a refiner continues it simply by calling ``scale_model_input``/``step`` on
        the same scheduler with another UNet.
        """
        return None if self._pending is None else self._pending[0]
