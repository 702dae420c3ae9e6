"""The speed/memory benchmark must not rot: its CPU smoke run works end to end and reports both sides.

It runs as a subprocess, exactly as a person or benchmarks/gpu_run.sh runs it; nothing here imports benchmarks/
or asserts a time (timings belong in the benchmark's output).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "speed_memory.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_tiny_smoke_run_measures_ours_and_vanilla_diffusers(tmp_path):
    report_path = tmp_path / "speed_memory.json"
    done = run("--tiny", "--device", "cpu", "--only", "sd15-512-b1", "--runs", "1", "--json", str(report_path),
               "--tmp-dir", str(tmp_path))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    report = json.loads(report_path.read_text())
    assert report["complete"] is True
    assert report["header"]["device"].startswith("CPU")
    rows = {row["kind"]: row for row in report["rows"]}
    assert set(rows) == {"vanilla", "ours"}
    for kind, row in rows.items():
        assert row["workload"] == "sd15-512-b1"
        assert row["error"] is None, f"{kind}: {row['error']}"
        assert len(row["times_s"]) == 1 and row["median_s"] > 0, kind
        assert row["images"] == 1 and row["nan_images"] == 0, kind  # one image each, decoded, not NaN
        assert row["unet_calls"] >= 4, kind  # the 4 tiny-mode steps really ran (after the warm-up)
    assert rows["ours"]["load_s"] > 0  # ours loaded the checkpoint file from disk
    assert rows["ours"]["previews"] is not None
    assert rows["ours"]["vs_vanilla"] == rows["ours"]["median_s"] / rows["vanilla"]["median_s"]

    # The printed table names the device and both sides; the checkpoints it wrote are gone.
    assert "CPU" in done.stdout and "sd15-512-b1  vanilla" in done.stdout and "sd15-512-b1  ours" in done.stdout
    assert [p.name for p in tmp_path.iterdir()] == [report_path.name]


def test_unknown_workload_is_refused_by_name():
    done = run("--only", "sd15-512-b1,sd99-nope", timeout=120)
    assert done.returncode == 2
    assert "unknown sd99-nope" in done.stderr and "sd15-512-b4" in done.stderr
