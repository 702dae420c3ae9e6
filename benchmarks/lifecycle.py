"""The lifecycle around generation: app start, checkpoint load, switching, memory after switching, LoRA per job.

Times the real code paths (figures for notes, never asserted):

* app start to UI ready: ``app.py --data-dir <empty dir> --port <free> --device ...`` as a subprocess, until
  ``GET /`` answers 200 and Gradio's ``/config`` is served (no model loaded);
* the first scan of two checkpoints (``build_services``: the registry hashes each file once);
* checkpoint load from disk: ``registry -> manager`` through a checkpoint-switch job (the path the UI and
  ``POST /sdapi/v1/options`` take), with the RAM cache off: the first load, then loads of files read before;
* switching with ``--max-loaded-models 1`` (each switch evicts) and the RAM cache on (its default size): the first
  switch to each checkpoint reads the file, later ones take it from RAM (median of ``switches``);
* process RSS before and after those switches, beside one model's size;
* LoRA apply+remove per job: the median time of a txt2img job with ``<lora:x:1>`` minus the same job without.

``full_size=False``: two tiny random-weight SD1.x checkpoints (a CPU smoke run: the times say the script works,
nothing more). ``full_size=True``: two full-size random-weight SD1.5 checkpoints (2 GB each in fp16; on a CPU each
load takes a while). Figures hold only for the device and machine printed with them.

    .venv/bin/python benchmarks/lifecycle.py --device cpu --json /tmp/lifecycle.json          # tiny, CPU smoke
    .venv/bin/python benchmarks/lifecycle.py --device cuda --full-size --json /tmp/lifecycle.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1024 ** 2
LORA_RUNS = 3


def row(measure: str, value: float, unit: str, note: str = "") -> dict[str, Any]:
    return {"measure": measure, "value": value, "unit": unit, "note": note}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ app start


def time_app_start(device: str, workdir: Path, timeout: float = 300) -> dict[str, Any]:
    """Seconds from spawning app.py (empty data dir) until the page and Gradio's config are served."""
    data = workdir / "empty-data-dir"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "app-start.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        started = time.monotonic()
        app = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--data-dir", str(data), "--port", str(port),
                                "--device", device, "--no-download"],
                               env={**os.environ}, stdout=log, stderr=subprocess.STDOUT)
        try:
            while time.monotonic() - started < timeout:
                if app.poll() is not None:
                    raise RuntimeError(f"app.py exited with {app.returncode}; see {log_path}")
                if answers(base + "/") and answers(base + "/config"):
                    return row("app start to UI ready (no model loaded)", time.monotonic() - started, "s",
                               "app.py subprocess until GET / and /config answer 200")
                time.sleep(0.05)
            raise TimeoutError(f"the UI was not ready after {timeout:.0f} s; see {log_path}")
        finally:
            app.terminate()
            try:
                app.wait(timeout=30)
            except subprocess.TimeoutExpired:
                app.kill()
                app.wait()


# ------------------------------------------------------------------------------------------------ model files


def write_checkpoints(full_size: bool, models_dir: Path) -> list[str]:
    """Two checkpoints with different weights; returns their file names."""
    import torch

    names = ["lifecycle-a.safetensors", "lifecycle-b.safetensors"]
    if full_size:
        from benchmarks.sd15_vs_diffusers import build_random_sd15, write_checkpoint

        modules = build_random_sd15(seed=0)
        write_checkpoint(modules, models_dir / names[0])
        with torch.no_grad():  # another checkpoint, without building the architecture twice
            modules["unet"].conv_in.bias.add_(0.01)
        write_checkpoint(modules, models_dir / names[1])
    else:
        from benchmarks.model_files import tiny_sd1_modules, write_sd1_checkpoint

        for seed, name in enumerate(names):
            write_sd1_checkpoint(tiny_sd1_modules(seed), models_dir / name)
    return names


# ------------------------------------------------------------------------------------------------ timing helpers


def synchronizer(device: str) -> Callable[[], None]:
    import torch

    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize()
    return lambda: None


def timed(work: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    started = time.perf_counter()
    work()
    sync()
    return time.perf_counter() - started


def rss_mib() -> float:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss / MIB


# ------------------------------------------------------------------------------------------------ the run


def run_lifecycle(device: str, full_size: bool, workdir: Path, switches: int = 20) -> list[dict]:
    """Measure everything above on ``device`` ("cpu", "cuda", "cuda:N"); files go under ``workdir``.

    Returns rows ``{"measure", "value", "unit", "note"}``."""
    from webui.config import Settings
    from webui.services.container import build_services

    workdir.mkdir(parents=True, exist_ok=True)
    sync = synchronizer(device)
    rows = [time_app_start(device, workdir)]

    data = workdir / "data-dir"
    models = data / "models" / "Stable-diffusion"
    a, b = write_checkpoints(full_size, models)
    kind = "full-size SD1.5 (random weights, fp16 file)" if full_size else "tiny SD1.x (random weights)"

    # Loads from disk: the RAM cache off, one model at a time, so every switch reads its file.
    started = time.perf_counter()
    services = build_services(Settings(data_dir=data, device=device, allow_download=False, max_loaded_models=1,
                                       ram_cache_gib=0))
    rows.append(row("first scan of 2 checkpoints (hashing)", time.perf_counter() - started, "s",
                    "build_services: the registry hashes each new file once (cached by path, size, mtime)"))
    try:
        first = timed(lambda: services.checkpoints.switch(a), sync)
        model_mib, dtype = describe_model(services)
        again = [timed(lambda name=name: services.checkpoints.switch(name), sync) for name in (b, a, b)]
    finally:
        services.queue.shutdown()
        del services
        gc.collect()
    rows.append(row("checkpoint load from disk, first", first, "s",
                    f"{kind}, {dtype}: file -> registry -> manager -> on {device}, through a switch job"))
    rows.append(row("checkpoint load from disk, again", statistics.median(again), "s",
                    "median of 3 switches with the RAM cache off (each reads its file again; the OS may have "
                    "it in its page cache)"))

    # Switching with the RAM cache on (its default, auto size).
    services = build_services(Settings(data_dir=data, device=device, allow_download=False, max_loaded_models=1))
    try:
        services.checkpoints.switch(a)
        first_switch = timed(lambda: services.checkpoints.switch(b), sync)
        seen: list[float] = []
        rss_before = rss_mib()
        for index in range(switches):
            target = a if index % 2 == 0 else b
            seen.append(timed(lambda target=target: services.checkpoints.switch(target), sync))
        rss_after = rss_mib()
        cached = services.manager.memory_report()["ram_cache"]
        rows.append(row("switch to a checkpoint not seen yet", first_switch, "s",
                        "reads the file (max_loaded_models 1: the other one goes to the RAM cache)"))
        rows.append(row("switch to a checkpoint already seen", statistics.median(seen), "s",
                        f"median of {switches} switches between the two, each taken from the RAM cache "
                        f"(min {min(seen):.3f} s, max {max(seen):.3f} s; {len(cached)} in RAM at the end)"))
        rows.append(row(f"RSS growth after {switches} switches", rss_after - rss_before, "MiB",
                        f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB; one model is {model_mib:.0f} MiB"))
        rows.append(row("one model's weights", model_mib, "MiB", f"{dtype}, UNet + VAE + text encoder"))
        rows.extend(time_lora(services, data, full_size, sync))
    finally:
        services.queue.shutdown()
    return rows


def describe_model(services) -> tuple[float, str]:
    """The loaded model's weights in MiB and its dtype (no reference to it is kept: it must be freed on eviction)."""
    from webui.models.device import module_bytes

    with services.manager.lease() as model:
        return module_bytes(model) / MIB, str(model.dtype).replace("torch.", "")


def time_lora(services, data: Path, full_size: bool, sync: Callable[[], None]) -> list[dict]:
    """LoRA apply+remove: the code every job with a LoRA runs (``applied_loras``: deltas added to the weights, the
    original bytes put back after), timed on its own; and a txt2img job with ``<lora:x:1>`` minus the same job
    without (the whole cost a user sees, noisier)."""
    from benchmarks.model_files import write_kohya_lora
    from webui.pipelines.lora_apply import JobLora, LoraFiles, applied_loras
    from webui.types import Txt2ImgRequest

    path = data / "models" / "Lora" / "lifecycle-lora.safetensors"
    files = LoraFiles()
    loras = [JobLora("lifecycle-lora", path, 1.0, 1.0)]
    with services.manager.lease() as model:
        write_kohya_lora(model.pipe, path)

        def apply_and_remove() -> None:
            with applied_loras(model.pipe, model.family, loras, files, []):
                pass

        apply_and_remove()  # the first use reads and parses the file (then cached, as in the app)
        direct = [timed(apply_and_remove, sync) for _ in range(LORA_RUNS + 2)]
    lora_mib = path.stat().st_size / MIB
    rows = [row("LoRA apply+remove per job", statistics.median(direct), "s",
                f"rank 8 on every attention projection ({lora_mib:.1f} MiB file), median of {len(direct)}: "
                f"the apply/restore a job with <lora:...> runs (file already parsed)")]

    size = 128 if full_size else 64  # the LoRA's cost does not depend on the image: keep the job small
    common = dict(width=size, height=size, steps=2, seed=1, sampler_name="Euler", save_images=False)

    def job(prompt: str) -> float:
        return timed(lambda: services.generation.txt2img(Txt2ImgRequest(prompt=prompt, **common)), sync)

    job("warm-up <lora:lifecycle-lora:1>")  # the service's own file cache reads it once
    plain, with_lora = [], []
    for _ in range(LORA_RUNS):
        plain.append(job("a lighthouse"))
        with_lora.append(job("a lighthouse <lora:lifecycle-lora:1>"))
    rows.append(row("txt2img job with the LoRA minus without", statistics.median(with_lora) - statistics.median(plain),
                    "s", f"median job {statistics.median(with_lora):.3f} s with it, {statistics.median(plain):.3f} s "
                         f"without ({LORA_RUNS} each, {size}x{size}, 2 steps; noisy where jobs take seconds)"))
    return rows


# ------------------------------------------------------------------------------------------------ output


def print_rows(rows: list[dict], title: str) -> None:
    print(title)
    width = max(len(r["measure"]) for r in rows)
    for r in rows:
        print(f"  {r['measure']:<{width}}  {r['value']:>10.3f} {r['unit']:<4} {r['note']}")


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--full-size", action="store_true", help="full-size random SD1.5 checkpoints (2 GB each)")
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the checkpoints and data dir go (default: a temporary folder, removed after)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lifecycle-"))
    try:
        rows = run_lifecycle(device, args.full_size, workdir, args.switches)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    header = {"device": device, "machine": machine(device), "full_size": args.full_size,
              "torch": torch.__version__, "python": platform.python_version()}
    print_rows(rows, f"Lifecycle on {header['machine']} ({device}, "
                     f"{'full-size SD1.5' if args.full_size else 'tiny models: a smoke run, times mean little'})")
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
