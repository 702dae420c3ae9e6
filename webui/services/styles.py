"""Prompt styles in A1111's ``styles.csv`` format: read, applied to prompts, saved, and found again in a prompt.

Files: ``<data dir>/styles.csv`` (where new styles are saved) and any ``<data dir>/styles*.csv`` beside it, as A1111
reads them when started with ``--styles-file "styles*.csv"``. Columns ``name, prompt, negative_prompt`` (A1111's old
``name, text`` too); a name starting with ``#`` is a comment row. A style's text with ``{prompt}`` has the prompt put
there, otherwise the prompt and the style are joined with ", " (A1111's ``merge_prompts``).

A file that cannot be read is reported (logged, and listed in :attr:`PromptStyles.problems` for the UI) and never
written over: saving a style into it is refused until it is fixed or moved.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.atomic import atomic_write_bytes
from webui.errors import InvalidRequest

log = logging.getLogger(__name__)

FIELDS = ("name", "prompt", "negative_prompt")
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str
    path: Path  # the file it was read from, and is saved back to


def merge_prompts(style_text: str, prompt: str) -> str:
    """A1111's rule: ``{prompt}`` in the style is replaced by the prompt, else both are joined with ", "."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def _strip_style_text(style_text: str, prompt: str) -> tuple[bool, str]:
    """The prompt without ``style_text`` if the style was applied to it (A1111's ``extract_style_text_from_prompt``)."""
    stripped, style = prompt.strip(), style_text.strip()
    if "{prompt}" in style:
        left, right = style.split("{prompt}", 1)[0], style.split("{prompt}")[-1]
        if stripped.startswith(left) and stripped.endswith(right) and len(stripped) >= len(left) + len(right):
            return True, stripped[len(left):len(stripped) - len(right)]
        return False, prompt
    if stripped.endswith(style):
        rest = stripped[:len(stripped) - len(style)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


def read_styles_csv(data: bytes, path: Path) -> list[PromptStyle]:
    """Parse one A1111 styles file (UTF-8, with or without BOM). Raises ValueError saying what is wrong."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
    try:
        header = reader.fieldnames or []
        if header and ("name" not in header or not ({"prompt", "text"} & set(header))):
            raise ValueError(f"the first row must name the columns name, prompt, negative_prompt "
                             f"(found {', '.join(map(repr, header))})")
        styles = []
        for row in reader:
            name = (row.get("name") or "").strip()
            if not name or name.startswith("#"):  # blank rows and A1111's comment rows
                continue
            prompt = row["prompt"] if "prompt" in row else row.get("text")
            styles.append(PromptStyle(name, prompt or "", row.get("negative_prompt") or "", path))
        return styles
    except csv.Error as exc:
        raise ValueError(f"line {reader.line_num}: {exc}") from None


def write_styles_csv(styles: list[PromptStyle]) -> bytes:
    """A1111's way of writing: UTF-8 with BOM, a header row, minimal quoting, CRLF line ends (csv's default)."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=FIELDS)
    writer.writeheader()
    for style in styles:
        writer.writerow({"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt})
    return out.getvalue().encode("utf-8-sig")


class PromptStyles:
    """The styles of one data dir. Read at start and on :meth:`reload`; thread-safe."""

    def __init__(self, data_dir: Path):
        self.default_path = data_dir / "styles.csv"
        self._styles: dict[str, PromptStyle] = {}
        self._broken: dict[Path, str] = {}
        self._lock = threading.Lock()
        self.reload()

    def files(self) -> list[Path]:
        extra = sorted(p for p in self.default_path.parent.glob("styles*.csv") if p != self.default_path)
        return [self.default_path, *extra]

    def reload(self) -> None:
        styles: dict[str, PromptStyle] = {}
        broken: dict[Path, str] = {}
        for path in self.files():
            try:
                if not path.exists():
                    continue
                for style in read_styles_csv(path.read_bytes(), path):
                    styles[style.name] = style  # a later file's style of the same name wins, as in A1111
            except (OSError, ValueError) as exc:
                broken[path] = str(exc)
                log.warning("Prompt styles: could not read %s: %s", path, exc)
        with self._lock:
            self._styles, self._broken = styles, broken

    @property
    def problems(self) -> list[str]:
        with self._lock:
            return [f"{path.name} could not be read ({why}); its styles are not listed" for path, why in
                    self._broken.items()]

    def list(self) -> list[PromptStyle]:
        with self._lock:
            return list(self._styles.values())

    def names(self) -> list[str]:
        return [style.name for style in self.list()]

    def get(self, name: str) -> PromptStyle | None:
        with self._lock:
            return self._styles.get(name)

    def _resolve(self, names: list[str], field: str) -> list[PromptStyle]:
        found = [self.get(name) for name in names]
        unknown = [name for name, style in zip(names, found) if style is None]
        if unknown:
            listed = ", ".join(map(repr, self.names())) or "none saved"
            raise InvalidRequest(field, f"unknown style(s) {', '.join(map(repr, unknown))} (styles: {listed}; "
                                        "GET /sdapi/v1/prompt-styles)")
        return [style for style in found if style is not None]

    def apply(self, prompt: str, negative_prompt: str, names: list[str],
              field: str = "styles") -> tuple[str, str]:
        """The prompts with each named style applied in turn, as A1111 does; an unknown name is an
        InvalidRequest naming ``field``."""
        for style in self._resolve(names, field):
            prompt = merge_prompts(style.prompt, prompt)
            negative_prompt = merge_prompts(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def apply_to_fields(self, fields: dict[str, Any], names: list[str], field: str = "styles") -> dict[str, Any]:
        """Request fields with the styles applied to ``prompt``/``negative_prompt`` and to a hires prompt that is
        given (an empty one means the styled prompt already), as A1111 does."""
        styles = self._resolve(names, field)
        fields = dict(fields)
        for key, negative in (("prompt", False), ("negative_prompt", True), ("hr_prompt", False),
                              ("hr_negative_prompt", True)):
            if key.startswith("hr_") and not fields.get(key):
                continue
            text = fields.get(key) or ""
            for style in styles:
                text = merge_prompts(style.negative_prompt if negative else style.prompt, text)
            fields[key] = text
        return fields

    def extract(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """The styles a styled prompt pair was made with, and the prompts without them (A1111's
        ``extract_styles_from_prompt``: outermost style first found, returned in the order they were applied)."""
        found: list[str] = []
        candidates = [s for s in self.list() if s.prompt or s.negative_prompt]
        while True:
            for style in candidates:
                ok, new_prompt = _strip_style_text(style.prompt, prompt)
                ok_negative, new_negative = _strip_style_text(style.negative_prompt, negative_prompt)
                if ok and ok_negative:
                    prompt, negative_prompt = new_prompt, new_negative
                    candidates.remove(style)
                    found.append(style.name)
                    break
            else:
                return list(reversed(found)), prompt, negative_prompt

    def save(self, name: str, prompt: str, negative_prompt: str) -> bool:
        """Add or replace the style ``name`` in its file (``styles.csv`` for a new one), atomically.

        Returns True when an existing style was overwritten. Refuses a file that could not be read, so that saving
        never drops the styles it holds."""
        name = name.strip()
        if not name:
            raise InvalidRequest("name", "give the style a name")
        if len(name) > MAX_NAME_CHARS or name.startswith("#") or any(c in name for c in "\r\n"):
            raise InvalidRequest("name", f"a style name is one line of at most {MAX_NAME_CHARS} characters, not "
                                         "starting with '#'")
        with self._lock:
            old = self._styles.get(name)
            path = old.path if old is not None else self.default_path
            if path in self._broken:
                raise InvalidRequest("name", f"{path.name} could not be read ({self._broken[path]}); fix or move "
                                             "it before saving styles into it")
            styles = dict(self._styles)
            styles[name] = PromptStyle(name, prompt, negative_prompt, path)
            try:
                atomic_write_bytes(path, write_styles_csv([s for s in styles.values() if s.path == path]))
            except OSError as exc:
                raise InvalidRequest("name", f"could not write {path.name}: {exc.strerror or exc}") from None
            self._styles = styles
        return old is not None
