"""Sampler names users know from A1111, mapped onto diffusers schedulers.

A1111 separates the *sampler* (the solver, e.g. "DPM++ 2M") from the *schedule type*
(how sigmas are spaced, e.g. "Karras"). diffusers folds both into one scheduler class plus
config flags, so each :class:`SamplerSpec` names a class, the kwargs that select the
solver variant, and which schedule flags that class understands.

"Automatic" follows A1111 1.10: it means *the sampler's own default schedule*, e.g.
Karras for DPM++ 2M and Exponential for DPM++ 2M SDE; for most samplers that is the
model's plain schedule.

This module does not import torch or diffusers at import time; only
:func:`build_scheduler` does, lazily.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "SAMPLERS",
    "SCHEDULE_TYPES",
    "SamplerSpec",
    "Sampling",
    "ScheduleType",
    "a1111_samplers_listing",
    "a1111_schedulers_listing",
    "build_scheduler",
    "effective_schedule",
    "find_sampler",
    "is_sampler_available",
    "normalize_schedule",
    "partial_schedule_problem",
    "resolve_sampler",
    "sampler_names",
    "schedules_for",
    "split_fused_sampler_name",
]

AUTOMATIC = "Automatic"
UNIFORM = "Uniform"
KARRAS = "Karras"
EXPONENTIAL = "Exponential"
POLYEXPONENTIAL = "Polyexponential"
SGM_UNIFORM = "SGM Uniform"
KL_OPTIMAL = "KL Optimal"
ALIGN_YOUR_STEPS = "Align Your Steps"
SIMPLE = "Simple"
NORMAL = "Normal"
DDIM_SCHEDULE = "DDIM"
BETA = "Beta"


# ------------------------------------------------------------------------ schedules


@dataclass(frozen=True)
class ScheduleType:
    """A schedule type, with the metadata A1111's /sdapi/v1/schedulers reports."""

    label: str  # shown in the UI and written to infotext ("Karras")
    name: str  # A1111's API id ("karras")
    aliases: tuple[str, ...] | None = None
    default_rho: float = -1.0
    need_inner_model: bool = False


# A1111 1.10's list (modules/sd_schedulers.py), in its order; computed in webui/schedules.py.
_SCHEDULES: tuple[ScheduleType, ...] = (
    ScheduleType(AUTOMATIC, "automatic"),
    ScheduleType(UNIFORM, "uniform", need_inner_model=True),
    ScheduleType(KARRAS, "karras", default_rho=7.0),
    ScheduleType(EXPONENTIAL, "exponential"),
    ScheduleType(POLYEXPONENTIAL, "polyexponential", default_rho=1.0),
    ScheduleType(SGM_UNIFORM, "sgm_uniform", aliases=("SGMUniform",), need_inner_model=True),
    ScheduleType(KL_OPTIMAL, "kl_optimal"),
    ScheduleType(ALIGN_YOUR_STEPS, "align_your_steps"),
    ScheduleType(SIMPLE, "simple", need_inner_model=True),
    ScheduleType(NORMAL, "normal", need_inner_model=True),
    ScheduleType(DDIM_SCHEDULE, "ddim", need_inner_model=True),
    ScheduleType(BETA, "beta", need_inner_model=True),
)

SCHEDULE_TYPES: tuple[str, ...] = tuple(s.label for s in _SCHEDULES)


def normalize_schedule(schedule: str | None) -> str:
    """Canonical label for a schedule given by label, A1111 id or alias (any case).

    None or "" mean "Automatic". Raises ValueError for unknown schedule types.
    """
    if not schedule or not schedule.strip():
        return AUTOMATIC
    wanted = _normalize_key(schedule)
    for info in _SCHEDULES:
        if wanted in {_normalize_key(n) for n in (info.label, info.name, *(info.aliases or ()))}:
            return info.label
    raise ValueError(
        f"Unknown schedule type {schedule!r}. Valid schedule types: {', '.join(SCHEDULE_TYPES)}"
    )


# ------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class SamplerSpec:
    """How one user-facing sampler maps onto a diffusers scheduler class."""

    name: str
    scheduler_class: str  # attribute name in the `diffusers` package
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    supports_karras: bool = False  # class has use_karras_sigmas
    aliases: tuple[str, ...] = ()
    supports_exponential: bool = False  # class has use_exponential_sigmas
    supports_sgm_uniform: bool = False  # class honours timestep_spacing="trailing"
    default_schedule: str = AUTOMATIC  # what "Automatic" means for this sampler
    requires: tuple[str, ...] = ()  # optional packages the diffusers class needs
    note: str = ""  # how faithful the mapping is, shown to curious users
    # The k-diffusion algorithm A1111 runs (webui/k_samplers.py); "" for samplers A1111 runs otherwise.
    k_algorithm: str = ""
    discard_penultimate_sigma: bool = False  # A1111's option: one more step computed, next-to-last sigma dropped

    def __post_init__(self) -> None:
        # Specs live in a shared module-level table: make the kwargs read-only.
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))

    @property
    def schedules(self) -> tuple[str, ...]:
        """Schedule types valid for this sampler, in SCHEDULE_TYPES order.

        A1111 offers every schedule type for its k-diffusion samplers; the others keep what their
        diffusers class can do.
        """
        if self.k_algorithm:
            return SCHEDULE_TYPES
        supported = {
            AUTOMATIC: True,
            KARRAS: self.supports_karras,
            EXPONENTIAL: self.supports_exponential,
            SGM_UNIFORM: self.supports_sgm_uniform,
        }
        return tuple(label for label in SCHEDULE_TYPES if supported.get(label, False))


# Schedule-flag support was checked against the diffusers 0.42 constructors: every
# class with use_karras_sigmas also has use_exponential_sigmas.
_SIGMA_SCHEDULES = {"supports_karras": True, "supports_exponential": True}
_ALL_SCHEDULES = {**_SIGMA_SCHEDULES, "supports_sgm_uniform": True}

SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec(
        name="Euler a",
        k_algorithm="euler_ancestral",
        scheduler_class="EulerAncestralDiscreteScheduler",
        aliases=("k_euler_a", "k_euler_ancestral"),
        supports_sgm_uniform=True,  # no sigma-schedule flags on this class
    ),
    SamplerSpec(
        name="Euler",
        k_algorithm="euler",
        scheduler_class="EulerDiscreteScheduler",
        aliases=("k_euler",),
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="LMS",
        k_algorithm="lms",
        scheduler_class="LMSDiscreteScheduler",
        aliases=("k_lms",),
        requires=("scipy",),  # diffusers uses scipy.integrate for the LMS coefficients
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="Heun",
        k_algorithm="heun",
        scheduler_class="HeunDiscreteScheduler",
        aliases=("k_heun",),
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM2",
        k_algorithm="dpm_2", discard_penultimate_sigma=True,
        scheduler_class="KDPM2DiscreteScheduler",
        aliases=("k_dpm_2",),
        default_schedule=KARRAS,
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM2 a",
        k_algorithm="dpm_2_ancestral", discard_penultimate_sigma=True,
        scheduler_class="KDPM2AncestralDiscreteScheduler",
        aliases=("k_dpm_2_a",),
        default_schedule=KARRAS,
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM++ 2S a",
        k_algorithm="dpmpp_2s_ancestral",
        scheduler_class="DPMSolverSinglestepScheduler",
        # lower_order_final=True: the class forces it anyway (and logs a warning) when the
        # final sigma is zero.
        kwargs={"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True},
        aliases=("k_dpmpp_2s_a",),
        default_schedule=KARRAS,
        note="img2img approximates it with diffusers' single-step DPM-Solver++(2S) without ancestral noise.",
        **_SIGMA_SCHEDULES,  # no timestep_spacing on the single-step class
    ),
    SamplerSpec(
        name="DPM++ 2M",
        k_algorithm="dpmpp_2m",
        scheduler_class="DPMSolverMultistepScheduler",
        kwargs={"algorithm_type": "dpmsolver++", "solver_order": 2},
        aliases=("k_dpmpp_2m",),
        default_schedule=KARRAS,
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM++ SDE",
        k_algorithm="dpmpp_sde",
        # The faithful k-diffusion sampler; its Brownian-tree noise is seeded per image by the pipeline
        # (noise_sampler_seed), so a seed reproduces its image as in A1111.
        scheduler_class="DPMSolverSDEScheduler",
        kwargs={},
        aliases=("k_dpmpp_sde",),
        default_schedule=KARRAS,
        requires=("torchsde",),
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM++ 2M SDE",
        k_algorithm="dpmpp_2m_sde",
        scheduler_class="DPMSolverMultistepScheduler",
        kwargs={"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        requires=("torchsde",),  # Brownian-tree noise, as A1111
        aliases=("k_dpmpp_2m_sde",),
        default_schedule=EXPONENTIAL,
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM++ 2M SDE Heun",
        k_algorithm="dpmpp_2m_sde_heun",
        scheduler_class="DPMSolverMultistepScheduler",
        kwargs={"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
        requires=("torchsde",),  # Brownian-tree noise, as A1111
        aliases=("k_dpmpp_2m_sde_heun",),
        default_schedule=EXPONENTIAL,
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM++ 3M SDE",
        k_algorithm="dpmpp_3m_sde", discard_penultimate_sigma=True,
        scheduler_class="DPMSolverMultistepScheduler",
        kwargs={"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        requires=("torchsde",),  # Brownian-tree noise, as A1111
        aliases=("k_dpmpp_3m_sde",),
        default_schedule=EXPONENTIAL,
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DPM-Solver",
        scheduler_class="DPMSolverMultistepScheduler",
        # Classic DPM-Solver. diffusers rejects final_sigmas_type="zero" (its default) for
        # this algorithm and marks the algorithm deprecated (a FutureWarning on build).
        kwargs={"algorithm_type": "dpmsolver", "solver_order": 2, "final_sigmas_type": "sigma_min"},
        aliases=("DPM Solver",),
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="DDIM",
        scheduler_class="DDIMScheduler",
        aliases=("ddim",),
        supports_sgm_uniform=True,
    ),
    SamplerSpec(
        name="DDPM",
        scheduler_class="DDPMScheduler",
        aliases=("ddpm",),
        supports_sgm_uniform=True,
    ),
    SamplerSpec(
        name="PLMS",
        scheduler_class="PNDMScheduler",
        kwargs={"skip_prk_steps": True},  # PLMS is PNDM without the Runge-Kutta warm-up
        aliases=("plms",),
        supports_sgm_uniform=True,
    ),
    SamplerSpec(
        name="UniPC",
        scheduler_class="UniPCMultistepScheduler",
        # A1111's defaults (uni_pc_variant bh1, uni_pc_order 3, skip type time_uniform from t=1 down to the
        # last timestep, i.e. ending at sigma_min): with linspace spacing the same timesteps, rounded to integers.
        kwargs={"solver_type": "bh1", "solver_order": 3, "final_sigmas_type": "sigma_min"},
        aliases=("unipc",),
        **_ALL_SCHEDULES,
    ),
    SamplerSpec(
        name="LCM",
        scheduler_class="LCMScheduler",
        aliases=("k_lcm",),
        # Its timesteps come from the distillation schedule; timestep_spacing is ignored.
    ),
)


def _normalize_key(name: str) -> str:
    """Case- and whitespace-insensitive lookup key."""
    return " ".join(name.lower().split())


def _build_index(specs: tuple[SamplerSpec, ...]) -> Mapping[str, SamplerSpec]:
    index: dict[str, SamplerSpec] = {}
    for spec in specs:
        for key in map(_normalize_key, (spec.name, *spec.aliases)):
            if index.get(key, spec) is not spec:
                raise ValueError(f"Sampler name {key!r} is used twice")
            index[key] = spec
    return MappingProxyType(index)


_INDEX: Mapping[str, SamplerSpec] = _build_index(SAMPLERS)


def sampler_names() -> list[str]:
    """Display names in table order (the order the UI should list them)."""
    return [spec.name for spec in SAMPLERS]


def find_sampler(name: str) -> SamplerSpec | None:
    """Look up a sampler by name or alias; None if unknown. Fused names are not split.

    Forgiving about spelling: case, extra spaces, "_" for " " ("euler_a") and a missing
    k-diffusion "k_" prefix ("dpmpp_2m") are all accepted.
    """
    key = _normalize_key(name)
    candidates = (key, _normalize_key(key.replace("_", " ")), f"k_{key}")
    return next((_INDEX[c] for c in candidates if c in _INDEX), None)


# Old A1111 names fused the schedule into the sampler ("DPM++ 2M Karras") or the alias
# ("k_dpmpp_2m_ka", "k_dpmpp_2m_sde_exp").
# Longest first, so "Euler SGM Uniform" is not read as "Euler SGM" + "Uniform".
_FUSED_SUFFIXES: tuple[tuple[str, str], ...] = (
    *sorted(((" " + label.lower(), label) for label in SCHEDULE_TYPES if label != AUTOMATIC),
            key=lambda pair: -len(pair[0])),
    ("_ka", KARRAS),
    ("_exp", EXPONENTIAL),
)


def split_fused_sampler_name(name: str) -> tuple[str, str | None]:
    """``"DPM++ 2M Karras"`` -> ``("DPM++ 2M", "Karras")``; other names -> ``(name, None)``.

    A name that is itself a known sampler is never split. The base is returned as
    written (not canonicalised) so unknown samplers from other UIs survive.
    """
    stripped = name.strip()
    if find_sampler(stripped) is not None:
        return stripped, None
    lowered = stripped.lower()
    for suffix, label in _FUSED_SUFFIXES:
        if not lowered.endswith(suffix):
            continue
        base = stripped[: -len(suffix)].rstrip()
        if base:
            return base, label
    return stripped, None


def resolve_sampler(name: str, scheduler: str | None = None) -> tuple[SamplerSpec, str]:
    """Validate a sampler and schedule; returns ``(spec, canonical schedule label)``.

    Accepts names, aliases and old fused names. A schedule fused into the name is used
    when ``scheduler`` is None or "Automatic"; an explicit schedule wins otherwise.
    Raises ValueError naming the valid choices.
    """
    spec = find_sampler(name)
    fused_schedule = None
    if spec is None:
        base, fused_schedule = split_fused_sampler_name(name)
        spec = find_sampler(base) if fused_schedule else None
    if spec is None:
        raise ValueError(f"Unknown sampler {name!r}. Valid samplers: {', '.join(sampler_names())}")

    schedule = normalize_schedule(scheduler)
    if schedule == AUTOMATIC and fused_schedule:
        schedule = fused_schedule
    if schedule not in spec.schedules:
        raise ValueError(
            f"Schedule type {schedule!r} is not supported by sampler {spec.name!r}. "
            f"Valid schedule types: {', '.join(spec.schedules)}"
        )
    return spec, schedule


@dataclass(frozen=True)
class Sampling:
    """A request's sampler and schedule, resolved once: what the pipeline builds and the infotext records."""

    spec: SamplerSpec
    schedule: str  # the canonical label asked for ("Automatic" included)

    @classmethod
    def resolve(cls, name: str, scheduler: str | None = None) -> "Sampling":
        """Like ``resolve_sampler``; raises ValueError naming the valid choices."""
        return cls(*resolve_sampler(name, scheduler))

    @property
    def effective_schedule(self) -> str:
        """The schedule that really runs ("Automatic" replaced by the sampler's default)."""
        return effective_schedule(self.spec, self.schedule)


def schedules_for(sampler_name: str) -> tuple[str, ...]:
    """Schedule types valid for a sampler (just "Automatic" where they'd be meaningless)."""
    spec, _ = resolve_sampler(sampler_name)
    return spec.schedules


def effective_schedule(spec: SamplerSpec, schedule: str) -> str:
    """The schedule actually used: "Automatic" becomes the sampler's default.

    Use this for the infotext's "Schedule type" so images record what really ran.
    """
    return spec.default_schedule if schedule == AUTOMATIC else schedule


def is_sampler_available(name: str) -> bool:
    """False when the sampler's diffusers class needs a package that isn't installed."""
    spec, _ = resolve_sampler(name)
    return not _missing_packages(spec)


def _missing_packages(spec: SamplerSpec) -> tuple[str, ...]:
    return tuple(pkg for pkg in spec.requires if importlib.util.find_spec(pkg) is None)


def _schedule_kwargs(spec: SamplerSpec, schedule: str) -> dict[str, Any]:
    """Scheduler flags for a schedule (diffusers' own classes).

    Flags the class supports are always set explicitly, so a checkpoint's own scheduler
    config (which may enable Karras or beta sigmas) can't leak into the user's choice,
    and diffusers never sees two sigma schedules enabled at once (which it rejects).
    """
    kwargs: dict[str, Any] = {}
    if spec.supports_karras:
        kwargs["use_karras_sigmas"] = schedule == KARRAS
    if spec.supports_exponential:
        kwargs["use_exponential_sigmas"] = schedule == EXPONENTIAL
    if spec.supports_karras or spec.supports_exponential:
        kwargs["use_beta_sigmas"] = False
    if schedule == SGM_UNIFORM:
        kwargs["timestep_spacing"] = "trailing"  # diffusers' equivalent of SGM Uniform
    elif spec.k_algorithm or spec.name == "UniPC":
        kwargs["timestep_spacing"] = "linspace"  # A1111's spacing: starts at sigma_max (not "leading"'s ~11)
    return kwargs


_DIFFUSERS_SCHEDULES = (AUTOMATIC, UNIFORM, KARRAS, EXPONENTIAL, SGM_UNIFORM)


def partial_schedule_problem(spec: SamplerSpec, schedule: str) -> str | None:
    """Why a diffusers scheduler (``exact=False``: InstructPix2Pix) can't run this schedule, or None if it can."""
    effective = effective_schedule(spec, schedule)
    if not spec.k_algorithm or effective in _DIFFUSERS_SCHEDULES:
        return None
    return (f"Schedule type {effective!r} is not available with InstructPix2Pix checkpoints (they sample with "
            f"diffusers' schedulers); choose one of {', '.join(_DIFFUSERS_SCHEDULES)}")


def build_scheduler(
    base_config: Mapping[str, Any], name: str, schedule: str | None = AUTOMATIC, *,
    exact: bool = True, sdxl: bool = False,
) -> Any:
    """A diffusers-compatible scheduler for ``name``/``schedule``, built from a model's scheduler config.

    ``base_config`` is the checkpoint's scheduler config (betas, prediction type...);
    keys the target class doesn't take are dropped first (see ``_accepted_config``).
    With ``exact`` (whole-schedule sampling: txt2img), A1111's k-diffusion samplers run as
    A1111 runs them, over A1111's sigmas (webui/k_samplers.py; ``sdxl`` picks the Align Your
    Steps table); otherwise, and for the other samplers, a diffusers class stands in.
    Raises ValueError for unknown names/schedules, ImportError for a missing optional
    package (e.g. scipy for LMS).
    """
    spec, requested = resolve_sampler(name, schedule)
    missing = _missing_packages(spec)
    if missing:
        raise ImportError(
            f"Sampler {spec.name!r} needs the optional package(s) {', '.join(missing)}; "
            "install them or choose another sampler."
        )
    effective = effective_schedule(spec, requested)
    if spec.k_algorithm and exact:
        from webui.k_samplers import KDiffusionScheduler  # lazy: pulls in torch and diffusers

        return KDiffusionScheduler.from_config(
            _accepted_config(KDiffusionScheduler, base_config), algorithm=spec.k_algorithm,
            schedule=effective, discard_penultimate_sigma=spec.discard_penultimate_sigma, sdxl=sdxl)
    problem = partial_schedule_problem(spec, requested)
    if problem:
        raise ValueError(problem)

    import diffusers  # lazy: importing diffusers pulls in torch

    scheduler_cls = getattr(diffusers, spec.scheduler_class)
    kwargs = {**spec.kwargs, **_schedule_kwargs(spec, effective)}
    return scheduler_cls.from_config(_accepted_config(scheduler_cls, base_config), **kwargs)


def _accepted_config(scheduler_cls: type, base_config: Mapping[str, Any]) -> dict[str, Any]:
    """Only the config keys ``scheduler_cls.__init__`` accepts.

    ``from_config`` quietly ignores keys of the schedulers it lists as compatible, but
    logs a warning for any other; e.g. LCMScheduler isn't "compatible" with the Euler or
    PNDM configs checkpoints ship, so their ``skip_prk_steps`` would trigger it.
    """
    accepted = inspect.signature(scheduler_cls.__init__).parameters
    return {key: value for key, value in base_config.items() if key in accepted}


# ------------------------------------------------------------------ A1111 API shapes


def a1111_samplers_listing() -> list[dict[str, Any]]:
    """Body of A1111's ``GET /sdapi/v1/samplers``."""
    return [
        {"name": spec.name, "aliases": list(spec.aliases), "options": _a1111_options(spec)}
        for spec in SAMPLERS
    ]


# A1111 1.10's per-sampler option flags (modules/sd_samplers_kdiffusion.py), by k-diffusion algorithm.
_A1111_FLAGS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "euler_ancestral": {"uses_ensd": True},
    "heun": {"second_order": True},
    "dpm_2": {"second_order": True},
    "dpm_2_ancestral": {"uses_ensd": True, "second_order": True},
    "dpmpp_2s_ancestral": {"uses_ensd": True, "second_order": True},
    "dpmpp_sde": {"second_order": True, "brownian_noise": True},
    "dpmpp_2m_sde": {"brownian_noise": True},
    "dpmpp_2m_sde_heun": {"brownian_noise": True, "solver_type": "heun"},
    "dpmpp_3m_sde": {"brownian_noise": True},
})


def _a1111_options(spec: SamplerSpec) -> dict[str, Any]:
    """A1111's ``options``: the default schedule (when not Automatic) and the sampler's flags."""
    options: dict[str, Any] = {}
    if spec.default_schedule != AUTOMATIC:
        options["scheduler"] = _schedule_info(spec.default_schedule).name
    if spec.discard_penultimate_sigma:
        options["discard_next_to_last_sigma"] = True
    options.update(_A1111_FLAGS.get(spec.k_algorithm, {}))
    return options


def _schedule_info(label: str) -> ScheduleType:
    return next(info for info in _SCHEDULES if info.label == label)


def a1111_schedulers_listing() -> list[dict[str, Any]]:
    """Body of A1111's ``GET /sdapi/v1/schedulers``."""
    return [
        {
            "name": info.name,
            "label": info.label,
            "aliases": list(info.aliases) if info.aliases else None,
            "default_rho": info.default_rho,
            "need_inner_model": info.need_inner_model,
        }
        for info in _SCHEDULES
    ]
