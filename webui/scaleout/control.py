"""The front's control actor: a small Ray actor on the front's own node that replicas talk to.

It holds what flows *to* running replica jobs (Interrupt, Skip, "someone watches": ``Signals``), what replicas say
about themselves (``ReplicaStatus``, shown in the UI), and serves the checkpoints the front offers by sha256 in
chunks, so a replica without the shared models folder can fetch one. It lives as long as the front's Ray driver
(not detached): when the front exits, Ray removes it.
"""

from __future__ import annotations

from webui.scaleout.messages import Signals
from webui.scaleout.status import ReplicaStatus

CHUNK_BYTES = 64 * 1024 * 1024  # a fetch moves the file in pieces of this size (bounded memory on both sides)


class FrontControl:
    """Wrapped with ``ray.remote`` by webui/scaleout/front.py; plain Python here so it stays testable."""

    def __init__(self) -> None:
        self._signals: dict[str, Signals] = {}
        self._replicas: dict[str, ReplicaStatus] = {}
        self._files: dict[str, tuple[str, int]] = {}  # sha256 -> (path on this node, size)

    # ---- jobs
    def signal(self, job_id: str, signals: Signals) -> None:
        self._signals[job_id] = signals

    def signals(self, job_id: str) -> Signals:
        return self._signals.get(job_id, Signals())

    def forget(self, job_id: str) -> None:
        self._signals.pop(job_id, None)

    # ---- replicas
    def report(self, status: ReplicaStatus) -> None:
        self._replicas[status.replica_id] = status

    def drop(self, replica_id: str) -> None:
        self._replicas.pop(replica_id, None)

    def replicas(self) -> list[ReplicaStatus]:
        return list(self._replicas.values())

    # ---- checkpoint files
    def offer(self, sha256: str, path: str, size: int) -> None:
        """Allow replicas to fetch the file with this hash (the front offers only files it lists)."""
        self._files[sha256] = (path, size)

    def size(self, sha256: str) -> int | None:
        entry = self._files.get(sha256)
        return entry[1] if entry else None

    def read(self, sha256: str, offset: int, length: int = CHUNK_BYTES) -> bytes:
        """Bytes ``offset``..``offset+length`` of the offered file (b"" past its end)."""
        entry = self._files.get(sha256)
        if entry is None:
            raise FileNotFoundError(f"the front offers no checkpoint with sha256 {sha256}")
        with open(entry[0], "rb") as handle:
            handle.seek(offset)
            return handle.read(min(length, CHUNK_BYTES))
