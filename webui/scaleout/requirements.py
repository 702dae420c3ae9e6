"""Whether Ray Serve is installed, asked before anything heavy runs: without it ``--ray-address`` cannot work.

Looks with ``importlib.util.find_spec`` and never imports Ray, so the check is instant and a start without
``--ray-address`` keeps Ray out of the process.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MISSING_RAY = ("--ray-address needs Ray Serve, which is not installed in this environment. Install it with "
               "'.venv/bin/pip install -r requirements-ray.txt', or start with ./launch.sh, which installs it "
               "when --ray-address is given.")


def missing_ray() -> str | None:
    """The message to show when Ray Serve is not installed here (no ``ray`` package, or one without ``serve``),
    else None. A package is only located, not imported."""
    # find_spec("ray.serve") would import ray itself to find its submodule: look in the package's folders instead.
    spec = importlib.util.find_spec("ray")
    folders = spec.submodule_search_locations if spec is not None else None
    if folders and any((Path(folder) / "serve" / "__init__.py").is_file() for folder in folders):
        return None
    return MISSING_RAY
