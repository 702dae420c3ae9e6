"""``python -m webui.provenance detect FILE...``: what each image says about where it came from."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from webui.errors import InvalidRequest
from webui.provenance.detect import inspect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.provenance",
                                     description="Check images for Stable Studio's provenance marks.")
    commands = parser.add_subparsers(dest="command", required=True)
    detect = commands.add_parser("detect", help="report the AI-generated marker, invisible watermark and C2PA "
                                                "manifest of each file")
    detect.add_argument("files", nargs="+", type=Path, metavar="FILE", help="PNG, JPEG or WebP images")
    detect.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    args = parser.parse_args(argv)

    status = 0
    for path in args.files:
        try:
            if path.exists() and not path.is_file():  # a FIFO or /dev/zero would never end
                raise ValueError("not a regular file")
            report = inspect(path.read_bytes())
        except (OSError, ValueError, InvalidRequest) as exc:
            if isinstance(exc, InvalidRequest):
                reason = exc.reason
            else:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"{path}: cannot read: {reason}", file=sys.stderr)
            status = 2
            continue
        if args.json:
            print(json.dumps({"file": str(path), **report.as_dict()}))
        else:
            print(f"{path}: {report.summary()}")
    return status


if __name__ == "__main__":
    sys.exit(main())
