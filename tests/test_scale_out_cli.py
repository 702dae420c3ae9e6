"""The --ray-* flags (parse_scale_out, parse_replicas, check_address), the optional Ray dependency: Ray stays out of
a process started without --ray-address, a missing Ray Serve stops app.py at once with the fix, and launch.sh
installs requirements-ray.txt only when --ray-address is given."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from webui.cli import parse_settings
from webui.scaleout.config import DEFAULT_REPLICA_CACHE, ScaleOutConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def scale_out(tmp_path: Path, *argv: str) -> ScaleOutConfig | None:
    return parse_settings(["--data-dir", str(tmp_path), *argv]).scale_out


def refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        parse_settings(["--data-dir", str(tmp_path), *argv])
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_without_the_flag_there_is_no_scale_out(tmp_path):
    assert scale_out(tmp_path) is None


@pytest.mark.parametrize("address", ["auto", "local", "10.0.0.5:6379", "head.cluster.local:6379",
                                     "ray://head:10001", "ray://10.0.0.5:10001", "[::1]:6379", "ray://[fd00::5]:10001"])
def test_addresses_accepted(tmp_path, address):
    config = scale_out(tmp_path, "--ray-address", address)
    assert config == ScaleOutConfig(address=address)  # defaults: one replica per GPU, 1 CPU each, the usual cache
    assert config.replica_cache == DEFAULT_REPLICA_CACHE and config.replica_cpus == 1.0


def test_address_is_trimmed(tmp_path):
    assert scale_out(tmp_path, "--ray-address= auto ").address == "auto"


@pytest.mark.parametrize("replicas, bounds", [("2", (2, 2)), ("1:4", (1, 4)), ("0:3", (0, 3)), (" 3 ", (3, 3))])
def test_replica_counts_and_autoscaling_bounds(tmp_path, replicas, bounds):
    config = scale_out(tmp_path, "--ray-address", "auto", "--ray-replicas", replicas)
    assert (config.min_replicas, config.max_replicas) == bounds


def test_every_flag_reaches_the_config(tmp_path):
    config = scale_out(tmp_path, "--ray-address", "ray://head:10001", "--ray-replicas", "1:3",
                       "--ray-replica-gpus", "0.5", "--ray-replica-cpus", "2", "--ray-models-dir", "~/shared/models",
                       "--ray-replica-cache", "/var/cache/studio")
    assert config == ScaleOutConfig(address="ray://head:10001", min_replicas=1, max_replicas=3, replica_gpus=0.5,
                                    replica_cpus=2.0, models_dir=Path("~/shared/models").expanduser(),
                                    replica_cache="/var/cache/studio")


@pytest.mark.parametrize("address", ["", "somewhere", "http://head:8265", "head:port", "ray://", "auto; rm -rf /",
                                     "head:6379/x", "head:99999999", "head:0", "ray://a:b:c"])
def test_bad_address_refused_naming_the_forms(tmp_path, capsys, address):
    err = refusal(tmp_path, capsys, "--ray-address", address)
    assert f"--ray-address: {address.strip()!r} is not auto, local, HOST:PORT" in err
    assert "ray://HOST:10001" in err


@pytest.mark.parametrize("replicas, problem", [
    ("two", "'two' is not N or MIN:MAX"), ("1:2:3", "'1:2:3' is not N or MIN:MAX"), ("-1", "'-1' is not N or MIN:MAX"),
    ("1.5", "'1.5' is not N or MIN:MAX"), ("", "'' is not N or MIN:MAX"), (":2", "':2' is not N or MIN:MAX"),
    ("0", "'0': the maximum must be at least 1"), ("0:0", "'0:0': the maximum must be at least 1"),
    ("3:1", "'3:1': the minimum 3 is above the maximum 1")])
def test_bad_replica_counts_refused(tmp_path, capsys, replicas, problem):
    err = refusal(tmp_path, capsys, "--ray-address", "auto", "--ray-replicas", replicas)
    assert f"--ray-replicas: {problem}" in err


@pytest.mark.parametrize("flag", ["--ray-replica-gpus", "--ray-replica-cpus"])
@pytest.mark.parametrize("value", ["-1", "nan"])
def test_negative_resources_refused(tmp_path, capsys, flag, value):
    assert f"{flag} must be 0 or more" in refusal(tmp_path, capsys, "--ray-address", "auto", flag, value)


def test_non_number_resources_refused(tmp_path, capsys):
    err = refusal(tmp_path, capsys, "--ray-address", "auto", "--ray-replica-gpus", "half")
    assert "--ray-replica-gpus" in err and "'half'" in err


def test_zero_gpus_means_cpu_replicas(tmp_path):
    assert scale_out(tmp_path, "--ray-address", "local", "--ray-replica-gpus", "0").replica_gpus == 0.0


@pytest.mark.parametrize("argv, message", [
    (["--ray-replicas", "2"], "--ray-replicas needs --ray-address"),
    (["--ray-replica-gpus", "1"], "--ray-replica-gpus needs --ray-address"),
    (["--ray-models-dir", "/mnt/models"], "--ray-models-dir needs --ray-address"),
    (["--ray-replica-cpus", "2"], "--ray-replica-cpus needs --ray-address"),
    (["--ray-replica-cache", "/var/cache/x"], "--ray-replica-cache needs --ray-address"),
    (["--ray-replicas", "2", "--ray-models-dir", "/mnt/models"], "--ray-replicas, --ray-models-dir need --ray-address"),
])
def test_replica_flags_without_an_address_refused(tmp_path, capsys, argv, message):
    assert message in refusal(tmp_path, capsys, *argv)


def test_help_lists_the_flags_and_the_requirements_file(capsys):
    with pytest.raises(SystemExit):
        parse_settings(["--help"])
    out = capsys.readouterr().out
    for flag in ("--ray-address", "--ray-replicas", "--ray-replica-gpus", "--ray-replica-cpus", "--ray-models-dir",
                 "--ray-replica-cache"):
        assert flag in out
    assert "requirements-ray.txt" in out and "docs/scale-out.md" in out


# --- the optional dependency --------------------------------------------------------------------------------------

def test_ray_is_never_imported_without_the_flag(tmp_path):
    # A fresh interpreter: other tests' imports would hide an import of ray by the app.
    code = textwrap.dedent(f"""
        import sys
        import app
        from webui.cli import parse_settings
        from webui.scaleout.requirements import missing_ray
        from webui.services.container import build_services
        settings = parse_settings(["--data-dir", {str(tmp_path)!r}])
        assert settings.scale_out is None
        services = build_services(settings)
        assert services.scaleout is None
        assert missing_ray() is None  # Ray Serve is installed here: found without importing it
        services.queue.shutdown(); services.registry.close(); services.jobs_store.close()
        print("RAY_MODULES", sorted(name for name in sys.modules if name == "ray" or name.startswith("ray.")))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RAY_MODULES []" in result.stdout


def test_missing_ray_stops_the_app_before_anything_heavy_with_the_fix(tmp_path):
    fake = tmp_path / "fake"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('ray is broken in this test')\n")
    data_dir = tmp_path / "data"
    result = subprocess.run([sys.executable, "app.py", "--ray-address", "local", "--data-dir", str(data_dir)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(fake)})
    assert result.returncode == 2, result.stderr[-3000:]
    assert "--ray-address needs Ray Serve" in result.stderr
    assert ".venv/bin/pip install -r requirements-ray.txt" in result.stderr and "./launch.sh" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data_dir.exists()  # stopped before the services (folders, models) were built


@pytest.mark.parametrize("argv, extras", [
    (["--ray-address", "auto"], "requirements-ray.txt"),
    (["--port", "7861", "--ray-address=ray://head:10001"], "requirements-ray.txt"),
    ([], ""),
    (["--port", "7861", "--listen"], ""),
    (["--ray-addresses"], ""),  # not the flag: app.py refuses it, nothing extra to install
])
def test_launch_installs_ray_only_with_the_flag(tmp_path, argv, extras):
    # launch.sh copied next to stand-ins for ensure-venv.sh and the venv's python that record their arguments.
    shutil.copy(REPO_ROOT / "launch.sh", tmp_path / "launch.sh")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "ensure-venv.sh").write_text('echo "$*" > ensure-args\n')
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    python = tmp_path / ".venv" / "bin" / "python"
    python.write_text('#!/bin/sh\necho "$*" > python-args\n')
    python.chmod(0o755)
    result = subprocess.run(["bash", str(tmp_path / "launch.sh"), *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ensure-args").read_text().strip() == extras
    assert (tmp_path / "python-args").read_text().split() == ["app.py", *argv]


def test_missing_ray_is_reported_where_ray_is_not_installed():
    # -S: no site-packages, so this interpreter has no ray at all (the usual install without requirements-ray.txt).
    code = ("import sys; sys.path.insert(0, '.'); from webui.scaleout.requirements import missing_ray; "
            "print(missing_ray())")
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert "--ray-address needs Ray Serve" in result.stdout and "requirements-ray.txt" in result.stdout
