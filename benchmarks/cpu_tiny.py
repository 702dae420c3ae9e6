"""Time to UI ready and time per tiny image, measured on the real app (CPU; figures for notes, not tests).

Starts ``app.py`` on a free port with a tiny random-weight SD1.x checkpoint, waits for the UI and API, then
times txt2img requests through the REST API. Prints a table and writes JSON (``--json``).

    .venv/bin/python benchmarks/cpu_tiny.py --runs 5 --json /tmp/cpu_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, deadline: float) -> float:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic()
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from tests.tiny_models import write_tiny_single_file

    data = Path(tempfile.mkdtemp(prefix="bench-"))
    write_tiny_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.monotonic()
    app = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--data-dir", str(data), "--port", str(port)],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        ui_ready = wait_ready(base + "/", started + 180) - started
        results = {"ui_ready_s": ui_ready, "machine": platform.processor() or platform.machine(),
                   "cpus": os.cpu_count()}
        t = time.monotonic()
        post(base + "/sdapi/v1/txt2img", {"prompt": "warm-up", "width": 64, "height": 64, "steps": 20})
        results["first_image_incl_model_load_s"] = time.monotonic() - t
        for steps in (20,):
            times = []
            for run in range(args.runs):
                t = time.monotonic()
                post(base + "/sdapi/v1/txt2img", {"prompt": "a fox", "seed": run, "width": 64, "height": 64,
                                                  "steps": steps, "sampler_name": "DPM++ 2M"})
                times.append(time.monotonic() - t)
            results[f"tiny_64px_{steps}steps_median_s"] = statistics.median(times)
            results[f"tiny_64px_{steps}steps_min_s"] = min(times)
    finally:
        app.terminate()
        app.wait(timeout=20)
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
