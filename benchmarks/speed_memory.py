"""Speed and memory, one command: Stable Studio's real path versus vanilla diffusers, side by side in ONE process.

For each model family (SD1.5, then SDXL) the real architecture is built with RANDOM weights (speed and memory
depend on the shapes, not the values; see ../shared/PERF.md), written as ONE single-file checkpoint in the
original LDM layout (SDXL too: ``conditioner.embedders.0/1``), and then:

* vanilla: ``StableDiffusion[XL]Pipeline`` over the same in-memory modules, ``DPMSolverMultistepScheduler``
  (DPM++ 2M Karras), SDPA, placed by the workload's recipe: ``pipe.to(device)``, or diffusers' own answers to a
  small card, ``enable_model_cpu_offload()`` and/or ``vae.enable_tiling()``. Hires fix: txt2img to latents,
  latents upscaled ×N (bilinear, A1111's "Latent"), then ``StableDiffusion[XL]Img2ImgPipeline`` over the same
  modules at strength 0.5 and steps / 0.5 scheduled steps, so it runs the same number of UNet steps as ours.
* ours: ``build_services(Settings(...))`` on a data dir holding that file; the registry finds it, the manager
  loads it (loader, memory plan, device) and every image batch is a txt2img job on the queue
  (``services.generation.submit_txt2img``: conditioning, sampler, previews as the app's default options,
  decode with its NaN fallback, infotext, provenance, PNG encoding; ``save_images=False``). Capped workloads
  set ``memory_profile`` explicitly (auto reads the real card, not the cap).

Each side: 1 warm-up (``--warmup-steps``), then ``--runs`` timed runs: median and min seconds per image batch,
``torch.cuda.max_memory_allocated()`` peak (reset per side; includes the weights), NaN images (random fp16
weights can overflow: reported, never hidden). A memory cap (``torch.cuda.set_per_process_memory_fraction``)
simulates a smaller card; a side that runs out of memory reports OOM, which is a result. Each side starts from
an empty device (``gc``, ``empty_cache``, peak reset) and the JSON says what was still allocated; our model
stays loaded between consecutive sides that share a memory profile (caps ascending, so it was loaded under the
tightest). Vanilla runs all its sides of a family first, then ours: only one copy of the weights is ever on the
device.

Then the lifecycle table (app start, checkpoint load, switching, RSS, LoRA; ``benchmarks/lifecycle.py``) when
that module is present.

On a CPU (or with ``--tiny``) the same workloads run on tiny random-weight architectures at 1/8 of the size
(64/128/256 px; hires at most ×2), 4 steps, 1 timed run, without caps: a smoke run that proves the command
works; its times mean nothing.
Nothing here asserts a time. Figures hold only for the device printed in the header.

    .venv/bin/python benchmarks/speed_memory.py                      # everything (full size on a GPU)
    .venv/bin/python benchmarks/speed_memory.py --only sd15-512-b1,sd15-512-b4 --json /tmp/sm.json
    .venv/bin/python benchmarks/speed_memory.py --tiny                # CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_common import (GIB, PROMPT, SAMPLER, SEED, OursDecodeProbe, RedecodeCounter,  # noqa: E402
                                     SideResult, UNetNanProbe, allocated_gib, attention_name, build_random,
                                     device_name, failure, fmt, free_memory, nan_flags, param_counts_m, peak_gib,
                                     print_rows, reset_peak, set_memory_cap, sync, time_side, vanilla_pipeline,
                                     write_checkpoint)

log = logging.getLogger("speed_memory")

TINY_SCALE = 8  # tiny mode: sizes / 8 (the tiny VAE downsamples by 2, so latents are as small as the real ones/32)
TINY_STEPS = 4
TINY_MAX_HIRES = 2
HIRES_DENOISE = 0.5


@dataclass(frozen=True)
class Workload:
    """One generation workload. ``size`` is the first pass's width = height at full size; ``hires`` > 0 adds a
    hires-fix pass ×``hires`` (ours: ``enable_hr`` with the "Latent" upscaler at denoising 0.5). ``cap_gib``:
    simulated card (CUDA only); ``profile``: our ``memory_profile`` for it; ``vanilla``: how diffusers is placed
    ("plain" = ``pipe.to(device)``, "offload" = ``enable_model_cpu_offload``, "+tiling" = ``vae.enable_tiling``)."""

    name: str
    family: str  # "sd1" or "sdxl"
    size: int
    cfg: float
    batch: int = 1
    hires: int = 0
    cap_gib: float | None = None
    profile: str = "auto"
    vanilla: str = "plain"

    @property
    def geometry(self) -> tuple:
        """What makes two workloads the same work (a capped one and its uncapped reference)."""
        return self.family, self.size, self.cfg, self.batch, self.hires

    def describe(self, tiny: bool, steps: int) -> str:
        size = self.size // TINY_SCALE if tiny else self.size
        text = f"{'SDXL' if self.family == 'sdxl' else 'SD1.5'} {size}²"
        if self.hires:
            text += f"→{size * (min(self.hires, TINY_MAX_HIRES) if tiny else self.hires)}² hires"
        text += f", {steps} steps, CFG {self.cfg:g}, batch {self.batch}"
        return text


WORKLOADS = (
    Workload("sd15-512-b1", "sd1", 512, 7.5),
    Workload("sd15-512-b4", "sd1", 512, 7.5, batch=4),
    Workload("sd15-1024", "sd1", 1024, 7.5),
    Workload("sd15-hires", "sd1", 512, 7.5, hires=2),
    Workload("sdxl-1024", "sdxl", 1024, 7.0),
    Workload("sd15-512-4gb-cap4", "sd1", 512, 7.5, cap_gib=4, profile="4gb"),
    Workload("sd15-2048-8gb-cap8", "sd1", 512, 7.5, hires=4, cap_gib=8, profile="8gb", vanilla="plain+tiling"),
    Workload("sdxl-1024-8gb-cap8", "sdxl", 1024, 7.0, cap_gib=8, profile="8gb", vanilla="offload"),
    Workload("sdxl-1024-8gb-cap7", "sdxl", 1024, 7.0, cap_gib=7, profile="8gb", vanilla="plain"),
    Workload("sdxl-2048-8gb-cap8", "sdxl", 1024, 7.0, hires=2, cap_gib=8, profile="8gb", vanilla="offload+tiling"),
)
WORKLOAD_NAMES = tuple(w.name for w in WORKLOADS)
LIFECYCLE = "lifecycle"
COMPILE_ON = "sd15-512-b1"  # the workload that gets the "ours --compile" side


# ------------------------------------------------------------------------------------------ arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="tiny random architectures (default on a CPU)")
    size.add_argument("--full-size", action="store_true", help="real SD1.5/SDXL shapes (default on CUDA)")
    parser.add_argument("--only", default="", help=f"comma-separated names: {', '.join(WORKLOAD_NAMES)}, "
                                                   f"{LIFECYCLE} (default: all)")
    parser.add_argument("--precision", choices=("auto", "fp16", "bf16", "fp32"), default="auto",
                        help="both sides (our resolve_dtype rule: auto = fp16 on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 20; tiny: 4)")
    parser.add_argument("--runs", type=int, default=None,
                        help="timed runs per side, after 1 warm-up (default 3; tiny: 1, its times mean nothing)")
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="steps of the untimed warm-up run (0 = the workload's steps)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help=f"add an 'ours --compile' side to {COMPILE_ON} (auto: on CUDA only)")
    parser.add_argument("--skip-reference", default="",
                        help="capped workloads that get no 'ours uncapped' reference side (saves GPU minutes)")
    parser.add_argument("--cpu-threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own; tiny: 1, see the header)")
    parser.add_argument("--switches", type=int, default=20, help="lifecycle: checkpoint switches")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where to write the checkpoints (SDXL: ~7 GB)")
    parser.add_argument("--print-json", type=Path, default=None,
                        help="print the tables of a saved (or partial) JSON report and exit")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the JSON report (default: a new file in the temp dir)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    args.tiny = args.tiny or (args.device == "cpu" and not args.full_size)
    args.steps = args.steps or (TINY_STEPS if args.tiny else 20)
    args.runs = args.runs or (1 if args.tiny else 3)
    args.cpu_threads = args.cpu_threads or (1 if args.tiny else None)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or [*WORKLOAD_NAMES, LIFECYCLE]
    unknown = sorted(set(names) - {*WORKLOAD_NAMES, LIFECYCLE})
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(WORKLOAD_NAMES)}, {LIFECYCLE}")
    args.selected = names
    args.skip_reference = {n.strip() for n in args.skip_reference.split(",") if n.strip()}
    unknown = sorted(args.skip_reference - set(WORKLOAD_NAMES))
    if unknown:
        parser.error(f"--skip-reference: unknown {', '.join(unknown)}")
    if args.runs < 1 or args.steps < 1:
        parser.error("--runs and --steps must be at least 1")
    return args


@dataclass
class Context:
    """What every side needs to know about this run."""

    device: torch.device
    dtype: torch.dtype
    tiny: bool
    steps: int
    runs: int
    warmup_steps: int

    def px(self, size: int) -> int:
        return size // TINY_SCALE if self.tiny else size

    def hires(self, workload: Workload) -> int:
        """Tiny mode caps hires at ×2: the tiny VAE downsamples by 2, so ×4 to 256 px would put an attention
        over 128² latents (16k tokens) in the tiny UNet's first level, minutes on 2 cores for a smoke run."""
        return min(workload.hires, TINY_MAX_HIRES) if self.tiny else workload.hires

    def cap(self, workload: Workload) -> float | None:
        return workload.cap_gib if self.device.type == "cuda" else None


def unet_steps(workload: Workload, steps: int) -> int:
    """UNet sampling steps per image batch: the first pass plus, with hires fix, a second pass of as many."""
    return steps * (2 if workload.hires else 1)


# ------------------------------------------------------------------------------------------ device phases


def start_side(ctx: Context, result: SideResult, cap_gib: float | None) -> None:
    """Every side starts from a freed device, under its cap, with the peak counter reset."""
    free_memory(ctx.device)
    set_memory_cap(ctx.device, cap_gib)
    result.allocated_before_gib = allocated_gib(ctx.device)
    reset_peak(ctx.device)


def end_side(ctx: Context) -> None:
    free_memory(ctx.device)
    set_memory_cap(ctx.device, None)


# ------------------------------------------------------------------------------------------ vanilla


def run_vanilla(ctx: Context, workload: Workload, components: dict[str, torch.nn.Module]) -> SideResult:
    recipe = workload.vanilla
    if "offload" in recipe and ctx.device.type != "cuda":
        # diffusers' model offload needs an accelerator; the rest of the recipe still runs (the smoke run
        # exercises the SDXL img2img and tiling paths), and the name says what was left out.
        recipe = recipe.replace("offload+", "").replace("offload", "plain")
        result = SideResult(f"vanilla ({recipe}; offload skipped on CPU)")
    else:
        result = SideResult(f"vanilla ({recipe})" if recipe != "plain" else "vanilla")
    start_side(ctx, result, ctx.cap(workload))
    pipe = img2img = probe = None
    try:
        started = time.perf_counter()
        pipe = vanilla_pipeline(components, ctx.dtype)
        if workload.hires:  # the same module objects: placing or hooking one pipeline serves both
            img2img = vanilla_pipeline(components, ctx.dtype, img2img=True)
        if "tiling" in recipe:
            pipe.vae.enable_tiling()
        if "offload" in recipe:
            pipe.enable_model_cpu_offload(device=ctx.device)
        else:
            pipe.to(ctx.device)
        sync(ctx.device)
        result.load_s = time.perf_counter() - started
        result.attention = attention_name(pipe.unet)
        probe = UNetNanProbe(pipe.unet)
        flags = []
        size = ctx.px(workload.size)

        def run_once(steps: int) -> None:
            steps = steps or ctx.steps
            generator = torch.Generator("cpu" if "offload" in recipe else ctx.device).manual_seed(SEED)
            common = dict(prompt=PROMPT, guidance_scale=workload.cfg, num_images_per_prompt=workload.batch,
                          generator=generator)
            with torch.inference_mode():
                if not workload.hires:
                    out = pipe(**common, num_inference_steps=steps, height=size, width=size, output_type="np")
                else:
                    latents = pipe(**common, num_inference_steps=steps, height=size, width=size,
                                   output_type="latent").images
                    latents = torch.nn.functional.interpolate(latents, scale_factor=ctx.hires(workload),
                                                              mode="bilinear")
                    # strength 0.5 of steps / 0.5 scheduled steps runs ``steps`` UNet steps, as A1111's hires does.
                    out = img2img(**{**common, "num_images_per_prompt": 1}, image=latents,
                                  strength=HIRES_DENOISE, num_inference_steps=round(steps / HIRES_DENOISE),
                                  output_type="np")
            flags.append(nan_flags(out.images))
            pipe.numpy_to_pil(out.images)  # what output_type="pil" would do: same work as a default call

        time_side(result, run_once, ctx.runs, ctx.device, lambda: (probe.reset(), flags.clear()), ctx.warmup_steps)
        result.images = sum(len(f) for f in flags)
        result.nan_images = int(sum(f.sum() for f in flags))
        result.unet_calls, result.nan_unet_calls = probe.calls, probe.nan_count()
    except Exception as exc:  # noqa: BLE001 - an out-of-memory side is a result, not a crash
        result.error = failure(exc)
        if not result.error.startswith("OOM"):
            log.exception("vanilla side of %s failed", workload.name)
    finally:
        result.peak_allocated_gib = peak_gib(ctx.device)
        if probe is not None:
            probe.remove()
        if pipe is not None:  # the modules are shared with the next workloads: undo hooks, tiling, placement
            pipe.remove_all_hooks()
            pipe.vae.disable_tiling()
            pipe.to("cpu")
        pipe = img2img = None
        end_side(ctx)
    return result


# ------------------------------------------------------------------------------------------ ours


class Ours:
    """One ``build_services`` over a family's data dir, for one memory profile (and compile setting)."""

    def __init__(self, ctx: Context, data_dir: Path, profile: str, compile_: bool = False):
        from webui.config import Settings
        from webui.services.container import build_services

        extra = {"compile": True} if compile_ and settings_has("compile") else {}
        settings = Settings(data_dir=data_dir, device=str(ctx.device), precision=precision_of(ctx.dtype),
                            memory_profile=profile, allow_download=False, **extra)
        started = time.perf_counter()
        self.services = build_services(settings)  # includes hashing the file (cached in the data dir)
        self.startup_s = time.perf_counter() - started
        self.ctx = ctx
        self.title = self.services.registry.list()[0].title
        self.loaded = False

    def run(self, workload: Workload, name: str, cap_gib: float | None, check_compiled: bool = False) -> SideResult:
        from webui.types import Txt2ImgRequest

        ctx = self.ctx
        result = SideResult(name)
        start_side(ctx, result, cap_gib)
        probe = decode_probe = None
        redecodes = RedecodeCounter()
        decode_log = logging.getLogger("webui.pipelines.decode")
        decode_log.addHandler(redecodes)
        try:
            if not self.loaded:
                started = time.perf_counter()
                self.services.manager.select(self.title)  # file -> components -> memory plan -> device
                sync(ctx.device)
                result.load_s = time.perf_counter() - started
                self.loaded = True
            else:
                result.note = "model kept loaded from the previous side"
            report = self.services.manager.memory_report()
            if check_compiled and "compiled" not in report:
                result.error = ("not available: ModelManager.memory_report() has no 'compiled' field "
                                "(the torch.compile fast path is not in this build)")
                return result
            with self.services.manager.lease() as model:
                result.attention = report.get("attention") or attention_name(model.pipe.unet)
                probe = UNetNanProbe(model.pipe.unet)
            decode_probe = OursDecodeProbe()
            size = ctx.px(workload.size)
            request = Txt2ImgRequest(
                prompt=PROMPT, negative_prompt="", sampler_name=SAMPLER, scheduler="Karras", steps=ctx.steps,
                cfg_scale=workload.cfg, width=size, height=size, seed=SEED, batch_size=workload.batch, n_iter=1,
                save_images=False, enable_hr=bool(workload.hires), hr_scale=float(ctx.hires(workload) or 2),
                hr_upscaler="Latent", denoising_strength=HIRES_DENOISE if workload.hires else 0.75)
            previews: list[int] = []

            def run_once(steps: int) -> None:
                job = self.services.generation.submit_txt2img(
                    request.model_copy(update={"steps": steps}) if steps else request)
                job.wait()
                previews.append(job.progress.preview_id)  # previews made during this job

            def after_warmup() -> None:
                probe.reset()
                decode_probe.flags.clear()
                redecodes.count = 0
                previews.clear()

            time_side(result, run_once, ctx.runs, ctx.device, after_warmup, ctx.warmup_steps)
            result.images, result.nan_images = decode_probe.counts()
            result.unet_calls, result.nan_unet_calls = probe.calls, probe.nan_count()
            result.vae_fp32_redecodes = redecodes.count
            result.previews = sum(previews)
            report = self.services.manager.memory_report()
            result.note = "; ".join(filter(None, [
                result.note, f"profile {report.get('profile')}, {report.get('dtype')}",
                f"compiled {report['compiled']}" if "compiled" in report else ""]))
        except Exception as exc:  # noqa: BLE001 - an out-of-memory side is a result, not a crash
            result.error = failure(exc)
            if not result.error.startswith("OOM"):
                log.exception("our side of %s failed", workload.name)
            self.unload()  # after an error the next side loads afresh
        finally:
            result.peak_allocated_gib = peak_gib(ctx.device)
            decode_log.removeHandler(redecodes)
            if decode_probe is not None:
                decode_probe.remove()
            if probe is not None:
                probe.remove()
            end_side(ctx)
        return result

    def unload(self) -> None:
        self.services.manager.unload_all()
        self.loaded = False

    def close(self) -> None:
        self.unload()
        self.services.queue.shutdown()
        self.services = None
        free_memory(self.ctx.device)


def settings_has(name: str) -> bool:
    from webui.config import Settings

    return name in {f.name for f in dataclasses.fields(Settings)}


def precision_of(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]


# ------------------------------------------------------------------------------------------ one family


@dataclass
class Row:
    workload: Workload
    side: SideResult
    cap_gib: float | None
    kind: str  # "vanilla", "ours", "ours uncapped", "ours compile"


def ours_plan(ctx: Context, workloads: list[Workload], compile_: bool,
              skip_reference: set[str] = frozenset()) -> tuple[list, list[Row]]:
    """Our sides grouped by services (profile, compile), caps ascending within a group so the model is loaded
    under the tightest cap it will meet, and the rows that are skipped. A capped workload also gets an uncapped
    reference side unless an uncapped workload of the same geometry is selected (or its name is in
    ``skip_reference``). Without CUDA there is no cap: the capped side is reported as skipped and only its
    uncapped reference runs."""
    uncapped = {w.geometry for w in workloads if w.cap_gib is None}
    groups: dict[tuple[str, bool], list] = {}
    skipped: list[Row] = []
    for w in workloads:
        if w.cap_gib is None:
            groups.setdefault(("auto", False), []).append((w, "ours", None, "ours"))
        else:
            name = f"ours ({w.profile})"
            if ctx.cap(w) is not None:
                groups.setdefault((w.profile, False), []).append((w, name, w.cap_gib, "ours"))
            else:
                skipped.append(Row(w, SideResult(name, error="skipped: no memory cap without CUDA"), None, "ours"))
            if w.geometry not in uncapped and w.name not in skip_reference:
                groups.setdefault(("auto", False), []).append((w, "ours uncapped", None, "ours uncapped"))
                uncapped.add(w.geometry)
        if compile_ and w.name == COMPILE_ON:
            groups.setdefault(("auto", True), []).append((w, "ours --compile", None, "ours compile"))
    for sides in groups.values():
        sides.sort(key=lambda side: side[2] or float("inf"))
    return list(groups.items()), skipped


def run_family(ctx: Context, family: str, workloads: list[Workload], workdir: Path, compile_: bool,
               skip_reference: set[str], header: dict, rows: list[Row], save: Callable[[], None]) -> None:
    """Build, write and measure one family; each finished side is appended to ``rows`` and ``save()``d, so a run
    stopped by a time limit keeps what it measured."""
    started = time.perf_counter()
    build_on = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")  # GPU init: seconds, not minutes
    components = build_random(family, ctx.tiny, device=build_on)
    counts = param_counts_m(components)
    data_dir = workdir / family
    checkpoint = data_dir / "models" / "Stable-diffusion" / f"{family}-random.safetensors"
    write_checkpoint(components, checkpoint)
    components = {name: module.to("cpu") for name, module in components.items()}
    free_memory(ctx.device)
    setup = (f"params (M) {', '.join(f'{k} {v}' for k, v in counts.items())}; {checkpoint.stat().st_size / GIB:.2f} "
             f"GiB fp16 LDM single file, built + written in {time.perf_counter() - started:.0f} s")
    header[f"{family} model"] = setup
    print(f"[{family}] {setup}", flush=True)

    for w in workloads:  # vanilla first, over the in-memory modules
        side = run_vanilla(ctx, w, components)
        rows.append(Row(w, side, ctx.cap(w), "vanilla"))
        save()
        print(f"[{w.name}] {side.name}: median {fmt(side.median_s)} s {side.error or ''}", flush=True)
    del components
    free_memory(ctx.device)

    groups, skipped = ours_plan(ctx, workloads, compile_, skip_reference)
    rows += skipped
    for (profile, with_compile), sides in groups:
        ours = None
        try:
            try:
                ours = Ours(ctx, data_dir, profile, with_compile)
            except Exception as exc:  # noqa: BLE001 - reported on each of its sides; the other groups still run
                log.exception("build_services failed for profile %s", profile)
                rows.extend(Row(w, SideResult(name, error=failure(exc)), cap, kind) for w, name, cap, kind in sides)
                save()
                continue
            header[f"{family} ours startup ({profile}{', compile' if with_compile else ''})"] = \
                f"{ours.startup_s:.2f} s (build_services, incl. hashing the file once per data dir)"
            for w, name, cap, kind in sides:
                side = ours.run(w, name, cap, check_compiled=with_compile)
                rows.append(Row(w, side, cap, kind))
                save()
                print(f"[{w.name}] {side.name}: median {fmt(side.median_s)} s {side.error or ''}", flush=True)
        finally:
            if ours is not None:
                ours.close()
    shutil.rmtree(data_dir, ignore_errors=True)  # SDXL's file is ~7 GB


# ------------------------------------------------------------------------------------------ report


def ratios(rows: list[Row]) -> dict[int, dict[str, float]]:
    """Per row: ``vs_vanilla`` (this side's median / the workload's vanilla median) and, for capped ours sides,
    ``vs_uncapped`` (/ ours uncapped on the same geometry)."""
    vanilla = {r.workload.name: r.side.median_s for r in rows if r.kind == "vanilla" and r.side.median_s}
    uncapped = {r.workload.geometry: r.side.median_s for r in rows
                if r.kind in ("ours", "ours uncapped") and r.cap_gib is None and r.side.median_s}
    out: dict[int, dict[str, float]] = {}
    for index, r in enumerate(rows):
        m = r.side.median_s
        if m is None:
            continue
        entry = {}
        if r.kind != "vanilla" and vanilla.get(r.workload.name):
            entry["vs_vanilla"] = m / vanilla[r.workload.name]
        if r.kind == "ours" and r.cap_gib is not None and uncapped.get(r.workload.geometry):
            entry["vs_uncapped"] = m / uncapped[r.workload.geometry]
        out[index] = entry
    return out


COMFYUI_SD15_512_S = 0.60  # PERF.md: ComfyUI 0.3.64, SD1.5 512² batch 1, H100, native allocator
CAPPED_LIMITS = {"sd15-512-4gb-cap4": 1.3, "sdxl-1024-8gb-cap8": 1.25, "sdxl-1024-8gb-cap7": 1.5}
SWITCH_LIMIT_S = 1.0


def targets(rows: list[Row], ctx: Context, lifecycle: dict | None = None) -> list[dict]:
    """The issue's targets read off this run: value, limit and whether it is met (None on a CPU or with tiny
    models, where the figures say nothing about them). Nothing is asserted. A capped side that failed (OOM) is
    listed with no value and not met; targets whose sides were not run are left out."""
    def median(name: str, kind: str) -> float | None:
        return next((r.side.median_s for r in rows if r.workload.name == name and r.kind == kind), None)

    def check(target: str, value: float | None, limit: float) -> dict:
        return {"target": target, "value": value, "limit": limit,
                "met": None if value is None else bool(value <= limit)}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    found = [
        check("sd15-512-b1 ours/vanilla (≥2.5× faster)", ratio(median("sd15-512-b1", "ours"),
                                                              median("sd15-512-b1", "vanilla")), 0.4),
        check("sd15-512-b1 ours --compile/vanilla (≥2.5× faster)",
              ratio(median("sd15-512-b1", "ours compile"), median("sd15-512-b1", "vanilla")), 0.4),
        check(f"sd15-512-b1 best of ours, s (ComfyUI {COMFYUI_SD15_512_S} s, H100)",
              min(filter(None, [median("sd15-512-b1", "ours"), median("sd15-512-b1", "ours compile")]), default=None),
              COMFYUI_SD15_512_S),
        check("sd15-512-b4 / sd15-512-b1, ours (≤1.3)", ratio(median("sd15-512-b4", "ours"),
                                                             median("sd15-512-b1", "ours")), 1.3),
        check("sd15-512-b4 / sd15-512-b1, vanilla (≤1.3)", ratio(median("sd15-512-b4", "vanilla"),
                                                                median("sd15-512-b1", "vanilla")), 1.3),
    ]
    table = ratios(rows)
    for index, r in enumerate(rows):
        if r.kind != "ours" or r.cap_gib is None:
            continue
        if r.workload.name in CAPPED_LIMITS:
            limit = CAPPED_LIMITS[r.workload.name]
            entry = check(f"{r.workload.name} ours capped/uncapped (≤{limit:g})",
                          table.get(index, {}).get("vs_uncapped"), limit)
        else:  # the 2048² workloads: faster than diffusers' own answer (tiled decode) under the same cap
            entry = check(f"{r.workload.name} ours/vanilla tiled (<1)", table.get(index, {}).get("vs_vanilla"), 1.0)
        if r.side.error:
            entry.update(met=False, error=r.side.error)
        found.append(entry)
    switch = next((row for row in (lifecycle or {}).get("rows", [])
                   if "switch" in str(row.get("measure", "")) and "seen" in str(row.get("measure", ""))), None)
    if switch is not None and switch.get("unit") == "s":
        found.append(check(f"{switch['measure']}, s (≤{SWITCH_LIMIT_S:g} s on a GPU)", switch.get("value"),
                           SWITCH_LIMIT_S))
    if ctx.device.type != "cuda" or ctx.tiny:
        for entry in found:
            entry["met"] = None
    return [entry for entry in found if entry["value"] is not None or "error" in entry]


def print_report(report: dict) -> None:
    """The table, the targets and the lifecycle table, from the JSON report (so a saved or partial report prints
    the same way: ``--print-json``)."""
    print()
    for key, value in report["header"].items():
        print(f"{key:<20} {value}")
    if not report.get("complete", True):
        print("\nINCOMPLETE: the run stopped before its end; these are the sides it finished.")
    print()
    on_cpu = report.get("device_type") != "cuda"
    lines = [("workload", "side", "cap", "median s", "s/image", "steps/s", "peak GiB", "vs vanilla",
              "vs uncapped", "previews", "NaN img", "status")]
    order = {name: i for i, name in enumerate(WORKLOAD_NAMES)}
    kinds = ("vanilla", "ours", "ours compile", "ours uncapped")
    for row in sorted(report["rows"], key=lambda r: (order.get(r["workload"], 99), kinds.index(r["kind"]))):
        m = row["median_s"]
        if row["cap_gib"]:
            cap = f"{row['cap_gib']:g} GiB"
        elif row.get("workload_cap_gib") and row["kind"] != "ours uncapped" and on_cpu:
            cap = "none (CPU)"  # a capped workload's side, run uncapped (vanilla) or skipped (ours)
        else:
            cap = "-"
        lines.append((row["workload"], row["name"], cap, fmt(m), fmt(m / row["batch"] if m else None),
                      fmt(row["unet_steps"] / m if m else None, ".2f"), fmt(row["peak_allocated_gib"], ".2f"),
                      fmt(row.get("vs_vanilla"), ".3f", "-"), fmt(row.get("vs_uncapped"), ".3f", "-"),
                      "-" if row["previews"] is None else str(row["previews"]),
                      f"{row['nan_images']}/{row['images']}" if row["images"] or not row["error"] else "-",
                      row["error"] or "ok"))
    print_rows(lines)
    if report["targets"]:
        print("\ntargets (issue 13; ratios from this run" +
              (", NOT meaningful on a CPU or with tiny models)" if on_cpu or report.get("tiny") else ")"))
        for entry in report["targets"]:
            met = {True: "met", False: "NOT met", None: "-"}[entry["met"]]
            value = fmt(entry["value"], ".3f", entry.get("error", "n/a")[:40])
            print(f"  {entry['target']:<56} {value}  (limit {entry['limit']:g})  {met}")
    if any(row["nan_images"] for row in report["rows"]):
        print("\nnote: NaN images come from random fp16 weights overflowing; the time is unaffected, but ours may "
              "spend extra time on its fp32 VAE re-decode when the VAE overflows (see vae_fp32_redecodes).")
    print()
    lifecycle = report.get("lifecycle") or {}
    if "rows" in lifecycle:
        print("lifecycle (benchmarks/lifecycle.py)")
        lines = [("measure", "value", "unit", "note")]
        lines += [(str(row.get("measure")), fmt(row.get("value")), str(row.get("unit", "")), str(row.get("note", "")))
                  for row in lifecycle["rows"]]
        print_rows(lines)
    elif lifecycle:
        print(f"lifecycle: {lifecycle.get('error')}")


def run_lifecycle_section(ctx: Context, workdir: Path, switches: int) -> dict:
    """benchmarks/lifecycle.py's rows, if that module is here (it comes from another branch)."""
    try:
        from benchmarks.lifecycle import run_lifecycle
    except ImportError as exc:
        return {"error": f"not available (benchmarks/lifecycle.py: {exc})"}
    try:
        (workdir / "lifecycle").mkdir(parents=True, exist_ok=True)
        rows = run_lifecycle(str(ctx.device), not ctx.tiny, workdir / "lifecycle", switches=switches)
    except Exception as exc:  # noqa: BLE001 - one section failing must not lose the generation table
        log.exception("lifecycle failed")
        return {"error": failure(exc)}
    return {"rows": rows}


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_json:
        print_report(json.loads(args.print_json.read_text()))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import diffusers
    import transformers

    from webui.models.memory import resolve_dtype

    if args.cpu_threads:
        # Tiny mode runs one thread: on a shared 2-core VM, two-thread OpenMP regions stalled whenever another
        # process held a core (a tiny UNet call took 1.65 s instead of 0.06 s, at random, on either side).
        torch.set_num_threads(args.cpu_threads)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.precision, device)  # the rule ours applies, so both sides run the same dtype
    ctx = Context(device, dtype, args.tiny, args.steps, args.runs, args.warmup_steps)
    compile_ = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    header = {
        "device": device_name(device),
        "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
                    f"transformers {transformers.__version__}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "TINY random-weight models at 1/8 size (smoke run: times mean nothing)" if args.tiny
                else "full-size random-weight SD1.5 / SDXL",
        "dtype": str(dtype).removeprefix("torch."),
        "cpu threads": f"{torch.get_num_threads()}" + (" (--cpu-threads)" if args.cpu_threads else ""),
        "method": f"1 warm-up ({args.warmup_steps or args.steps} steps) + {args.runs} timed runs per side, "
                  f"{args.steps} steps {SAMPLER} Karras, seed {SEED}; vanilla sides first, then ours",
        "memory caps": "set_per_process_memory_fraction per side" if device.type == "cuda"
                       else "none on a CPU: capped workloads run only uncapped (vanilla recipe, ours reference)",
        "compile side": (f"ours --compile on {COMPILE_ON}" if compile_ else "off") +
                        ("" if settings_has("compile") else " (not available: Settings has no 'compile')"),
    }
    selected = [w for w in WORKLOADS if w.name in args.selected]
    workdir = Path(tempfile.mkdtemp(prefix="speed-memory-", dir=args.tmp_dir))
    path = args.json or Path(tempfile.gettempdir()) / f"speed_memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    lifecycle: dict = {}

    def save(complete: bool = False) -> dict:
        return write_report(path, header, args, rows, ctx, lifecycle, complete)

    try:
        for family in ("sd1", "sdxl"):
            workloads = [w for w in selected if w.family == family]
            if workloads:
                run_family(ctx, family, workloads, workdir, compile_, args.skip_reference, header, rows, save)
        if LIFECYCLE in args.selected:
            lifecycle = run_lifecycle_section(ctx, workdir, args.switches)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(save(complete=True))
    print(f"JSON written to {path}")
    errors = [r for r in rows if r.side.error and r.side.error.startswith("ERROR")]
    return 1 if errors or "ERROR" in str(lifecycle.get("error", "")) else 0


def write_report(path: Path, header: dict, args: argparse.Namespace, rows: list[Row], ctx: Context,
                 lifecycle: dict, complete: bool) -> dict:
    """The JSON report; written after every side (``complete`` false until the end), atomically."""
    table = ratios(rows)
    report = {
        "complete": complete,
        "device_type": ctx.device.type,
        "tiny": ctx.tiny,
        "header": header,
        "args": {k: sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v
                 for k, v in vars(args).items()},
        "rows": [{"workload": r.workload.name, "describe": r.workload.describe(ctx.tiny, ctx.steps),
                  "kind": r.kind, "cap_gib": r.cap_gib, "workload_cap_gib": r.workload.cap_gib, "unet_steps": unet_steps(r.workload, ctx.steps),
                  "batch": r.workload.batch, **r.side.as_json(), **table.get(index, {})}
                 for index, r in enumerate(rows)],
        "targets": targets(rows, ctx, lifecycle),
        "lifecycle": lifecycle,
    }
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(report, indent=1, default=str))
    partial.replace(path)
    return report


if __name__ == "__main__":
    sys.exit(main())
