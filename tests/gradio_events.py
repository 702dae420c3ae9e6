"""Calling a Gradio event the way the browser does: ``/gradio_api/queue/join`` by ``fn_index``, results on
``/gradio_api/queue/data``. The tab handlers are private (the REST API is the public one), so tests address
them by the event's id, found by its api_name in ``/config``, never by a public endpoint name."""

from __future__ import annotations

import uuid
from typing import Any


def event(config: dict, api_name: str) -> dict:
    """The dependency (event) whose api_name is ``api_name`` in a Blocks config."""
    return next(dep for dep in config["dependencies"] if dep.get("api_name") == api_name)


def inputs_by_label(config: dict, api_name: str, values: dict[str, Any]) -> list[Any]:
    """The event's input list: ``values[label]`` where given, else each widget's current value."""
    components = {c["id"]: c.get("props", {}) for c in config["components"]}
    return [values.get(components[i].get("label"), components[i].get("value")) for i in event(config, api_name)["inputs"]]


def join(client, config: dict, api_name: str, data: list) -> tuple[Any, str]:
    """POST /gradio_api/queue/join for the event; returns (response, session hash)."""
    session = uuid.uuid4().hex
    body = {"data": data, "fn_index": event(config, api_name)["id"], "session_hash": session, "trigger_id": None,
            "event_data": None}
    return client.post("/gradio_api/queue/join", json=body), session


def call(client, api_name: str, data: list) -> str:
    """Run the event to completion and return the queue's event stream as text."""
    response, session = join(client, client.get("/config").json(), api_name, data)
    assert response.status_code == 200, response.text
    lines = []
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            lines.append(line)
            if "process_completed" in line:
                break
    return "\n".join(lines)
