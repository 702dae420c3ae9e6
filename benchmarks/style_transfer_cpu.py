"""CPU time of CycleGAN / pix2pix style transfer, full-size random-weight generators (figures for notes, not tests).

Builds the release's default generators (CycleGAN ``resnet_9blocks``, instance norm; pix2pix ``unet_256``, batch
norm; ngf 64), then times ``transfer`` on images of a few sizes: median of ``--runs`` after one warm-up.

    .venv/bin/python benchmarks/style_transfer_cpu.py --runs 5 --json /tmp/style_cpu.json
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from webui.models.gan import ResnetGenerator, UnetGenerator  # noqa: E402
from webui.pipelines.style_transfer import transfer  # noqa: E402


def generators() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "CycleGAN resnet_9blocks (instance)": ResnetGenerator(3, 3, ngf=64, norm="instance", n_blocks=9).eval(),
        "pix2pix unet_256 (batch)": UnetGenerator(3, 3, num_downs=8, ngf=64, norm="batch", use_dropout=True).eval(),
    }


def time_transfer(model: torch.nn.Module, image: Image.Image, runs: int, tile: int) -> list[float]:
    transfer(model, image, tile=tile)  # warm-up: allocator and oneDNN kernel selection
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        transfer(model, image, tile=tile)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="256,512,1024", help="square sizes; 1024 runs as 4+ tiles of 512")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'generator':38} {'params':>8} {'size':>9} {'median s':>9} {'min s':>7}")
    for name, model in generators().items():
        params = sum(p.numel() for p in model.parameters())
        for size in (int(s) for s in args.sizes.split(",")):
            image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            times = time_transfer(model, image, args.runs, args.tile)
            rows.append({"generator": name, "params": params, "size": size, "tile": args.tile,
                         "median_s": statistics.median(times), "min_s": min(times), "runs": times})
            print(f"{name:38} {params / 1e6:7.2f}M {size:>4}x{size:<4} {statistics.median(times):9.3f} "
                  f"{min(times):7.3f}")
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
