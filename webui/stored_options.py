"""Reading one stored option from ``<data dir>/config.json`` before the services exist (start-up defaults).

The options service owns that file (webui/services/options.py); this read-only peek lets the command line take a
default from it, e.g. the memory profile chosen in the Settings tab, which can only apply at the next start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.json"
MEMORY_PROFILE_KEY = "studio_memory_profile"


def stored_option(data_dir: Path, key: str, allowed: tuple[Any, ...]) -> Any | None:
    """The stored value of ``key`` if it is one of ``allowed``; None when absent, unreadable or anything else."""
    try:
        data = json.loads((data_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return value if value in allowed else None
