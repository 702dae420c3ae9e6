"""``--compile`` with Inductor: compiled and eager images compared, and what compiling costs, cold and cached.

The unit tests (tests/test_fast_path.py) compile with the "aot_eager" backend, which generates no code; this script
runs the app's real path (``fast_path.compile_unet`` with Inductor, the mode it picks for the device) on the tiny
random-weight SD1.x model, in a fresh Inductor cache directory and then again in the same (cached) one, each in a
new process so the in-memory caches do not count:

    .venv/bin/python benchmarks/compile_check.py                 # CPU
    .venv/bin/python benchmarks/compile_check.py --device cuda   # GPU ("reduce-overhead": CUDA graphs)

It prints, per run: seconds to compile (the warm-up forward at load), seconds per image eager and compiled, and the
largest pixel difference between the two images (0..255). Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(device_name: str, steps: int, size: int) -> dict:
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import tiny_sd1_components
    from webui.models import fast_path

    device = torch.device(device_name)

    def pipe():
        p = StableDiffusionPipeline(**tiny_sd1_components(seed=0), safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
        return p.to(device)

    def image(p) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = p("a red cube", num_inference_steps=steps, height=size, width=size, output_type="np",
                    generator=torch.Generator(device).manual_seed(11)).images[0]
        return (out * 255).round().astype(np.int16), time.perf_counter() - start

    eager_pipe, compiled_pipe = pipe(), pipe()
    eager, _ = image(eager_pipe)
    eager, eager_s = image(eager_pipe)
    start = time.perf_counter()
    ok = fast_path.compile_unet(compiled_pipe.unet, device)
    compile_s = time.perf_counter() - start
    image(compiled_pipe)  # the pipeline's own inputs may differ from the warm-up's: let it settle
    compiled, compiled_s = image(compiled_pipe)
    return {"device": device_name, "mode": fast_path.compile_mode(device), "compiled": ok,
            "compile_s": round(compile_s, 2), "eager_s_per_image": round(eager_s, 4),
            "compiled_s_per_image": round(compiled_s, 4),
            "max_pixel_diff": int(np.abs(compiled - eager).max()), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child run: print one JSON line
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.device, args.steps, args.size)))
        return
    with tempfile.TemporaryDirectory(prefix="compile-check-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        rows = []
        for label in ("cold cache", "warm cache"):
            out = subprocess.run([sys.executable, __file__, "--one", "--device", args.device, "--steps",
                                  str(args.steps), "--size", str(args.size)], env=env, check=True,
                                 capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows.append({"run": label, **json.loads(out)})
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))


if __name__ == "__main__":
    main()
