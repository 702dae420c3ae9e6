"""Reading safetensors files without torch: the JSON header, and sha256 hashes of the whole file or its data.

A header is 8 bytes of little-endian length followed by that much JSON, so listing and detecting models stays
cheap. Shared by the checkpoint registry and detection and by the LoRA/embedding listing.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, BinaryIO

MAX_HEADER = 100 * 1024 * 1024  # real headers are < 1 MB; larger means garbage, not a model
_HASH_CHUNK = 1 << 20


def read_header(fh: BinaryIO, size: int) -> tuple[dict[str, Any], int] | None:
    """(header JSON, header length) of a safetensors stream at its start, or None when it is not one."""
    head = fh.read(8)
    if len(head) != 8:
        return None
    length = struct.unpack("<Q", head)[0]
    if not 0 < length <= min(MAX_HEADER, size - 8):
        return None
    try:
        header = json.loads(fh.read(length))
    except ValueError:  # includes UnicodeDecodeError
        return None
    return (header, length) if isinstance(header, dict) else None


def sha256_file(path: Path, offset: int = 0) -> str:
    """sha256 of the file from ``offset`` on (A1111's LoRA hash skips the header; checkpoint hashes do not)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
