"""Where a replica finds the exact checkpoint file a job names (name + sha256), on the replica's host.

In order: the shared models folder (``--ray-models-dir``, e.g. an NFS mount) when the file there has the same hash;
a copy fetched earlier into the replica cache; else the file is fetched now from the front (through its control
actor, in chunks), its sha256 checked as it arrives, and only a matching file is kept. The replica's own
``models/Stable-diffusion/<name>`` is a symlink to whichever copy is used, so its registry and model manager work
as in the single-process app. A file whose hash differs is never used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Callable

from webui.errors import ModelLoadError
from webui.models.registry import ModelRegistry
from webui.scaleout.messages import CheckpointRef

log = logging.getLogger(__name__)

# (sha256, offset) -> bytes at offset (b"" past the end); raises when the front does not offer the file
ReadChunk = Callable[[str, int], bytes]


class ModelSource:
    def __init__(self, registry: ModelRegistry, shared_checkpoints: Path | None, cache: Path, read: ReadChunk):
        self._registry = registry
        self._shared = shared_checkpoints
        self._cache = cache  # <replica cache>/checkpoints: fetched files named by their sha256
        self._read = read
        self.fetched: list[str] = []  # sha256 of each file this replica fetched (the tests and the log read it)

    def ensure(self, ref: CheckpointRef) -> str:
        """Make ``ref`` available under its name; returns the title to lease it by. ModelLoadError naming the
        checkpoint when no copy with its hash can be had."""
        link = self._registry.directory / _relative(ref.name)
        current = self._registry_hash(ref)
        if current == ref.sha256:
            return self._title(ref)
        problems: list[str] = []
        for candidate in self._candidates(ref):
            self._link(link, candidate)
            found = self._registry_hash(ref)
            if found == ref.sha256:
                return self._title(ref)
            problems.append(f"{candidate} has sha256 {found}, not {ref.sha256}")
        try:
            fetched = self._fetch(ref)
        except ModelLoadError as exc:
            raise ModelLoadError("; ".join([*problems, str(exc)])) from None
        self._link(link, fetched)
        if self._registry_hash(ref) != ref.sha256:  # the cache file was changed under us
            raise ModelLoadError(f"{ref.title}: the fetched copy changed on disk; not used")
        return self._title(ref)

    def _title(self, ref: CheckpointRef) -> str:
        return self._registry.find(ref.name).title

    def _registry_hash(self, ref: CheckpointRef) -> str | None:
        self._registry.refresh()
        match = next((info for info in self._registry.list() if info.name == ref.name), None)
        return match.sha256 if match is not None else None

    def _candidates(self, ref: CheckpointRef) -> list[Path]:
        found = []
        if self._shared is not None:
            shared = self._shared / _relative(ref.name)
            if shared.is_file() and shared.stat().st_size == ref.size:
                found.append(shared)
        cached = self._cached(ref)
        if cached.is_file():
            found.append(cached)
        return found

    def _cached(self, ref: CheckpointRef) -> Path:
        return self._cache / f"{ref.sha256}{PurePosixPath(ref.name).suffix}"

    def _link(self, link: Path, target: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        temporary = link.with_name(f".{link.name}.{os.getpid()}.link")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target)
        os.replace(temporary, link)  # atomic: the registry never sees a half-made link

    def _fetch(self, ref: CheckpointRef) -> Path:
        target = self._cached(ref)
        self._cache.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self._cache).free
        if free < ref.size:
            raise ModelLoadError(f"{ref.title}: not in the shared models folder, and {self._cache} has "
                                 f"{free / 2**30:.1f} GiB free for its {ref.size / 2**30:.1f} GiB")
        log.info("Fetching %s (%.1f MiB) from the front", ref.title, ref.size / 2**20)
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        digest = hashlib.sha256()
        try:
            with open(part, "wb") as handle:
                offset = 0
                while offset < ref.size:
                    chunk = self._read(ref.sha256, offset)
                    if not chunk:
                        break
                    digest.update(chunk)
                    handle.write(chunk)
                    offset += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            if digest.hexdigest() != ref.sha256:
                raise ModelLoadError(f"{ref.title}: the copy fetched from the front has sha256 {digest.hexdigest()}"
                                     f", not {ref.sha256}; not used")
            os.replace(part, target)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray errors, a full disk: the job goes elsewhere, with the reason
            raise ModelLoadError(f"{ref.title}: could not fetch it from the front: {exc}") from None
        finally:
            part.unlink(missing_ok=True)
        self.fetched.append(ref.sha256)
        return target


def _relative(name: str) -> Path:
    """``name`` as a path inside the checkpoints folder; a name that would leave it is refused."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ModelLoadError(f"checkpoint name {name!r} is not a path inside models/Stable-diffusion")
    return Path(*path.parts)
