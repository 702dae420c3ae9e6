"""How long state reads take while a job runs, measured on the real app over HTTP (figures for notes, not tests).

Starts ``app.py`` (CPU, a tiny random-weight SD1.x checkpoint), starts one long txt2img job, and while it runs
times ``GET /sdapi/v1/options``, ``/memory`` and ``/progress``, then the same reads with the server idle. Only the
public API is used, so the same script measures any revision (``--app`` points at another checkout's app.py).

    .venv/bin/python benchmarks/reads_during_job.py --json /tmp/reads.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_tiny import free_port, post, wait_ready  # noqa: E402

READS = ("/sdapi/v1/options", "/sdapi/v1/memory", "/sdapi/v1/progress")


def timed_get(url: str) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=600) as response:
        response.read()
    return time.monotonic() - started


def running(base: str) -> bool:
    with urllib.request.urlopen(base + "/sdapi/v1/progress", timeout=600) as response:
        return json.load(response)["state"]["job_count"] > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", type=Path, default=ROOT / "app.py", help="the app.py to measure")
    parser.add_argument("--steps", type=int, default=150, help="steps of the long job (tiny model, 64x64)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from tests.tiny_models import write_tiny_single_file

    data = Path(tempfile.mkdtemp(prefix="bench-reads-"))
    write_tiny_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    app = subprocess.Popen([sys.executable, str(args.app), "--data-dir", str(data), "--port", str(port),
                            "--device", "cpu", "--no-download"], cwd=args.app.parent, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict[str, float] = {}
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base + "/sdapi/v1/sd-models", time.monotonic() + 180)
        post(base + "/sdapi/v1/txt2img", {"prompt": "warm-up", "width": 64, "height": 64, "steps": 2})
        for path in READS:
            results[f"idle {path} median_s"] = statistics.median(timed_get(base + path) for _ in range(5))
        job_started = time.monotonic()
        job = threading.Thread(target=post, args=(base + "/sdapi/v1/txt2img", {
            "prompt": "a long job", "width": 64, "height": 64, "steps": args.steps, "sampler_name": "Euler"}))
        job.start()
        while not running(base):
            time.sleep(0.05)
        during: dict[str, list[float]] = {path: [] for path in READS}
        for _ in range(3):
            for path in READS:
                during[path].append(timed_get(base + path))
        still_running = running(base)
        job.join()
        results["long job total_s"] = time.monotonic() - job_started
        for path, times in during.items():
            results[f"during job {path} max_s"] = max(times)
        results["job still running after the reads"] = float(still_running)
    finally:
        app.terminate()
        app.wait(timeout=30)
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
