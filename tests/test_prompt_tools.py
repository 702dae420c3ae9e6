"""The prompt boxes' server side: the counter's HTML (styles included, as A1111 counts) and the page script."""

from __future__ import annotations

from webui.ui.prompt_tools import count_html, page_js


def test_the_counter_counts_the_prompt_with_the_selected_styles(services):
    services.styles.save("Long", "{prompt}, " + "detail " * 80, "blurry")
    assert ">2/75<" in count_html(services, "a cat", [], 20, True)
    assert ">83/150<" in count_html(services, "a cat", ["Long"], 20, True)
    assert ">3/75<" in count_html(services, "ugly", ["Long"], 20, False)  # the style's negative text
    assert ">2/75<" in count_html(services, "a cat", ["Deleted since"], 20, True)  # unknown: the box alone
    assert "too long" in count_html(services, "x" * (services.settings.limits.max_prompt_chars + 1), [], 20, True)


def test_the_page_script_does_not_fetch_api_lists_behind_api_auth():
    assert page_js().startswith('window.studioPageConfig = {"apiLists": true};')
    script = page_js(api_auth=True)
    assert script.startswith('window.studioPageConfig = {"apiLists": false};')
    assert "studioPageConfig?.apiLists === false" in script and "/sdapi/v1/loras" in script
