"""Prompt matrix (A1111's script) as a built-in extension, using only the public extension API."""

from __future__ import annotations

from webui.extensions.api import Extension, Script

from .matrix import A1111_ARGS, TITLE, PromptMatrixValues, run_matrix


def setup(ext: Extension) -> None:
    ext.add_script(Script(title=TITLE, run=run_matrix, params=PromptMatrixValues, a1111_args=A1111_ARGS,
                          description="Every combination of the prompt's |-separated parts, in a labelled grid"))
