"""X/Y/Z plot (A1111's scripts/xyz_grid.py) as a built-in extension: a grid over up to three varied parameters.

Uses only the public extension API. One script per tab because A1111's axis lists (and so the axis indices its
API clients send) differ between txt2img and img2img.
"""

from __future__ import annotations

from webui.extensions.api import IMG2IMG, TXT2IMG, Extension, Script

from .params import A1111_ARGS, params_model
from .plot import TITLE, run_plot


def setup(ext: Extension) -> None:
    for tab in (TXT2IMG, IMG2IMG):
        ext.add_script(Script(title=TITLE, run=run_plot, params=params_model(tab), tabs=(tab,),
                              a1111_args=A1111_ARGS,
                              description="A grid of images with up to three parameters varied across X, Y and Z"))
