"""A1111's extra-network tags: parsing, weights, what is refused, the Lora hashes text and paste by hash."""

from __future__ import annotations

import pytest

from webui.errors import InvalidRequest
from webui.extra_networks import (MAX_LORAS, LoraUse, format_lora_hashes, parse_lora_hashes, prompt_networks, rename_by_hash,
                                  strip_tags)


@pytest.mark.parametrize("prompt, expected", [
    ("a cat <lora:style:0.8>", [LoraUse("style", 0.8, 0.8)]),
    ("<lora:style>", [LoraUse("style", 1.0, 1.0)]),
    ("<lora:style:0.5:1.2>", [LoraUse("style", 0.5, 1.2)]),
    ("<lyco:style:0.7>", [LoraUse("style", 0.7, 0.7)]),
    ("<lora:style:te=0.25:unet=0.75>", [LoraUse("style", 0.25, 0.75)]),
    ("<lora:style:0.6:unet=0.1>", [LoraUse("style", 0.6, 0.1)]),
    ("<lora:sub/dir name:1>, <lora:b:-0.5>", [LoraUse("sub/dir name", 1.0, 1.0), LoraUse("b", -0.5, -0.5)]),
    ("no tags here", []),
])
def test_lora_tags_and_their_weights(prompt, expected):
    assert list(prompt_networks(prompt).loras) == expected


def test_default_weight_is_the_default_multiplier():
    assert prompt_networks("<lora:a>", default_weight=0.6).loras == (LoraUse("a", 0.6, 0.6),)


@pytest.mark.parametrize("prompt, message", [
    ("<lora:a:lots>", "'lots' is not a number"),
    ("<lora:a:1:x>", "'x' is not a number"),
    ("<lora:a:1:dyn=16>", "dyn"),
    ("<lora:a:1:1:16>", "dyn"),
    ("<lora:a:nan>", "finite"),
    ("<lora: :1>", "name is missing"),
])
def test_bad_tags_are_refused_naming_the_prompt(prompt, message):
    with pytest.raises(InvalidRequest) as err:
        prompt_networks(prompt)
    assert err.value.field == "prompt" and message in str(err.value)


def test_unknown_kinds_and_negative_prompt_tags_are_reported_not_applied():
    found = prompt_networks("a <hypernet:anime:1> cat <lora:a:1>", "ugly <lora:b:1>")
    assert found.loras == (LoraUse("a", 1.0, 1.0),)
    assert any("<hypernet:anime:1>" in w for w in found.warnings)
    assert any("negative prompt" in w and "<lora:b:1>" in w for w in found.warnings)


@pytest.mark.parametrize("prompt, text", [
    ("a cat <lora:x:0.8>, red", "a cat , red"),
    ("[a <lora:x:1>:b:5] AND c <hypernet:h:1>", "[a :b:5] AND c "),
    ("(<lora:x:1> dog:1.2)", "( dog:1.2)"),
    ("a <b> c", "a <b> c"),  # not a tag: no kind:args
])
def test_tags_are_removed_from_the_text(prompt, text):
    assert strip_tags(prompt) == text


def test_lora_hashes_text_as_a1111_writes_it():
    assert format_lora_hashes([("style", "abcdef123456"), ("a:b,c", "0123456789ab")]) == \
        "style: abcdef123456, abc: 0123456789ab"
    assert parse_lora_hashes("style: abcdef123456, other: 0123456789ab") == \
        {"style": "abcdef123456", "other": "0123456789ab"}


def test_paste_renames_a_lora_by_hash():
    local = {"abcdef123456": "my_style_v2"}
    prompt = "a cat <lora:style:0.8> <lora:gone:1> <lora:kept:1>"
    renamed = rename_by_hash(prompt, "style: abcdef123456, gone: 999999999999", local.get)
    assert renamed == "a cat <lora:my_style_v2:0.8> <lora:gone:1> <lora:kept:1>"
    assert rename_by_hash(prompt, "", local.get) == prompt


def test_the_field_named_is_the_one_with_the_bad_tag():
    with pytest.raises(InvalidRequest) as err:
        prompt_networks("<lora:a:x>", field_name="hr_prompt")
    assert err.value.field == "hr_prompt"


def test_too_many_lora_tags_are_refused():
    assert len(prompt_networks("<lora:a:1>" * MAX_LORAS).loras) == MAX_LORAS
    with pytest.raises(InvalidRequest, match=f"{MAX_LORAS + 1} LoRA tags is over this server's limit"):
        prompt_networks("<lora:a:1>" * (MAX_LORAS + 1))


def test_tags_do_not_count_against_the_prompt_token_limit():
    from webui.config import Limits
    from webui.services.prompt_budget import PromptBudget

    budget = PromptBudget(Limits(max_prompt_tokens=75))
    budget.check("prompt", "cat " * 70 + "<lora:a_very_long_lora_name_with_many_words_in_it:0.8>")
    with pytest.raises(InvalidRequest, match="tokens is over"):
        budget.check("prompt", "cat " * 76)
