"""A1111's read-mostly ``/sdapi/v1`` routes (LoRAs, VAEs, embeddings, memory ...; upscalers and extras are in
webui/api/extras.py), with A1111 v1.10's
field names and response shapes, so existing clients (``webuiapi``, Krita and Photoshop plugins) list things as
they expect. Thin: the data comes from ``webui.services``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from webui.api import scripts_mapping
from webui.services.container import Services
from webui.services.listings import (EmbeddingLibrary, build_lora_registry, cuda_report,
                                    embeddings_for_current_model, list_vaes, ram_report)

# A1111's latent upscalers (hires fix on latents); listed for clients that populate dropdowns from here.
LATENT_UPSCALE_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                        "Latent (nearest)", "Latent (nearest-exact)")


class LatentUpscaleModeItem(BaseModel):
    name: str


class SdVaeItem(BaseModel):
    model_name: str
    filename: str


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]
    short_hash: str | None = None  # not in A1111's shape; extra keys are ignored by its clients


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class SkippedEmbeddingItem(EmbeddingItem):
    reason: str = Field(description="why the file is not usable with the current checkpoint (not in A1111's shape)")


def _embedding_item(e: Any) -> dict[str, Any]:
    return {"step": e.step, "sd_checkpoint": e.sd_checkpoint, "sd_checkpoint_name": e.sd_checkpoint_name,
            "shape": e.shape, "vectors": e.count}


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, SkippedEmbeddingItem]


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


def build_listings_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])
    # The container's registries (shared with the Extra Networks panel); tests may build Services without them.
    loras = services.loras or build_lora_registry(services.settings)
    links = services.settings.allow_external_model_links

    @router.get("/latent-upscale-modes", response_model=list[LatentUpscaleModeItem])
    def latent_upscale_modes() -> list[dict[str, Any]]:
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @router.get("/sd-vae", response_model=list[SdVaeItem])
    def sd_vae() -> list[dict[str, Any]]:
        # A1111 names a VAE by its file name with extension; "filename" is the full path.
        vaes = services.vaes.files() if services.vaes is not None else \
            list_vaes(services.settings.vae_dir, allow_external_links=links)
        return [{"model_name": p.name, "filename": str(p)} for p in vaes]

    @router.post("/refresh-vae")
    def refresh_vae() -> dict:
        if services.vaes is not None:
            services.vaes.refresh()
        return {}

    @router.get("/loras", response_model=list[LoraItem])
    def list_loras() -> list[dict[str, Any]]:
        return [{"name": i.name, "alias": i.alias, "path": str(i.path), "metadata": i.metadata,
                 "short_hash": i.short_hash} for i in loras.list()]

    @router.post("/refresh-loras")
    def refresh_loras() -> None:
        loras.refresh()  # A1111 answers null (its list_available_networks returns nothing)

    library = services.embeddings or EmbeddingLibrary(
        services.settings.embeddings_dir, allow_pickle=services.settings.allow_pickle, allow_external_links=links)

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    def embeddings() -> dict[str, Any]:
        # A1111's shape: "loaded" = usable with the current checkpoint, "skipped" = the others (plus "reason").
        split = embeddings_for_current_model(library, services.manager)
        loaded = {name: _embedding_item(e) for name, e in split.loaded.items()}
        skipped = {name: {**_embedding_item(s.embedding), "reason": s.reason} if s.embedding is not None else
                   {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 0, "vectors": 0,
                    "reason": s.reason}
                   for name, s in split.skipped.items()}
        return {"loaded": loaded, "skipped": skipped}

    @router.post("/refresh-embeddings")
    def refresh_embeddings() -> None:
        library.refresh()  # A1111 answers null

    @router.get("/prompt-styles", response_model=list[PromptStyleItem])
    def prompt_styles() -> list[dict[str, Any]]:
        styles = services.styles.list() if services.styles is not None else []
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles]

    @router.get("/hypernetworks", response_model=list[HypernetworkItem])
    def hypernetworks() -> list[dict[str, Any]]:
        return []

    @router.get("/scripts", response_model=ScriptsList)
    def scripts() -> dict[str, list[str]]:
        return scripts_mapping.scripts_list(services)

    @router.get("/script-info")
    def script_info() -> list[dict[str, Any]]:
        return scripts_mapping.script_info(services)

    @router.get("/memory", response_model=MemoryResponse)
    def memory() -> dict[str, Any]:
        return {"ram": ram_report(), "cuda": cuda_report(services.manager.memory_report())}

    return router
