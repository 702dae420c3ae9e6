"""Tests for webui.samplers: name resolution, schedule validation and real diffusers builds."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from webui.samplers import (
    SAMPLERS,
    SCHEDULE_TYPES,
    SamplerSpec,
    a1111_samplers_listing,
    a1111_schedulers_listing,
    build_scheduler,
    effective_schedule,
    find_sampler,
    is_sampler_available,
    normalize_schedule,
    resolve_sampler,
    sampler_names,
    schedules_for,
    split_fused_sampler_name,
)

# diffusers deprecates algorithm_type="dpmsolver" (DPM-Solver) with a FutureWarning, and
# its schedulers trip a numpy-2 DeprecationWarning; neither is ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning:diffusers"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
]

# scheduler_config.json of runwayml/stable-diffusion-v1-5.
SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0.
SDXL_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

REQUIRED_SAMPLERS = (
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2S a",
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM-Solver",
    "DDIM",
    "DDPM",
    "PLMS",
    "UniPC",
    "LCM",
)

SAMPLER_SCHEDULE_PAIRS = [
    pytest.param(spec, schedule, id=f"{spec.name}/{schedule}")
    for spec in SAMPLERS
    for schedule in spec.schedules
]


def _skip_if_unavailable(spec: SamplerSpec) -> None:
    if not is_sampler_available(spec.name):
        pytest.skip(f"{spec.name} needs {', '.join(spec.requires)}, not installed")


@pytest.fixture
def diffusers_log() -> Iterator[list[logging.LogRecord]]:
    """Warnings diffusers logs (its logger doesn't propagate, so caplog can't see them)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# ----------------------------------------------------------------- real scheduler builds


@pytest.mark.parametrize(("spec", "schedule"), SAMPLER_SCHEDULE_PAIRS)
def test_every_sampler_and_schedule_builds(spec: SamplerSpec, schedule: str) -> None:
    _skip_if_unavailable(spec)
    scheduler = build_scheduler(SD15_CONFIG, spec.name, schedule)
    scheduler.set_timesteps(10)

    used = effective_schedule(spec, schedule)
    config = scheduler.config
    if spec.k_algorithm:
        # txt2img runs A1111's k-diffusion sampler over A1111's sigmas (tests/test_sigmas.py checks the numbers).
        assert type(scheduler).__name__ == "KDiffusionScheduler"
        assert (config.algorithm, config.schedule) == (spec.k_algorithm, used)
        assert len(scheduler.timesteps) >= 10
        assert scheduler.sigmas[0] > 1 and scheduler.sigmas[-1] < 0.1
    else:
        assert type(scheduler).__name__ == spec.scheduler_class
        assert len(scheduler.timesteps) >= 10
        for key, value in spec.kwargs.items():
            assert config[key] == value
    # Betas come from the model config, not the scheduler class defaults.
    assert config.beta_schedule == "scaled_linear"
    assert config.beta_start == SD15_CONFIG["beta_start"]


_FLAG = {"Karras": "supports_karras", "Exponential": "supports_exponential", "SGM Uniform": "supports_sgm_uniform"}
DIFFUSERS_PAIRS = [
    pytest.param(spec, schedule, id=f"{spec.name}/{schedule}")
    for spec in SAMPLERS
    for schedule in spec.schedules
    if schedule in ("Automatic", "Karras", "Exponential", "SGM Uniform")
    and (not spec.k_algorithm or schedule == "Automatic" or getattr(spec, _FLAG[schedule]))
]


@pytest.mark.parametrize(("spec", "schedule"), DIFFUSERS_PAIRS)
def test_img2img_schedulers_are_diffusers_classes_with_the_schedule_flags(spec: SamplerSpec, schedule: str) -> None:
    """img2img slices diffusers' timesteps, so it keeps diffusers' classes (exact=False)."""
    _skip_if_unavailable(spec)
    scheduler = build_scheduler(SD15_CONFIG, spec.name, schedule, exact=False)
    scheduler.set_timesteps(10)
    assert type(scheduler).__name__ == spec.scheduler_class
    config = scheduler.config
    used = effective_schedule(spec, schedule)
    if spec.supports_karras:
        assert config.use_karras_sigmas == (used == "Karras")
    if spec.supports_exponential:
        assert config.use_exponential_sigmas == (used == "Exponential")
    if "timestep_spacing" in config:
        assert (config.timestep_spacing == "trailing") == (used == "SGM Uniform")
        if spec.k_algorithm and used != "SGM Uniform":
            # k-diffusion's spacing (first sigma = sigma_max), not the config's "leading" (which started at 11.0).
            assert config.timestep_spacing == "linspace"


def test_diffusers_schedulers_refuse_schedules_only_k_diffusion_has() -> None:
    with pytest.raises(ValueError, match="'Beta' is not available with InstructPix2Pix"):
        build_scheduler(SD15_CONFIG, "Euler", "Beta", exact=False)


@pytest.mark.parametrize("spec", SAMPLERS, ids=lambda spec: spec.name)
def test_builds_from_sdxl_config_without_config_warnings(
    spec: SamplerSpec, diffusers_log: list[logging.LogRecord]
) -> None:
    _skip_if_unavailable(spec)
    build_scheduler(SDXL_CONFIG, spec.name).set_timesteps(10)
    assert [r.getMessage() for r in diffusers_log] == []


def test_checkpoint_schedule_flags_do_not_leak() -> None:
    # A checkpoint config with Karras + beta sigmas on must not override the user's choice,
    # nor make diffusers reject two sigma schedules at once.
    config = {**SD15_CONFIG, "use_karras_sigmas": True, "use_beta_sigmas": True}
    euler = build_scheduler(config, "Euler", "Automatic", exact=False)
    assert not euler.config.use_karras_sigmas
    assert not euler.config.use_beta_sigmas
    exponential = build_scheduler(config, "Euler", "Exponential", exact=False)
    assert exponential.config.use_exponential_sigmas
    assert not exponential.config.use_karras_sigmas


def test_fused_name_builds_with_fused_schedule() -> None:
    scheduler = build_scheduler(SD15_CONFIG, "DPM++ 2M SDE Karras")
    assert (scheduler.config.algorithm, scheduler.config.schedule) == ("dpmpp_2m_sde", "Karras")
    scheduler = build_scheduler(SD15_CONFIG, "DPM++ 2M SDE Karras", exact=False)
    assert scheduler.config.algorithm_type == "sde-dpmsolver++"
    assert scheduler.config.use_karras_sigmas


def test_build_does_not_mutate_base_config() -> None:
    config = dict(SD15_CONFIG)
    build_scheduler(config, "DPM++ 2M", "Karras")
    assert config == SD15_CONFIG


def test_missing_optional_dependency_is_reported() -> None:
    lms = find_sampler("LMS")
    assert lms is not None and lms.requires == ("scipy",)
    if is_sampler_available("LMS"):
        pytest.skip("scipy is installed")
    with pytest.raises(ImportError, match="'LMS' needs the optional package.*scipy"):
        build_scheduler(SD15_CONFIG, "LMS")


def test_module_import_does_not_import_torch_or_diffusers() -> None:
    code = "import sys, webui.samplers; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------- name lookup


def test_required_samplers_present_in_table_order() -> None:
    names = sampler_names()
    assert names[:2] == ["Euler a", "Euler"]
    assert [n for n in names if n in REQUIRED_SAMPLERS] == list(REQUIRED_SAMPLERS)
    assert len(set(names)) == len(names)


def test_table_is_immutable() -> None:
    assert isinstance(SAMPLERS, tuple)
    spec = SAMPLERS[0]
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        find_sampler("DPM++ 2M").kwargs["solver_order"] = 3  # type: ignore[index,union-attr]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Euler a", "Euler a"),
        ("euler a", "Euler a"),
        ("EULER A", "Euler a"),
        ("  Euler   a ", "Euler a"),
        ("k_euler_a", "Euler a"),
        ("k_euler_ancestral", "Euler a"),
        ("euler_a", "Euler a"),
        ("k_dpmpp_2m", "DPM++ 2M"),
        ("dpmpp_2m", "DPM++ 2M"),
        ("K_DPMPP_2M_SDE", "DPM++ 2M SDE"),
        ("k_dpmpp_sde", "DPM++ SDE"),
        ("DPM Solver", "DPM-Solver"),
        ("dpm solver", "DPM-Solver"),
        ("dpm-solver", "DPM-Solver"),
        ("plms", "PLMS"),
        ("unipc", "UniPC"),
        ("k_lcm", "LCM"),
    ],
)
def test_names_and_aliases_resolve(given: str, expected: str) -> None:
    spec, schedule = resolve_sampler(given)
    assert (spec.name, schedule) == (expected, "Automatic")


@pytest.mark.parametrize(
    ("given", "sampler", "schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("dpm++ 2m karras", "DPM++ 2M", "Karras"),
        ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
        ("DPM2 a Karras", "DPM2 a", "Karras"),
        ("LMS Karras", "LMS", "Karras"),
        ("Euler SGM Uniform", "Euler", "SGM Uniform"),
        ("k_dpmpp_2m_ka", "DPM++ 2M", "Karras"),
        ("k_dpmpp_2m_sde_exp", "DPM++ 2M SDE", "Exponential"),
    ],
)
def test_fused_names_resolve(given: str, sampler: str, schedule: str) -> None:
    spec, resolved = resolve_sampler(given)
    assert (spec.name, resolved) == (sampler, schedule)


def test_explicit_schedule_beats_fused_one_but_automatic_defers() -> None:
    assert resolve_sampler("DPM++ 2M Karras", "Exponential")[1] == "Exponential"
    assert resolve_sampler("DPM++ 2M Karras", "Automatic")[1] == "Karras"
    assert resolve_sampler("DPM++ 2M Karras", None)[1] == "Karras"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
        ("Euler a", ("Euler a", None)),
        ("DPM++ 2M SDE", ("DPM++ 2M SDE", None)),
        ("DPM++ 2M SDE Heun", ("DPM++ 2M SDE Heun", None)),  # a real name is never split
        ("Foo Exponential", ("Foo", "Exponential")),  # base kept even when unknown
        ("Karras", ("Karras", None)),  # nothing left to be a sampler
        ("  Euler a  ", ("Euler a", None)),
        ("k_dpm_2_a_ka", ("k_dpm_2_a", "Karras")),
    ],
)
def test_split_fused_sampler_name(given: str, expected: tuple[str, str | None]) -> None:
    assert split_fused_sampler_name(given) == expected


@pytest.mark.parametrize("name", ["Foo", "", "Euler b", "Karras", "Foo Karras"])
def test_unknown_sampler_lists_valid_names(name: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        resolve_sampler(name)
    assert str(excinfo.value) == (
        f"Unknown sampler {name!r}. Valid samplers: {', '.join(sampler_names())}"
    )
    assert str(excinfo.value).startswith(f"Unknown sampler {name!r}. Valid samplers: Euler a, Euler, ")


@pytest.mark.parametrize(
    ("name", "schedule"),
    [
        ("LCM", "Karras"),
        ("PLMS Karras", None),
        ("LCM", "SGM Uniform"),
        ("UniPC", "Beta"),
        ("DDIM", "Exponential"),
    ],
)
def test_unsupported_schedule_is_rejected(name: str, schedule: str | None) -> None:
    with pytest.raises(ValueError, match="is not supported by sampler .* Valid schedule types: "):
        resolve_sampler(name, schedule)


def test_unknown_schedule_is_rejected() -> None:
    with pytest.raises(ValueError, match="Unknown schedule type 'Foo'. Valid schedule types: "):
        resolve_sampler("Euler", "Foo")
    with pytest.raises(ValueError, match="Unknown schedule type"):
        build_scheduler(SD15_CONFIG, "Euler", "Foo")


# ------------------------------------------------------------------------ schedules


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "Automatic"),
        ("", "Automatic"),
        ("automatic", "Automatic"),
        ("Karras", "Karras"),
        ("karras", "Karras"),
        ("EXPONENTIAL", "Exponential"),
        ("sgm_uniform", "SGM Uniform"),
        ("SGMUniform", "SGM Uniform"),
        ("sgm uniform", "SGM Uniform"),
    ],
)
def test_normalize_schedule(given: str | None, expected: str) -> None:
    assert normalize_schedule(given) == expected


@pytest.mark.parametrize(
    ("sampler", "expected"),
    [
        # A1111 offers every schedule type for its k-diffusion samplers.
        ("Euler a", SCHEDULE_TYPES),
        ("Euler", SCHEDULE_TYPES),
        ("DPM++ 2M", SCHEDULE_TYPES),
        ("DPM++ 2S a", SCHEDULE_TYPES),
        ("UniPC", ("Automatic", "Karras", "Exponential", "SGM Uniform")),
        ("DDIM", ("Automatic", "SGM Uniform")),
        ("PLMS", ("Automatic", "SGM Uniform")),
        ("LCM", ("Automatic",)),
        ("k_dpmpp_2m", SCHEDULE_TYPES),
    ],
)
def test_schedules_for(sampler: str, expected: tuple[str, ...]) -> None:
    assert schedules_for(sampler) == expected


@pytest.mark.parametrize(
    ("sampler", "automatic_means"),
    [
        ("Euler a", "Automatic"),
        ("Euler", "Automatic"),
        ("DPM++ 2M", "Karras"),
        ("DPM++ SDE", "Karras"),
        ("DPM2", "Karras"),
        ("DPM++ 2M SDE", "Exponential"),
    ],
)
def test_automatic_follows_a1111_sampler_defaults(sampler: str, automatic_means: str) -> None:
    spec, schedule = resolve_sampler(sampler)
    assert effective_schedule(spec, schedule) == automatic_means
    assert effective_schedule(spec, "SGM Uniform") == "SGM Uniform"


def test_every_default_schedule_is_valid_for_its_sampler() -> None:
    for spec in SAMPLERS:
        assert spec.default_schedule in spec.schedules, spec.name


# ---------------------------------------------------------------- A1111 API listings


def test_a1111_samplers_listing_shape() -> None:
    listing = a1111_samplers_listing()
    assert [entry["name"] for entry in listing] == sampler_names()
    by_name = {entry["name"]: entry for entry in listing}
    assert by_name["Euler a"] == {
        "name": "Euler a",
        "aliases": ["k_euler_a", "k_euler_ancestral"],
        "options": {"uses_ensd": True},
    }
    # A1111 1.10's options, as its API reports them.
    assert by_name["Euler"]["options"] == {}
    assert by_name["DPM2 a"]["options"] == {
        "scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True}
    assert by_name["DPM++ 3M SDE"]["options"] == {
        "scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True}
    assert by_name["DPM++ 2M SDE Heun"]["options"] == {
        "scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"}
    assert by_name["DDIM"]["options"] == {}
    assert by_name["DPM++ 2M"] == {
        "name": "DPM++ 2M",
        "aliases": ["k_dpmpp_2m"],
        "options": {"scheduler": "karras"},
    }
    assert by_name["DPM++ 2M SDE"]["options"] == {"scheduler": "exponential", "brownian_noise": True}


def test_a1111_schedulers_listing_shape() -> None:
    listing = a1111_schedulers_listing()
    assert [entry["label"] for entry in listing] == list(SCHEDULE_TYPES)
    # A1111 1.10's list, in its order.
    assert [entry["name"] for entry in listing] == [
        "automatic", "uniform", "karras", "exponential", "polyexponential", "sgm_uniform", "kl_optimal",
        "align_your_steps", "simple", "normal", "ddim", "beta",
    ]
    by_name = {entry["name"]: entry for entry in listing}
    assert listing[0] == {
        "name": "automatic",
        "label": "Automatic",
        "aliases": None,
        "default_rho": -1.0,
        "need_inner_model": False,
    }
    assert by_name["karras"] == {
        "name": "karras",
        "label": "Karras",
        "aliases": None,
        "default_rho": 7.0,
        "need_inner_model": False,
    }
    assert by_name["polyexponential"]["default_rho"] == 1.0
    assert by_name["sgm_uniform"]["aliases"] == ["SGMUniform"]
    assert [e["name"] for e in listing if e["need_inner_model"]] == [
        "uniform", "sgm_uniform", "simple", "normal", "ddim", "beta"]


def test_unipc_uses_a1111_defaults_and_starts_at_the_last_timestep() -> None:
    # A1111: variant bh1, order 3, time-uniform from t = 999 to the model's sigma_min ("leading" began at 941).
    scheduler = build_scheduler(SD15_CONFIG, "UniPC")
    scheduler.set_timesteps(20)
    assert (scheduler.config.solver_type, scheduler.config.solver_order) == ("bh1", 3)
    assert scheduler.timesteps[:3].tolist() == [999, 949, 899]
    assert len(scheduler.timesteps) == 20
    assert scheduler.sigmas[0].item() == pytest.approx(14.6146, abs=1e-3)
    assert scheduler.sigmas[-1].item() == pytest.approx(0.0292, abs=1e-4)
