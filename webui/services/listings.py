"""The data behind the read-mostly ``/sdapi/v1`` listings: add-on model files and machine memory.

The API layer may not import ``webui.models`` (see tests/test_architecture.py), so it reaches the LoRA registry
and the embedding scanner through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from webui.config import Settings
from webui.errors import ModelNotFound, NoModelAvailable
from webui.models.embeddings import EmbeddingLibrary, EmbeddingSet
from webui.models.folder_scan import ModelFolder
from webui.models.loras import EmbeddingInfo, LoraInfo, LoraRegistry, scan_embeddings
from webui.models.manager import ModelManager

__all__ = ["EmbeddingInfo", "LoraInfo", "LoraRegistry", "build_lora_registry", "list_vaes", "list_embeddings",
           "embeddings_for_current_model", "EmbeddingLibrary",
           "ram_report", "cuda_report"]

VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
_MEMINFO = Path("/proc/meminfo")


def build_lora_registry(settings: Settings) -> LoraRegistry:
    """A registry over ``models/Lora``; it scans on first use, so building it costs nothing at startup."""
    return LoraRegistry(settings.lora_dir, allow_external_links=settings.allow_external_model_links)


def list_vaes(vae_dir: Path, *, allow_external_links: bool = False) -> list[Path]:
    """VAE files under ``models/VAE`` (recursive), sorted by file name as A1111's dropdown is; regular files
    only, links inside the folder unless allowed (see ``folder_scan``)."""
    found = ModelFolder(vae_dir, allow_external_links=allow_external_links).scan(VAE_SUFFIXES).files
    return sorted(found, key=lambda p: (p.name.lower(), str(p)))


def list_embeddings(embeddings_dir: Path, *, allow_external_links: bool = False) -> list[EmbeddingInfo]:
    return scan_embeddings(embeddings_dir, allow_external_links=allow_external_links)


def embeddings_for_current_model(library: EmbeddingLibrary, manager: ModelManager) -> EmbeddingSet:
    """A1111's ``/sdapi/v1/embeddings`` split: which files the current checkpoint can use (``loaded``) and the
    rest with the reason (``skipped``). The checkpoint's text encoder widths are read from its file, so listing
    never loads a model; with no checkpoint (or one whose widths cannot be told) every readable file is loaded,
    as A1111 does before a model is known."""
    try:
        info = manager.resolve(None)
    except (NoModelAvailable, ModelNotFound):
        return library.for_widths(None)
    return library.for_checkpoint(info)


def _meminfo_bytes(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
    return values


def ram_report() -> dict[str, Any]:
    """System RAM as A1111's ``{free, used, total}`` in bytes; "free" counts reclaimable cache (MemAvailable),
    which is what a user asking "can I load another model?" means."""
    try:
        info = _meminfo_bytes(_MEMINFO.read_text())
        total, free = info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
        return {"free": free, "used": total - free, "total": total}
    except (OSError, KeyError):
        pass  # not Linux: try psutil, which is optional
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        return {"error": "RAM figures unavailable on this system"}
    vm = psutil.virtual_memory()
    return {"free": vm.available, "used": vm.total - vm.available, "total": vm.total}


def _pair(stats: dict[str, Any], key: str, fallback: dict[str, Any] | None = None) -> dict[str, Any]:
    if f"{key}.all.current" in stats:
        return {"current": stats[f"{key}.all.current"], "peak": stats.get(f"{key}.all.peak")}
    return fallback or {"current": None, "peak": None}


def cuda_report(manager_report: dict[str, Any]) -> dict[str, Any]:
    """A1111's ``cuda`` section from the model manager's report (the manager is the only torch user).

    ``active``/``reserved``/``inactive``/``events`` need ``torch.cuda.memory_stats()``; they are filled when the
    manager's report carries it under ``cuda.stats`` and are None otherwise.
    """
    cuda = manager_report.get("cuda")
    if not isinstance(cuda, dict) or "total" not in cuda:
        return {"error": "unavailable"}  # A1111's exact answer without CUDA
    free, total = cuda.get("free", 0), cuda["total"]
    stats = cuda.get("stats") if isinstance(cuda.get("stats"), dict) else {}
    allocated = {"current": cuda.get("allocated"), "peak": cuda.get("peak")}
    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": _pair(stats, "active_bytes"),
        "allocated": _pair(stats, "allocated_bytes", allocated),
        "reserved": _pair(stats, "reserved_bytes"),
        "inactive": _pair(stats, "inactive_split_bytes"),
        "events": {"retries": stats.get("num_alloc_retries"), "oom": stats.get("num_ooms")},
    }
