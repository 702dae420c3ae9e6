"""The Extra Networks cards over HTTP (``/studio/v1/extra-networks``): the listing and each card's preview image.

A preview is named by its card (kind + the model's path inside its folder), never by a file path: the service
finds the image beside a listed model under the model folder's rules, so ``..``, absolute paths and links out
of the folder get 404.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel

from webui.errors import InvalidRequest
from webui.services.container import Services
from webui.services.extra_networks import KINDS, Card, ExtraNetworksService

PREFIX = "/studio/v1/extra-networks"


def preview_url(card: Card) -> str | None:
    return f"{PREFIX}/{card.kind}/preview?name={quote(card.key, safe='')}" if card.has_preview else None


class CardItem(BaseModel):
    name: str
    key: str
    insert: str
    description: str
    preview: str | None
    tags: list[str]
    details: dict[str, str]
    note: str


def _item(card: Card) -> dict[str, Any]:
    return {"name": card.name, "key": card.key, "insert": card.insert, "description": card.description,
            "preview": preview_url(card), "tags": list(card.tags), "details": card.details, "note": card.note}


def build_extra_networks_router(services: Services) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["studio"])

    def networks() -> ExtraNetworksService:
        if services.extra_networks is None:
            raise InvalidRequest("kind", "the Extra Networks listing is not available on this server")
        return services.extra_networks

    def check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise InvalidRequest("kind", f"unknown kind {kind!r}; one of {', '.join(KINDS)}")

    @router.get("/{kind}", response_model=list[CardItem],
                summary="Cards of checkpoints, textual_inversion or lora (search: words to match)")
    def cards(kind: str, search: str = Query("", max_length=200), sort: str = "Name") -> list[dict[str, Any]]:
        check_kind(kind)
        return [_item(c) for c in networks().cards(kind, search, sort)]

    @router.get("/{kind}/preview", summary="A listed model's preview image (by the model's key, never a path)")
    def preview(kind: str, name: str = Query(..., max_length=1000)) -> FileResponse:
        path, media_type = networks().preview(kind, name)
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @router.post("/refresh", summary="Rescan the checkpoint, LoRA and embedding folders")
    def refresh() -> dict[str, int]:
        return {kind: len(cards) for kind, cards in networks().refresh().items()}

    return router
