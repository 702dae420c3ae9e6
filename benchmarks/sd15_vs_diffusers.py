"""SD1.5 txt2img, side by side in one process: Stable Studio's real path versus vanilla diffusers.

Method (see /work/shared/PERF.md):

* Build the real SD1.5 architecture with RANDOM weights (UNet 859.5 M, VAE 83.7 M, CLIP-L text 123.1 M params)
  in fp16. Speed and memory depend on the architecture, not on the weight values.
* Write them as ONE single-file checkpoint in the original LDM layout (``pipeline_components_to_ldm``) into a
  temporary data dir, the way a user drops a ``.safetensors`` file into ``models/Stable-diffusion``.
* vanilla: ``StableDiffusionPipeline`` built from the same in-memory modules, ``DPMSolverMultistepScheduler``
  (DPM++ 2M, Karras sigmas unless ``--schedule`` says otherwise), SDPA attention, ``pipe.to(device)``.
* ours: ``build_services(Settings(...))`` on that data dir; the checkpoint is loaded by our loader/manager and
  each image batch goes through ``services.generation.txt2img(Txt2ImgRequest(...))`` (queue, conditioning,
  scheduler, step callback with previews, decode with its NaN fallback, PIL conversion), ``save_images=False``.
* Same prompt, size, steps, CFG 7.5, seed and batch on both sides. Each side: 1 warm-up, then ``--runs`` timed
  runs; median and min seconds per image batch, ``torch.cuda.max_memory_allocated()`` peak (reset between
  sides, includes the weights), and how many images came out NaN (random fp16 weights can overflow: that does
  not change the time, but it is reported, never hidden).
* Order: vanilla FIRST, then ours (vanilla reuses the freshly built modules; they are freed before ours loads
  the file, so only one copy of the weights is alive at a time).
* ``--memory-gib`` caps the process with ``torch.cuda.set_per_process_memory_fraction`` to simulate a smaller
  card: allocations past it raise out-of-memory as on a real card. A side that runs out reports OOM.
  Our ``--profile auto`` picks from the memory free at load time, which the cap limits too; ``--profile 8gb``
  forces what an 8 GB card would get.

Figures are only valid on the device named in the output (and only on a GPU: CPU runs are smoke tests).
This script is not a test and nothing under ``tests/`` imports it.

    .venv/bin/python benchmarks/sd15_vs_diffusers.py --json /tmp/sd15_vs_diffusers.json
    .venv/bin/python benchmarks/sd15_vs_diffusers.py --device cpu --size 128 --steps 2 --runs 1   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_common import (GIB, PROMPT, SAMPLER, SEED, OursDecodeProbe, RedecodeCounter,  # noqa: E402
                                     SideResult, UNetNanProbe, attention_name, build_random_sd15,
                                     check_param_counts, device_name, failure, fmt, free_memory, param_counts_m,
                                     peak_gib, print_rows, reset_peak, set_memory_cap, sync, time_side,
                                     vanilla_pipeline, write_checkpoint)

CFG = 7.5


# ----------------------------------------------------------------------------------------- arguments


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("auto", "fp16", "bf16", "fp32"), default="auto",
                        help="both sides; auto = fp16 on CUDA, fp32 on CPU (our resolve_dtype)")
    parser.add_argument("--size", type=int, default=512, help="width = height in pixels (multiple of 8)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side, after 1 warm-up")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="steps of the untimed warm-up run (0 = --steps); fewer saves minutes on a CPU")
    parser.add_argument("--memory-gib", type=float, default=8.0,
                        help="simulate a card with this much memory (CUDA only); 0 = no cap")
    parser.add_argument("--profile", choices=("auto", "8gb", "4gb"), default="auto", help="our memory profile")
    parser.add_argument("--schedule", choices=("Karras", "Automatic"), default="Karras",
                        help="ours; for DPM++ 2M both mean Karras sigmas, which vanilla then uses too")
    parser.add_argument("--preview-every", type=int, default=None,
                        help="ours: live preview every N steps (default: the app's Settings default)")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where to write the ~2 GB checkpoint")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    if args.size % 8:
        parser.error("--size must be a multiple of 8")
    return args


def run_dtype(precision: str, device: torch.device) -> torch.dtype:
    from webui.models.memory import resolve_dtype

    return resolve_dtype(precision, device)  # the same rule ours applies, so both sides run the same dtype


# ------------------------------------------------------------------------------------------ vanilla


def run_vanilla(components: dict[str, torch.nn.Module], args: argparse.Namespace, device: torch.device,
                dtype: torch.dtype) -> SideResult:
    result = SideResult("vanilla diffusers")
    reset_peak(device)
    pipe = probe = None
    try:
        pipe = vanilla_pipeline(components, dtype, karras=args.schedule in ("Karras", "Automatic")).to(device)
        result.attention = attention_name(pipe.unet)
        probe = UNetNanProbe(pipe.unet)
        nan_flags: list[np.ndarray] = []

        def run_once(steps: int) -> None:
            generator = torch.Generator(device).manual_seed(SEED)
            with torch.inference_mode():
                out = pipe(PROMPT, num_inference_steps=steps or args.steps, guidance_scale=CFG, height=args.size,
                           width=args.size, num_images_per_prompt=args.batch, generator=generator,
                           output_type="np")
            nan_flags.append(np.isnan(out.images).reshape(len(out.images), -1).any(axis=1))
            pipe.numpy_to_pil(out.images)  # what output_type="pil" would do: same work as a default call

        time_side(result, run_once, args.runs, device, after_warmup=lambda: (probe.reset(), nan_flags.clear()),
                  warmup_steps=args.warmup_steps)
        result.images = sum(len(f) for f in nan_flags)
        result.nan_images = int(sum(f.sum() for f in nan_flags))
        result.unet_calls, result.nan_unet_calls = probe.calls, probe.nan_count()
        result.peak_allocated_gib = peak_gib(device)
    except Exception as exc:  # noqa: BLE001 - an OOM side is a result, not a crash
        result.error = failure(exc)
        result.peak_allocated_gib = peak_gib(device)
        logging.exception("vanilla side failed")
    finally:
        if probe is not None:
            probe.remove()
        pipe = None  # drop the last reference so main can free the weights
    return result


# ----------------------------------------------------------------------------------------------- ours


def run_ours(checkpoint: Path, args: argparse.Namespace, device: torch.device) -> tuple[SideResult, dict]:
    from webui.config import Settings
    from webui.services.container import build_services
    from webui.types import Txt2ImgRequest

    result = SideResult("ours (Stable Studio)")
    info: dict = {}
    reset_peak(device)
    services = probe = decode_probe = None
    redecodes = RedecodeCounter()
    logging.getLogger("webui.pipelines.decode").addHandler(redecodes)
    try:
        settings = Settings(data_dir=checkpoint.parents[2], device=args.device, precision=args.precision,
                            memory_profile=args.profile, allow_download=False)
        start = time.perf_counter()
        services = build_services(settings)  # includes hashing the file (cached per path/size/mtime)
        info["startup_incl_hash_s"] = time.perf_counter() - start
        if args.preview_every is not None:  # A1111's option, as the Settings tab sets it
            services.options.update({"show_progress_every_n_steps": args.preview_every})
        title = services.registry.list()[0].title
        start = time.perf_counter()
        services.manager.select(title)  # loader + manager: file -> components -> memory plan -> device
        sync(device)
        result.load_s = time.perf_counter() - start
        with services.manager.lease() as model:
            result.attention = attention_name(model.pipe.unet)
            probe = UNetNanProbe(model.pipe.unet)
        info.update(profile=services.manager.profile, dtype=str(services.manager.dtype).removeprefix("torch."),
                    preview_every=services.options.value("show_progress_every_n_steps"))
        decode_probe = OursDecodeProbe()
        request = Txt2ImgRequest(prompt=PROMPT, negative_prompt="", sampler_name=SAMPLER, scheduler=args.schedule,
                                 steps=args.steps, cfg_scale=CFG, width=args.size, height=args.size, seed=SEED,
                                 batch_size=args.batch, n_iter=1, save_images=False)

        def run_once(steps: int) -> None:
            services.generation.txt2img(request.model_copy(update={"steps": steps}) if steps else request)

        def after_warmup() -> None:
            probe.reset()
            decode_probe.flags.clear()
            redecodes.count = 0

        time_side(result, run_once, args.runs, device, after_warmup, warmup_steps=args.warmup_steps)
        result.images = sum(len(f) for f in decode_probe.flags)
        result.nan_images = int(sum(int(f.sum()) for f in decode_probe.flags))
        result.unet_calls, result.nan_unet_calls = probe.calls, probe.nan_count()
        result.vae_fp32_redecodes = redecodes.count
        result.peak_allocated_gib = peak_gib(device)
    except Exception as exc:  # noqa: BLE001 - an OOM side is a result, not a crash
        result.error = failure(exc)
        result.peak_allocated_gib = peak_gib(device)
        logging.exception("our side failed")
    finally:
        logging.getLogger("webui.pipelines.decode").removeHandler(redecodes)
        if decode_probe is not None:
            decode_probe.remove()
        if probe is not None:
            probe.remove()
        if services is not None:
            services.manager.unload_all()
            services.queue.shutdown()
        services = None
    return result, info


# ------------------------------------------------------------------------------------------- report


def print_table(sides: list[SideResult], header: dict) -> None:
    for key, value in header.items():
        print(f"{key:<18} {value}")
    print()
    rows = [("side", "median s", "min s", "warm-up s", "peak alloc GiB", "NaN images", "NaN UNet calls",
             "attention", "status")]
    for s in sides:
        rows.append((s.name, fmt(s.median_s), fmt(s.min_s), fmt(s.warmup_s), fmt(s.peak_allocated_gib, ".2f"),
                     f"{s.nan_images}/{s.images}", f"{s.nan_unet_calls}/{s.unet_calls}", s.attention or "-",
                     s.error or "ok"))
    print_rows(rows)
    vanilla, ours = sides
    if vanilla.median_s and ours.median_s:
        print(f"\nratio ours/vanilla: median {ours.median_s / vanilla.median_s:.3f}x, "
              f"min {ours.min_s / vanilla.min_s:.3f}x (< 1 means ours is faster)")
        if vanilla.peak_allocated_gib and ours.peak_allocated_gib:
            print(f"peak memory ours/vanilla: {ours.peak_allocated_gib / vanilla.peak_allocated_gib:.3f}x")
    if ours.load_s is not None:
        print(f"ours: checkpoint load (file in page cache) {ours.load_s:.2f} s; "
              f"fp32 VAE re-decodes after fp16 NaN: {ours.vae_fp32_redecodes}")
    if any(s.nan_images for s in sides):
        print("note: NaN images come from random fp16 weights overflowing; timing is unaffected, "
              "but ours may spend extra time on its fp32 VAE re-decode when the VAE (not the UNet) overflows.")


def ratios(sides: list[SideResult]) -> dict:
    vanilla, ours = sides
    if not (vanilla.median_s and ours.median_s):
        return {}
    out = {"median_ours_over_vanilla": ours.median_s / vanilla.median_s,
           "min_ours_over_vanilla": ours.min_s / vanilla.min_s}
    if vanilla.peak_allocated_gib and ours.peak_allocated_gib:
        out["peak_ours_over_vanilla"] = ours.peak_allocated_gib / vanilla.peak_allocated_gib
    return out


# --------------------------------------------------------------------------------------------- main


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import diffusers
    import transformers

    device = torch.device(args.device)
    dtype = run_dtype(args.precision, device)
    cap = set_memory_cap(device, args.memory_gib)
    workdir = Path(tempfile.mkdtemp(prefix="sd15-bench-", dir=args.tmp_dir))
    header = {
        "device": device_name(device),
        "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "workload": f"SD1.5 {args.size}x{args.size}, {args.steps} steps {SAMPLER} ({args.schedule}), "
                    f"CFG {CFG}, batch {args.batch}, seed {SEED}",
        "dtype": str(dtype).removeprefix("torch."),
        "memory cap": cap,
        "method": f"1 warm-up ({args.warmup_steps or args.steps} steps) + {args.runs} timed runs per side; order: vanilla FIRST, then ours",
    }
    try:
        started = time.perf_counter()
        components = build_random_sd15(device=device)  # random init: seconds on a GPU, minutes on a CPU
        counts = param_counts_m(components)
        check_param_counts("sd1", counts)
        checkpoint = write_checkpoint(components, workdir / "models" / "Stable-diffusion" / "sd15-random.safetensors")
        header["params (M)"] = ", ".join(f"{k} {v}" for k, v in counts.items())
        header["checkpoint"] = f"{checkpoint.stat().st_size / GIB:.2f} GiB fp16 LDM single file, random weights " \
                               f"(built + written in {time.perf_counter() - started:.0f} s)"
        print(f"[setup] {header['params (M)']}; {header['checkpoint']}", flush=True)

        vanilla = run_vanilla(components, args, device, dtype)
        print(f"[vanilla] done: median {fmt(vanilla.median_s)} s {vanilla.error or ''}", flush=True)
        del components
        free_memory(device)
        if device.type == "cuda":
            header["left after vanilla"] = f"{torch.cuda.memory_allocated(device) / GIB:.2f} GiB still allocated " \
                                           "when ours started (should be ~0)"

        ours, ours_info = run_ours(checkpoint, args, device)
        print(f"[ours] done: median {fmt(ours.median_s)} s {ours.error or ''}", flush=True)
        free_memory(device)
        header["ours"] = ", ".join(f"{k} {v if not isinstance(v, float) else round(v, 2)}"
                                   for k, v in ours_info.items())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    sides = [vanilla, ours]
    print_table(sides, header)
    if args.json:
        report = {"header": header, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "sides": [s.as_json() for s in sides],
                  "ratios": ratios(sides)}
        args.json.write_text(json.dumps(report, indent=1))
        print(f"\nJSON written to {args.json}")
    return 1 if any(s.error for s in sides) else 0


if __name__ == "__main__":
    sys.exit(main())
