"""Take a full-page screenshot of a running Stable Studio, optionally after generating an image.

Used to refresh the README screenshot (``docs/screenshot.png``). Start the app first, then::

    .venv/bin/python scripts/screenshot.py http://127.0.0.1:7860 docs/screenshot.png \\
        --prompt "a watercolor fox in a snowy forest" --size 512 --steps 20 --seed 1234

Without ``--prompt`` it only captures the page as it loads. With it, the script sets the txt2img form
(``--size`` sets both Width and Height; the sliders default to 512, which is slow on a CPU or with the tiny test
model, so pass e.g. ``--size 64`` there), clicks Generate, waits for the gallery to show the image and then
captures the page. Needs Playwright for Python and a Chromium binary (Debian's ``chromium`` package, or
``--chromium PATH``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("url", help="address of the running app, e.g. http://127.0.0.1:7860")
    parser.add_argument("output", type=Path, help="where to write the PNG")
    parser.add_argument("--prompt", help="type this prompt and generate before taking the screenshot")
    parser.add_argument("--negative-prompt", default="", help="negative prompt (with --prompt)")
    parser.add_argument("--size", type=int, help="set Width and Height to this many pixels (multiple of 8)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the UI's)")
    parser.add_argument("--seed", type=int, help="seed (default: the UI's, i.e. random)")
    parser.add_argument("--viewport", default="1400x1000", help="browser window size, WIDTHxHEIGHT")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the generated image")
    parser.add_argument("--chromium", help="Chromium executable (default: `chromium` on PATH or /usr/bin/chromium)")
    args = parser.parse_args(argv)
    if args.size is not None and (args.size < 64 or args.size % 8):
        parser.error("--size must be a multiple of 8, at least 64")
    try:
        width, height = (int(v) for v in args.viewport.lower().split("x"))
    except ValueError:
        parser.error("--viewport must look like 1400x1000")
    args.viewport = {"width": width, "height": height}
    return args


def set_slider(page, label: str, value: int) -> None:
    """Type into the number box Gradio shows beside a slider and commit it."""
    box = page.get_by_label(f"number input for {label}", exact=True)
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from playwright.sync_api import expect, sync_playwright

    chromium = args.chromium or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        print(f"no Chromium at {chromium}; install the chromium package or pass --chromium", file=sys.stderr)
        return 1
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=args.viewport)
            page.goto(args.url)
            expect(page.locator("#txt2img_generate")).to_be_visible(timeout=60_000)
            if args.size is not None:
                set_slider(page, "Width", args.size)
                set_slider(page, "Height", args.size)
            if args.steps is not None:
                set_slider(page, "Sampling steps", args.steps)
            if args.seed is not None:
                seed = page.locator("#txt2img_seed input[type=number]")
                seed.fill(str(args.seed))
                seed.press("Tab")
            if args.prompt:
                page.locator("#txt2img_prompt textarea").fill(args.prompt)
                if args.negative_prompt:
                    page.locator("#txt2img_negative_prompt textarea").fill(args.negative_prompt)
                page.locator("#txt2img_generate").click()
                timeout_ms = args.timeout * 1000
                expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=timeout_ms)
                expect(page.locator("#txt2img_info textarea")).not_to_have_value("", timeout=timeout_ms)
                page.wait_for_function(  # the <img> exists before its bytes arrive
                    "() => [...document.querySelectorAll('#txt2img_gallery img')]"
                    ".some(img => img.complete && img.naturalWidth > 0)", timeout=timeout_ms)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.output), full_page=True)
        finally:
            browser.close()
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
