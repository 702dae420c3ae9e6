"""The Settings tab's Cluster section: the Ray Serve replicas generation runs on (``--ray-address``), or a note
that this process generates itself.

On: a summary line and a table (one row per replica: device, loaded checkpoints, current job, health, last
report, error), filled when the Settings tab is opened, on Refresh, and every 5 s while the Settings tab is the
selected one (a gr.Timer, switched off when another tab is selected). Off: one static line, no timer. The
formatting functions are pure (ClusterStatus -> text) and take ``now`` so tests can age a replica.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import gradio as gr

from webui.scaleout.status import ClusterStatus, ReplicaStatus
from webui.services.cluster_report import ClusterReading, observed_health, read_cluster, seconds_since_seen
from webui.services.container import Services
from webui.ui.generation_form import error_html

SETTINGS_TAB_LABEL = "Settings"
REFRESH_SECONDS = 5.0
COLUMNS = ("Replica", "Host", "PID", "Device", "Loaded checkpoints", "Current job", "Health", "Last seen", "Error")
NO_REPLICA = "No replica has reported yet"
ALERT = " style='color: #b42318'"  # .studio-error's red


def off_note(devices: list[str]) -> str:
    return (f"Scale-out is off: this process generates on {', '.join(devices) or 'cpu'}. To run generation on a "
            "Ray cluster, start with --ray-address; see docs/scale-out.md")


def age_text(seconds: float) -> str:
    """"3 s ago", "4 min ago", "2 h ago"."""
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def replica_row(replica: ReplicaStatus, now: float) -> list[str]:
    job = f"{replica.job_id} ({replica.job_kind})" if replica.job_id and replica.job_kind else replica.job_id or ""
    return [replica.replica_id, f"{replica.host} ({replica.node_ip})", str(replica.pid), replica.device,
            ", ".join(replica.loaded), job, observed_health(replica, now),
            age_text(seconds_since_seen(replica, now)), replica.error or ""]


def replica_rows(status: ClusterStatus, now: float) -> list[list[str]]:
    return [replica_row(replica, now) for replica in status.replicas]


def _states(counts: dict[str, int]) -> str:
    shown = [f"{count} {state.lower()}" for state, count in counts.items() if count]
    return ", ".join(shown) or "none"


def summary_text(status: ClusterStatus) -> str:
    """Address, Serve's application status, replicas by state, the autoscaling range, jobs in flight."""
    return (f"Ray cluster {status.address} · Serve application {status.application} · replicas: "
            f"{_states(status.replica_states)} (min {status.min_replicas}, max {status.max_replicas}) · "
            f"jobs in flight: {status.in_flight}")


def table_html(status: ClusterStatus, now: float) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for replica, row in zip(status.replicas, replica_rows(status, now)):
        health = html.escape(row[6], quote=True)
        red = {6} if row[6] == "unreachable" else set()  # a silent replica and a load error stand out
        red |= {8} if row[8] else set()
        body.append(f"<tr data-replica='{html.escape(replica.replica_id, quote=True)}' class='replica-{health}'>"
                    + "".join(f"<td{ALERT if i in red else ''}>{html.escape(cell)}</td>" for i, cell in enumerate(row))
                    + "</tr>")
    empty = f"<tr><td colspan={len(COLUMNS)}>{NO_REPLICA}</td></tr>"
    return (f"<table id='cluster_replicas' class='studio-table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body) or empty}</tbody></table>")


def reading_html(reading: ClusterReading, now: float) -> tuple[str, str]:
    """(summary, table) for an enabled cluster: Serve's message or a read failure in red."""
    if reading.status is None:
        return error_html(reading.problem), ""
    status = reading.status
    summary = f"<div id='cluster_summary_line' role='status'>{html.escape(summary_text(status))}</div>"
    if status.message:
        summary += error_html(f"Serve: {status.message}")
    return summary, table_html(status, now)


@dataclass(frozen=True)
class ClusterPanel:
    summary: gr.HTML | gr.Markdown
    table: gr.HTML | None      # None when scale-out is off
    refresh: gr.Button | None
    timer: gr.Timer | None


def build(services: Services, settings_tab: gr.Tab, tabs: gr.Tabs) -> ClusterPanel:
    """The section; call inside the Settings tab (``settings_tab``) of ``tabs``."""
    with gr.Accordion("Cluster", open=True, elem_id="settings_section_cluster"):
        if services.scaleout is None:
            note = gr.Markdown(off_note(list(services.queue.devices)), elem_id="cluster_summary",
                               elem_classes=["studio-muted"])
            return ClusterPanel(note, None, None, None)
        summary = gr.HTML(elem_id="cluster_summary")
        table = gr.HTML(elem_id="cluster_table")
        refresh = gr.Button("Refresh", elem_id="cluster_refresh", scale=0, min_width=120)
        timer = gr.Timer(REFRESH_SECONDS, active=False)

    def current() -> tuple[str, str]:
        return reading_html(read_cluster(services.scaleout), time.time())

    private = dict(api_visibility="private", show_progress="hidden")
    refresh.click(current, None, [summary, table], api_name="studio_cluster_refresh", **private)
    timer.tick(current, None, [summary, table], api_name="studio_cluster_tick", **private)
    settings_tab.select(current, None, [summary, table], api_name="studio_cluster_open", **private)

    def tick_only_on_settings(evt: gr.SelectData) -> gr.Timer:
        return gr.Timer(active=evt.value == SETTINGS_TAB_LABEL)  # evt.value: the selected tab's label

    tabs.select(tick_only_on_settings, None, timer, api_name="studio_cluster_timer", **private)
    return ClusterPanel(summary, table, refresh, timer)
