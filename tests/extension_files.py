"""Write extension folders (extension.toml + code) into a test's tmp dir."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_extension(root: Path, name: str, code: str, *, api: str = ">=1.0,<2", files: dict[str, str] | None = None,
                    manifest: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    if manifest:
        (folder / "extension.toml").write_text(f'name = "{name}"\nversion = "0.1.0"\napi = "{api}"\n')
    (folder / "main.py").write_text(textwrap.dedent(code))
    for path, text in (files or {}).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(textwrap.dedent(text))
    return folder
