"""The Available list: A1111's index.json read from a file, searched, installed ones marked; one-line messages for
every way the index cannot be had."""

from __future__ import annotations

import json
import socket

from webui.extensions.index import NO_INDEX, load_index

A1111_INDEX = {
    "tags": {"script": "Script", "tab": "Tab"},
    "extensions": [
        {"name": "Aspect Ratio selector", "url": "https://github.com/alemelis/sd-webui-ar.git",
         "description": "Adds image aspect ratio selector buttons.", "tags": ["UI related"], "added": "2023-02-04"},
        {"name": "Dynamic Prompts", "url": "https://github.com/adieyal/sd-dynamic-prompts",
         "description": "Template language for prompt generation", "tags": ["script", "prompting"]},
        {"name": "no url here"},
    ],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write(tmp_path, data) -> str:
    path = tmp_path / "index.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def test_a1111_index_file_is_read_searched_and_marked(tmp_path):
    index = load_index(write(tmp_path, A1111_INDEX))
    assert index.message == ""
    assert [e.name for e in index.entries] == ["Aspect Ratio selector", "Dynamic Prompts"]  # the url-less skipped
    assert [e.name for e in index.search("PROMPT")] == ["Dynamic Prompts"]  # name/description, any case
    assert [e.name for e in index.search("ui related")] == ["Aspect Ratio selector"]  # a tag
    assert index.search("nothing like this") == []
    assert len(index.search("")) == 2
    marked = index.marked({"https://github.com/alemelis/sd-webui-ar/"}, set())  # no .git, trailing slash
    assert [e.installed for e in marked.entries] == [True, False]
    marked = index.marked(set(), {"dynamic prompts"})
    assert [e.installed for e in marked.entries] == [False, True]


def test_a_bare_list_is_accepted(tmp_path):
    index = load_index(write(tmp_path, [{"url": "https://example.test/x.git", "tags": "not a list"}]))
    assert [(e.name, e.tags) for e in index.entries] == [("x.git", ())]


def test_problems_are_one_line_each(tmp_path):
    assert load_index("").message == NO_INDEX and "--extensions-index" in NO_INDEX
    bad = load_index(write(tmp_path, "{not json"))
    assert bad.entries == () and bad.message.startswith("Extension index") and "not valid JSON" in bad.message
    assert "no \"extensions\" list" in load_index(write(tmp_path, {"tags": {}})).message
    assert "cannot be read" in load_index(str(tmp_path / "missing.json")).message
    assert "only https" in load_index("http://example.test/index.json").message
    offline = load_index(f"https://127.0.0.1:{free_port()}/index.json", timeout=2)
    assert offline.entries == () and offline.message.startswith("Extension index unreachable (offline?)")
    for index in (bad, offline):
        assert "\n" not in index.message
