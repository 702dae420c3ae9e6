"""Import direction stays as ARCHITECTURE.md draws it: UI/API -> services -> pipelines -> models -> leaves.

A cheap stand-in for an import-linter contract: parse every module's imports with ast.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "webui"

# package prefix -> imports it must never make
FORBIDDEN = {
    "webui.ui": ("torch", "diffusers", "transformers", "webui.models", "webui.pipelines"),
    "webui.api": ("torch", "diffusers", "transformers", "gradio", "webui.models", "webui.pipelines"),
    "webui.models": ("gradio", "fastapi", "webui.services", "webui.ui", "webui.api"),
    "webui.pipelines": ("gradio", "fastapi", "webui.services", "webui.ui", "webui.api"),
    "webui.services": ("gradio", "fastapi", "webui.ui", "webui.api"),
    "webui.infotext": ("torch", "gradio", "fastapi", "webui.services"),
    "webui.prompts": ("torch", "gradio", "fastapi", "webui.services"),
    "webui.types": ("torch", "gradio", "fastapi", "webui.services", "webui.models"),
    "webui.provenance": ("torch", "gradio", "fastapi", "webui.services", "webui.ui", "webui.api", "webui.models",
                         "webui.pipelines"),
    "webui.image_io": ("torch", "gradio", "fastapi", "webui.services", "webui.models", "webui.pipelines"),
    "webui.parameters": ("torch", "gradio", "fastapi", "webui.services", "webui.models", "webui.pipelines",
                         "webui.ui", "webui.api"),
}


def _modules() -> list[tuple[str, Path]]:
    return [(".".join(p.relative_to(ROOT).with_suffix("").parts), p) for p in PACKAGE.rglob("*.py")]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module, path", _modules(), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_import_direction(module, path):
    rules = [banned for prefix, banned in FORBIDDEN.items() if module == prefix or module.startswith(prefix + ".")]
    bad = sorted(name for name in _imports(path) for banned in rules for b in banned
                 if name == b or name.startswith(b + "."))
    assert not bad, f"{module} imports {bad}"


def test_nothing_imports_app_py():
    assert all("app" not in _imports(path) for _, path in _modules())
