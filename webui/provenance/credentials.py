"""C2PA Content Credentials through ``c2pa_manifest`` (C2paSigner, read_manifest), behind one small adapter.

Signing never costs the user an image: when C2PA cannot be used, ``sign`` raises ``CredentialsUnavailable`` with
the reason, and the caller keeps the unsigned PNG and records why in its infotext.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from webui.provenance import c2pa_manifest


class CredentialsUnavailable(Exception):
    """C2PA cannot be used here; the message says why."""


class ContentCredentials:
    """The one local signer (key and certificate under ``key_dir``, made on first use); thread-safe."""

    def __init__(self, key_dir: Path):
        self._key_dir = key_dir
        self._lock = threading.Lock()
        self._signer: Any = None
        self._problem: str | None = None

    def sign(self, png: bytes, *, title: str, infotext: str) -> bytes:
        with self._lock:  # one signer, built once; signing itself is quick next to generation
            signer = self._open()
            try:
                return signer.sign_png(png, title=title, infotext=infotext)
            except c2pa_manifest.C2paUnavailable as exc:
                raise CredentialsUnavailable(str(exc) or "the c2pa library cannot be used") from None
            except Exception as exc:  # a signing bug must cost the manifest, never the user's image
                raise CredentialsUnavailable(f"signing failed: {exc}") from None

    def _open(self) -> Any:
        if self._signer is not None:
            return self._signer
        if self._problem is None:
            try:
                self._signer = c2pa_manifest.C2paSigner(self._key_dir)
                return self._signer
            except c2pa_manifest.C2paUnavailable as exc:
                self._problem = str(exc) or "the c2pa library cannot be used"
            except Exception as exc:  # e.g. an unwritable key folder: costs the manifest, not the image
                self._problem = f"cannot set up the signing key in {self._key_dir}: {exc}"
        raise CredentialsUnavailable(self._problem)


def read_credentials(png: bytes) -> dict[str, Any]:
    """``{"present": bool | None, "valid": bool | None, "state": str | None, "problem": str | None}``.

    ``valid`` means the manifest's signature and hashes check out; a locally made certificate is never "trusted"
    by others, so "untrusted signer" alone does not make it invalid.
    """
    try:
        store = c2pa_manifest.read_manifest(png)
    except c2pa_manifest.C2paUnavailable as exc:
        return {"present": None, "valid": None, "state": None, "problem": str(exc) or "C2PA cannot be read here"}
    except Exception as exc:  # a corrupt or hostile manifest in an uploaded file is a finding, not a crash
        return {"present": True, "valid": False, "state": "Invalid", "problem": f"unreadable manifest: {exc}"}
    if store is None:
        return {"present": False, "valid": None, "state": None, "problem": None}
    state = store.get("validation_state")
    failures = [s for s in store.get("validation_status") or []
                if isinstance(s, dict) and s.get("code") != "signingCredential.untrusted"]
    valid = state in ("Valid", "Trusted") if state is not None else not failures  # older stores: failures only
    problem = None
    if not valid and failures:
        problem = str(failures[0].get("explanation") or failures[0].get("code"))[:300]
    return {"present": True, "valid": valid, "state": state, "problem": problem}
