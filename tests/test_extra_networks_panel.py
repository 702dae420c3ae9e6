"""The Extra Networks cards: listing, metadata, previews served only beside listed models, hostile names escaped."""

from __future__ import annotations

import io
import json
import os
from html.parser import HTMLParser

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from tests.test_listings import write_safetensors
from webui.api.extra_networks import build_extra_networks_router
from webui.api.sdapi import install_error_handlers
from webui.ui.extra_networks import cards_html


def png_bytes(color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def client(services):
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_extra_networks_router(services))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def lora_dir(services):
    return services.settings.lora_dir


def test_lora_cards_show_preview_description_and_kohya_metadata(services, client, lora_dir):
    tags = json.dumps({"10_dogs": {"sks dog": 40, "grass": 3}, "5_reg": {"dog": 12, "grass": 2}})
    write_safetensors(lora_dir / "animals" / "sks-dog.safetensors", {"lora_unet_x.lora_down.weight": [4, 8]},
                      {"ss_sd_model_name": "v1-5-pruned-emaonly.safetensors", "ss_resolution": "(512, 512)",
                       "ss_network_dim": "16", "ss_network_alpha": "8", "ss_tag_frequency": tags})
    (lora_dir / "animals" / "sks-dog.preview.png").write_bytes(png_bytes())
    (lora_dir / "animals" / "sks-dog.txt").write_text("My dog, trained on 20 photos")
    write_safetensors(lora_dir / "plain.safetensors", {"w": [2]})
    (lora_dir / "plain.json").write_text(json.dumps({"description": "from A1111's user metadata"}))
    services.extra_networks.refresh()

    items = {i["name"]: i for i in client.get("/studio/v1/extra-networks/lora").json()}
    dog = items["sks-dog"]
    assert dog["insert"] == "<lora:sks-dog:1>"
    assert dog["key"] == "animals/sks-dog.safetensors"
    assert dog["description"] == "My dog, trained on 20 photos"
    assert dog["tags"][:3] == ["sks dog", "dog", "grass"]  # summed over datasets, most frequent first
    assert dog["details"]["Base model"] == "v1-5-pruned-emaonly.safetensors"
    assert dog["details"]["Resolution"] == "(512, 512)"
    assert (dog["details"]["Network dim"], dog["details"]["Network alpha"]) == ("16", "8")
    assert items["plain"]["description"] == "from A1111's user metadata" and items["plain"]["preview"] is None

    image = client.get(dog["preview"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == png_bytes()


def test_search_filters_by_name_path_and_tag_and_sort_by_date(services, client, lora_dir):
    write_safetensors(lora_dir / "styles" / "ink.safetensors", {"w": [1]},
                      {"ss_tag_frequency": json.dumps({"a": {"watercolor": 5}})})
    write_safetensors(lora_dir / "zebra.safetensors", {"w": [1]})
    os.utime(lora_dir / "styles" / "ink.safetensors", (1_000_000, 1_000_000))
    services.extra_networks.refresh()

    def names(**params):
        return [i["name"] for i in client.get("/studio/v1/extra-networks/lora", params=params).json()]

    assert names() == ["ink", "zebra"]
    assert names(search="WATERCOLOR") == ["ink"]  # a training tag
    assert names(search="styles/") == ["ink"]  # the path
    assert names(search="zeb") == ["zebra"]
    assert names(search="nothing-like-this") == []
    assert names(sort="Date modified") == ["zebra", "ink"]


def test_refresh_shows_new_files(services, client, lora_dir):
    assert client.get("/studio/v1/extra-networks/lora").json() == []
    write_safetensors(lora_dir / "new.safetensors", {"w": [1]})
    assert client.post("/studio/v1/extra-networks/refresh").json()["lora"] == 1
    assert [i["name"] for i in client.get("/studio/v1/extra-networks/lora").json()] == ["new"]


def test_checkpoint_and_embedding_cards(services, client):
    emb = services.settings.embeddings_dir
    write_safetensors(emb / "fits.safetensors", {"emb_params": [2, 32]})
    write_safetensors(emb / "too-wide.safetensors", {"emb_params": [2, 768]})
    (emb / "fits.png").write_bytes(png_bytes("blue"))
    services.extra_networks.refresh()
    embeddings = {i["name"]: i for i in client.get("/studio/v1/extra-networks/textual_inversion").json()}
    assert embeddings["fits"]["insert"] == "fits" and embeddings["fits"]["note"] == ""
    assert embeddings["fits"]["details"]["Vectors"] == "2"
    assert client.get(embeddings["fits"]["preview"]).content == png_bytes("blue")
    assert "768 wide" in embeddings["too-wide"]["note"]  # listed, and says why it cannot be used now

    checkpoints = client.get("/studio/v1/extra-networks/checkpoints").json()
    titles = {info.title for info in services.registry.list()}
    assert {c["insert"] for c in checkpoints} == titles
    assert client.get("/studio/v1/extra-networks/other").status_code == 422


def test_the_preview_route_serves_nothing_but_previews_beside_listed_models(services, client, lora_dir, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes("black"))
    write_safetensors(lora_dir / "ok.safetensors", {"w": [1]})
    (lora_dir / "ok.png").write_bytes(png_bytes())
    write_safetensors(lora_dir / "linked.safetensors", {"w": [1]})
    (lora_dir / "linked.preview.png").symlink_to(secret)  # a link out of models/Lora
    services.extra_networks.refresh()
    route = "/studio/v1/extra-networks/lora/preview"

    assert client.get(route, params={"name": "ok.safetensors"}).status_code == 200
    for name in ("../../secret.png", str(secret), "ok.png", "../Lora/ok.safetensors", "linked.safetensors",
                 "missing.safetensors", "ok.safetensors/../../x"):
        response = client.get(route, params={"name": name})
        assert response.status_code == 404, name
        assert response.content != png_bytes("black")
    assert client.get("/studio/v1/extra-networks/..%2F..%2Fetc/preview", params={"name": "ok.safetensors"}
                      ).status_code in (404, 422)
    linked = next(i for i in client.get("/studio/v1/extra-networks/lora").json() if i["name"] == "linked")
    assert linked["preview"] is None  # the card shows the placeholder, not the linked file


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.cards: list[dict] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if "studio-en-card" in (attrs.get("class") or "").split():
            self.cards.append(attrs)


def test_a_hostile_file_name_is_only_ever_text(services, lora_dir):
    hostile = "x'\"><script>alert(1)<img src=y onerror=alert(2)>"  # any byte but "/" can be in a file name
    write_safetensors(lora_dir / f"{hostile}.safetensors", {"w": [1]},
                      {"ss_tag_frequency": json.dumps({"d": {"<b>bold</b>": 1}}), "ss_sd_model_name": "<i>m</i>"})
    (lora_dir / f"{hostile}.txt").write_text("<script>alert(3)</script>")
    services.extra_networks.refresh()
    page = cards_html(services, "txt2img", "lora")
    parser = _Collect()
    parser.feed(page)
    assert "script" not in parser.tags and "b" not in parser.tags and "i" not in parser.tags
    assert parser.tags.count("img") == 0  # no preview: only the placeholder, and the name made no <img>
    [card] = parser.cards
    assert card["data-insert"] == f"<lora:{hostile}:1>"  # the attribute holds the exact text, unbroken
    assert card["data-name"] == hostile and card["data-tab"] == "txt2img"
    assert "onerror" not in card
