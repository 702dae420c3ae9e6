"""Prompt styles: A1111's styles.csv read and written as A1111 does, applied to prompts, through the API."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui.errors import InvalidRequest
from webui.infotext import read_png_infotext
from webui.server import create_app
from webui.services.styles import PromptStyles, merge_prompts, read_styles_csv

SMALL = {"width": 64, "height": 64, "steps": 2}

# Written by A1111 1.10 (csv.DictWriter, utf-8-sig, CRLF): quotes around fields with commas, doubled quotes inside,
# a newline inside a quoted field, a comment row, and an old-style row with an empty negative prompt.
A1111_FILE = ('\ufeffname,prompt,negative_prompt\r\n'
              'Cinematic,"cinematic still of {prompt}, film grain","blurry, ""lowres"""\r\n'
              'Painterly,oil painting,\r\n'
              '# notes,not a style,\r\n'
              'Two lines,"line one\r\nline two",\r\n'
              ',,\r\n').encode("utf-8")


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_reads_a1111_files_with_bom_quotes_commas_comments_and_multiline_fields(tmp_path):
    styles = read_styles_csv(A1111_FILE, tmp_path / "styles.csv")
    assert [(s.name, s.prompt, s.negative_prompt) for s in styles] == [
        ("Cinematic", "cinematic still of {prompt}, film grain", 'blurry, "lowres"'),
        ("Painterly", "oil painting", ""),
        ("Two lines", "line one\r\nline two", ""),
    ]


def test_reads_the_old_name_text_format_and_spaces_after_commas(tmp_path):
    styles = read_styles_csv(b"name, text\nOld, a style\n", tmp_path / "styles.csv")
    assert [(s.name, s.prompt, s.negative_prompt) for s in styles] == [("Old", "a style", "")]


@pytest.mark.parametrize("style, prompt, expected", [
    ("cinematic still of {prompt}, film grain", "a cat", "cinematic still of a cat, film grain"),
    ("oil painting", "a cat", "a cat, oil painting"),
    ("oil painting", "  ", "oil painting"),
    ("", "a cat", "a cat"),
])
def test_merge_is_a1111s(style, prompt, expected):
    assert merge_prompts(style, prompt) == expected


def test_apply_in_order_and_unknown_names_are_refused(tmp_path):
    write(tmp_path / "styles.csv", A1111_FILE)
    styles = PromptStyles(tmp_path)
    assert styles.apply("a cat", "ugly", ["Cinematic", "Painterly"]) == (
        "cinematic still of a cat, film grain, oil painting", 'ugly, blurry, "lowres"')
    with pytest.raises(InvalidRequest) as err:
        styles.apply("a cat", "", ["Painterly", "Nope"])
    assert err.value.field == "styles" and "'Nope'" in str(err.value) and "'Painterly'" in str(err.value)


def test_extract_finds_the_applied_styles_and_the_original_prompts(tmp_path):
    write(tmp_path / "styles.csv", A1111_FILE)
    styles = PromptStyles(tmp_path)
    prompt, negative = styles.apply("a cat", "ugly", ["Cinematic", "Painterly"])
    assert styles.extract(prompt, negative) == (["Cinematic", "Painterly"], "a cat", "ugly")
    assert styles.extract("a dog", "") == ([], "a dog", "")


def test_extra_styles_files_are_read_and_saved_back_to_their_own_file(tmp_path):
    write(tmp_path / "styles.csv", "name,prompt,negative_prompt\nA,a,\n")
    write(tmp_path / "styles-extra.csv", "name,prompt,negative_prompt\nB,b,\n")
    styles = PromptStyles(tmp_path)
    assert styles.names() == ["A", "B"]
    assert styles.save("B", "b2", "nb") is True
    assert styles.save("C", "c", "") is False
    assert [(s.name, s.prompt) for s in read_styles_csv((tmp_path / "styles-extra.csv").read_bytes(), tmp_path)] \
        == [("B", "b2")]
    assert [s.name for s in read_styles_csv((tmp_path / "styles.csv").read_bytes(), tmp_path)] == ["A", "C"]


def test_save_writes_what_a1111_reads_and_survives_a_reload(tmp_path):
    styles = PromptStyles(tmp_path)
    assert styles.names() == [] and not styles.problems
    assert styles.save("Quoted", 'a "quoted", comma\nnew line {prompt}', "neg, ative") is False
    data = (tmp_path / "styles.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbfname,prompt,negative_prompt\r\n")  # BOM and header, as A1111 writes
    assert b'"a ""quoted"", comma\nnew line {prompt}"' in data
    again = PromptStyles(tmp_path)
    style = again.get("Quoted")
    assert (style.prompt, style.negative_prompt) == ('a "quoted", comma\nnew line {prompt}', "neg, ative")
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temp file, renamed over


@pytest.mark.parametrize("name", ["", "   ", "# comment", "two\nlines", "x" * 201])
def test_bad_style_names_are_refused(tmp_path, name):
    with pytest.raises(InvalidRequest) as err:
        PromptStyles(tmp_path).save(name, "p", "")
    assert err.value.field == "name"
    assert not (tmp_path / "styles.csv").exists()


@pytest.mark.parametrize("data, reason", [
    (b"name,prompt\nA,\xff\xfe broken\n", "not UTF-8"),
    (b"title,words\nA,b\n", "name, prompt, negative_prompt"),
    (b'name,prompt\nA,"' + b"x" * 200_000 + b'"\n', "field larger than field limit"),
], ids=["not-utf8", "no-header", "huge-field"])
def test_a_broken_file_is_reported_and_never_written_over(tmp_path, data, reason):
    write(tmp_path / "styles.csv", data)
    write(tmp_path / "styles-good.csv", "name,prompt\nGood,g\n")
    styles = PromptStyles(tmp_path)  # does not raise: start-up goes on
    assert styles.names() == ["Good"]
    [problem] = styles.problems
    assert "styles.csv" in problem and reason in problem
    with pytest.raises(InvalidRequest) as err:
        styles.save("New", "n", "")
    assert "styles.csv could not be read" in str(err.value)
    assert (tmp_path / "styles.csv").read_bytes() == data


# --- through the API ------------------------------------------------------------------------------------------------

@pytest.fixture
def client(services):
    write(services.settings.data_dir / "styles.csv", A1111_FILE)
    services.styles.reload()
    with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as test_client:
        yield test_client


def test_prompt_styles_lists_the_real_styles(client):
    assert client.get("/sdapi/v1/prompt-styles").json() == [
        {"name": "Cinematic", "prompt": "cinematic still of {prompt}, film grain",
         "negative_prompt": 'blurry, "lowres"'},
        {"name": "Painterly", "prompt": "oil painting", "negative_prompt": ""},
        {"name": "Two lines", "prompt": "line one\r\nline two", "negative_prompt": ""},
    ]


def test_txt2img_styles_field_is_applied_and_written_to_the_infotext(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "negative_prompt": "ugly",
                                                      "styles": ["Cinematic", "Painterly"], **SMALL})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert info["prompt"] == "cinematic still of a cat, film grain, oil painting"
    assert info["styles"] == ["Cinematic", "Painterly"]  # as A1111's info names them
    text = read_png_infotext(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]))))
    assert text.startswith("cinematic still of a cat, film grain, oil painting\n"
                           'Negative prompt: ugly, blurry, "lowres"\n')


def test_an_unknown_style_is_a_422_naming_it(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "styles": ["Painterly", "Ghost"],
                                                      **SMALL})
    assert response.status_code == 422
    assert response.json()["error"].startswith("styles: unknown style(s) 'Ghost'")


def test_img2img_styles_field_is_applied_too(client):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 60)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    response = client.post("/sdapi/v1/img2img", json={"prompt": "a cat", "styles": ["Painterly"],
                                                      "init_images": [image], **SMALL})
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["prompt"] == "a cat, oil painting"
