"""Scale-out throughput: N concurrent txt2img jobs on 1, 2, 4... Ray Serve replicas against the single-process app.

Side by side in one run, through the real code paths (figures for notes, never asserted):

* ``direct``: ``build_services`` without ``--ray-address`` (one worker on ``--device``);
* ``ray xR``: a local Ray cluster this script starts (``ray start --head`` in a temp dir, stopped after), the front
  built with ``--ray-address HOST:PORT --ray-replicas R``; each replica fetches the checkpoint from the front by
  sha256 (an empty shared folder), as on hosts without a network mount.

For each side: a warm-up (every replica loads the checkpoint), the median latency of ``--latency-jobs`` jobs run one
after another (the per-job overhead of the Ray path is its median minus the direct one's), then ``--jobs`` jobs
submitted at once: wall time and images per second.

    .venv/bin/python benchmarks/scale_out.py --tiny --replicas 1,2,4 --jobs 8          # CPU, tiny checkpoint
    .venv/bin/python benchmarks/scale_out.py --device cuda --replicas 1,2 --jobs 8     # GPU, full-size SD1.5

On a GPU, ``--replicas 2`` puts two replicas on one card (0.5 GPU each). Results hold only for the machine printed
with them; on a 2-core CPU, replicas share the same two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from benchmarks.bench_common import build_random, write_checkpoint  # noqa: E402
from webui.config import Limits, Settings  # noqa: E402
from webui.scaleout.config import ScaleOutConfig  # noqa: E402
from webui.types import Txt2ImgRequest  # noqa: E402

RAY = Path(sys.executable).with_name("ray")


@dataclass
class Row:
    side: str
    replicas: int
    latency_median_s: float
    jobs: int
    wall_s: float

    @property
    def images_per_s(self) -> float:
        return self.jobs / self.wall_s


def settings(data: Path, device: str, scale_out: ScaleOutConfig | None = None) -> Settings:
    return Settings(data_dir=data, device=device, allow_download=False, precision="fp32" if device == "cpu" else "auto",
                    limits=Limits(queue_size=64), scale_out=scale_out)


def measure(services, side: str, replicas: int, request: Txt2ImgRequest, args) -> Row:
    generation = services.generation
    warm = [generation.submit_txt2img(request) for _ in range(max(1, replicas))]
    for job in warm:
        job.wait(1800)
    latencies = []
    for _ in range(args.latency_jobs):
        started = time.perf_counter()
        generation.txt2img(request, timeout=1800)
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    jobs = [generation.submit_txt2img(request) for _ in range(args.jobs)]
    for job in jobs:
        job.wait(3600)
    wall = time.perf_counter() - started
    row = Row(side, replicas, statistics.median(latencies), args.jobs, wall)
    print(f"{side:>10}: median latency {row.latency_median_s:.3f} s, {args.jobs} jobs in {wall:.2f} s "
          f"= {row.images_per_s:.2f} images/s", flush=True)
    return row


@contextlib.contextmanager
def local_cluster(cpus: int, gpus: int) -> Iterator[str]:
    temp = Path(tempfile.mkdtemp(prefix="rayb", dir="/tmp"))  # short: Ray's socket paths must stay short
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    subprocess.run([str(RAY), "start", "--head", f"--port={port}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
                    "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                   check=True, capture_output=True, env=env, timeout=300)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        processes = []
        for process in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if str(temp) in " ".join(process.info["cmdline"] or []):
                    processes += [process, *process.children(recursive=True)]
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=15)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU run")
    parser.add_argument("--tiny", action="store_true", help="the tiny random-weight checkpoint (CPU smoke scale); "
                                                            "default: full-size random-weight SD1.5")
    parser.add_argument("--replicas", default="1,2,4", help="replica counts to compare, comma-separated")
    parser.add_argument("--jobs", type=int, default=8, help="jobs submitted at once")
    parser.add_argument("--latency-jobs", type=int, default=5, help="jobs run one after another for the latency")
    parser.add_argument("--size", type=int, default=None, help="image side (default 64 tiny, 512 full size)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default 10 tiny, 20 full size)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    replica_counts = [int(item) for item in args.replicas.split(",") if item.strip()]
    gpu = args.device.startswith("cuda")
    size = args.size or (64 if args.tiny else 512)
    request = Txt2ImgRequest(prompt="a lighthouse on a cliff at dusk", width=size, height=size,
                             steps=args.steps or (10 if args.tiny else 20), seed=1, sampler_name="Euler a")
    # The replicas join this token-protected cluster; Ray reads the mode before its first import.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    from webui.services.container import build_services

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="scale-out-bench-") as root_name:
        root = Path(root_name)
        checkpoint = root / "front" / "models" / "Stable-diffusion" / "bench-sd15.safetensors"
        write_checkpoint(build_random("sd1", tiny=args.tiny, seed=0), checkpoint)
        print(f"{platform.node()}: {os.cpu_count()} CPUs; {args.device}; checkpoint "
              f"{checkpoint.stat().st_size / 2**20:.0f} MiB; {size}x{size}, {request.steps} steps", flush=True)
        direct = build_services(settings(root / "front", args.device))
        try:
            rows.append(measure(direct, "direct", 1, request, args))
        finally:
            direct.queue.shutdown()
        (root / "empty-shared").mkdir()
        for count in replica_counts:
            gpus = 1 if gpu else 0
            with local_cluster(cpus=count + 1, gpus=gpus) as address:
                config = ScaleOutConfig(address=address, min_replicas=count, max_replicas=count,
                                        replica_gpus=(gpus / count) if gpu else 0.0, replica_cpus=1,
                                        models_dir=root / "empty-shared", replica_cache=str(root / "cache"))
                front = build_services(settings(root / "front", "cpu", config))
                try:
                    rows.append(measure(front, f"ray x{count}", count, request, args))
                finally:
                    front.queue.shutdown()
                    front.scaleout.close()
    base = rows[0]
    print("\n| side | replicas | median latency (s) | overhead per job (s) | jobs | wall (s) | images/s | vs direct |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        overhead = row.latency_median_s - base.latency_median_s
        print(f"| {row.side} | {row.replicas if row.side != 'direct' else '-'} | {row.latency_median_s:.3f} | "
              f"{'' if row is base else f'{overhead:+.3f}'} | {row.jobs} | {row.wall_s:.2f} | "
              f"{row.images_per_s:.2f} | {row.images_per_s / base.images_per_s:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "tiny": args.tiny, "size": size,
                                         "steps": request.steps, "cpus": os.cpu_count(),
                                         "rows": [{**row.__dict__, "images_per_s": row.images_per_s}
                                                  for row in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
