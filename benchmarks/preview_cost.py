"""What one live preview costs by ``show_progress_type``: Approx cheap, TAESD and Full (figures for notes, not tests).

Draws the preview of one random latent exactly as a job does (``webui.pipelines.preview.render``, resized to the
output's size) with full-size random-weight networks: SD 1.5's VAE for "Full", madebyollin's TAESD decoder
architecture for "TAESD". Prints a table (median and min seconds per preview, ratio to Full) and writes JSON.

    .venv/bin/python benchmarks/preview_cost.py --size 512 --runs 3 --json /tmp/preview_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from webui.pipelines.preview import APPROX_CHEAP, FULL, TAESD, render  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def networks(device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL
    from diffusers.models.autoencoders.vae import DecoderTiny

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=512, scaling_factor=0.18215)
    tiny = DecoderTiny(in_channels=4, out_channels=3, num_blocks=(3, 3, 3, 1), block_out_channels=(64,) * 4,
                       upsampling_scaling_factor=2, act_fn="relu", upsample_fn="nearest")
    return vae.to(device, dtype).eval(), tiny.to(device, dtype).eval()


def time_method(method: str, latents, size, vae, tiny, runs: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(runs + 1):  # the first run warms up (allocator, kernels) and is not counted
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        render(latents, "sd1", size, method, vae, tiny)
        times.append(time.perf_counter() - start)
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="default: fp16 on CUDA, fp32 on the CPU")
    parser.add_argument("--size", type=int, default=512, help="output side in pixels (latent: size / 8)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    vae, tiny = networks(device, dtype)
    generator = torch.Generator("cpu").manual_seed(1)
    latents = torch.randn(1, 4, args.size // 8, args.size // 8, generator=generator).to(device, dtype)
    size = (args.size, args.size)
    rows = []
    for method in (APPROX_CHEAP, TAESD, FULL):
        times = time_method(method, latents, size, vae, tiny, args.runs, device)
        rows.append({"method": method, "median_s": statistics.median(times), "min_s": min(times), "runs": times})
    full = next(r["median_s"] for r in rows if r["method"] == FULL)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"One live preview at {args.size}x{args.size} on {device} ({str(dtype).removeprefix('torch.')}; {machine})")
    print(f"{'method':<14}{'median s':>10}{'min s':>10}{'x Full':>9}")
    for row in rows:
        print(f"{row['method']:<14}{row['median_s']:>10.4f}{row['min_s']:>10.4f}{row['median_s'] / full:>9.3f}")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "dtype": str(dtype), "size": args.size,
                                         "machine": machine, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
