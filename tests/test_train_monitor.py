"""The Train tab's status line: what each state says, escaped."""

from __future__ import annotations

from webui.ui.train_monitor import status_html


def _report(**changes):
    report = {"state": "running", "step": 5, "total_steps": 20, "epoch": 2.0, "loss": 0.51234, "lr": 1e-4,
              "eta_seconds": 31.6, "message": "", "queue_position": None, "device": "cuda:0",
              "device_memory": {"allocated": 3 * 2**30, "peak": 4 * 2**30, "total": 80 * 2**30}}
    return {**report, **changes}


def test_running_shows_step_epoch_loss_lr_eta_and_memory():
    html = status_html(_report())
    assert "step 5/20 · epoch 2 · loss 0.5123 · lr 0.0001 · ETA 32s" in html
    assert "cuda:0 memory 3.00 GiB (peak 4.00 of 80 GiB)" in html and "value='25'" in html


def test_queued_paused_failed_and_escaping():
    assert "Waiting in queue (position 2)" in status_html(_report(state="queued", queue_position=2))
    paused = status_html(_report(state="paused", message="Paused"))
    assert paused.count("Paused") == 1 and "data-state='paused'" in paused
    failed = status_html(_report(state="failed", message="data_dir: <b>x</b> does not exist"))
    assert "studio-error" in failed and "&lt;b&gt;x&lt;/b&gt;" in failed
    done = status_html(_report(state="done", message="Wrote a<b>.safetensors", eta_seconds=None))
    assert "Wrote a&lt;b&gt;.safetensors" in done and "ETA" not in done
