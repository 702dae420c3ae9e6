"""Import direction stays as ARCHITECTURE.md draws it: UI/API -> services -> pipelines -> models -> leaves.

A cheap stand-in for an import-linter contract: parse every module's imports with ast.
"""

from __future__ import annotations

import ast
import re
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
    "webui.training": ("gradio", "fastapi", "webui.services", "webui.ui", "webui.api"),
    "webui.services": ("gradio", "fastapi", "webui.ui", "webui.api"),
    "webui.infotext": ("torch", "gradio", "fastapi", "webui.services"),
    "webui.prompts": ("torch", "gradio", "fastapi", "webui.services"),
    "webui.types": ("torch", "gradio", "fastapi", "webui.services", "webui.models"),
    "webui.provenance": ("torch", "gradio", "fastapi", "webui.services", "webui.ui", "webui.api", "webui.models",
                         "webui.pipelines"),
    "webui.image_io": ("torch", "gradio", "fastapi", "webui.services", "webui.models", "webui.pipelines"),
    "webui.parameters": ("torch", "gradio", "fastapi", "webui.services", "webui.models", "webui.pipelines",
                         "webui.ui", "webui.api"),
    "webui.a1111_pnginfo": ("torch", "gradio", "fastapi", "webui.services", "webui.models", "webui.pipelines",
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


# --- one device owner: nothing but webui/models/device.py (and the memory plan it applies) moves weights ---------

# memory.py applies the plan the owner places by; offload.py is that plan's text-encoder visits.
DEVICE_OWNERS = {"webui.models.device", "webui.models.memory", "webui.models.offload"}
_WEIGHTS = re.compile(r"(model|pipe|pipeline|unet|vae|text_encoder\w*|encoder|decoder|generator|checker|net|module"
                      r"|lora|upscaler|weights)s?$", re.IGNORECASE)
_PLACEMENT = {"enable_model_cpu_offload", "enable_sequential_cpu_offload", "to_empty", "cuda"}


def _receiver(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):  # model.eval().to(device): the object the chain started from
        return _receiver(node.func.value) if isinstance(node.func, ast.Attribute) else _receiver(node.func)
    return ""


def _names_a_device(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value.split(":")[0] in ("cuda", "cpu", "mps", "meta")
    text = ast.unparse(node)
    return "device" in text.lower() or "cuda" in text.lower()


def weight_placements(source: str) -> list[str]:
    """Calls that put weights on a device: ``<model>.to(<device>)``, ``.cuda()``, offload hooks."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        method, receiver = node.func.attr, _receiver(node.func.value)
        if method in _PLACEMENT or (method == "to" and _WEIGHTS.search(receiver) and (
                any(_names_a_device(a) for a in node.args) or any(k.arg == "device" for k in node.keywords))):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_placement_check_catches_a_violation():
    assert weight_placements("generator = load(path)\nmodel = generator.to(self._device)\n")
    assert weight_placements("pipe.enable_model_cpu_offload(device=device)")
    assert weight_placements("checker._model.to('cuda')")
    assert weight_placements("return cls(model.eval().to(device), processor)")
    assert not weight_placements("latents = latents.to(device, dtype=dtype)\nmodel = model.to(dtype=dtype)")


@pytest.mark.parametrize("module, path", _modules(), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_only_the_device_owner_places_weights(module, path):
    if module in DEVICE_OWNERS:
        return
    assert not weight_placements(path.read_text()), f"{module} moves weights to a device itself; use " \
                                                   "DeviceOwner.resident() (webui/models/device.py)"


# --- extensions use only the public API --------------------------------------------------------------------------

def _extension_files() -> list[Path]:
    roots = [PACKAGE / "builtin_extensions", ROOT / "docs"]
    return sorted(p for root in roots if root.is_dir() for p in root.rglob("*.py"))


def test_extensions_import_only_the_public_api_of_ours():
    """Built-in extensions and the documented example import nothing of ours but ``webui.extensions.api``: what
    they use is what every extension author gets (and what survives refactors)."""
    bad = {str(path.relative_to(ROOT)): sorted(name for name in _imports(path)
                                               if (name == "webui" or name.startswith("webui."))
                                               and name != "webui.extensions.api")
           for path in _extension_files()}
    assert not {path: names for path, names in bad.items() if names}


def test_the_extension_import_check_sees_a_bad_import(tmp_path):
    path = tmp_path / "main.py"
    path.write_text("from webui.services.container import Services\nfrom webui.extensions.api import Script\n")
    assert _imports(path) == {"webui.services.container", "webui.extensions.api"}
