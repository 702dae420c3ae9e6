"""Domain errors. Each carries a message written for the user; the UI and API map them to their own shapes."""

from __future__ import annotations


class StudioError(Exception):
    """Base class: ``str(error)`` is a complete sentence a user can act on."""


class InvalidRequest(StudioError):
    """A request field is wrong. ``field`` names it so the API can return 422 pointing at it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class ModelNotFound(StudioError):
    pass


class ModelLoadError(StudioError):
    """A checkpoint exists but cannot be used (unknown layout, corrupt, pickle refused...)."""


class NoModelAvailable(StudioError):
    pass


class OutOfMemory(StudioError):
    pass


class Cancelled(StudioError):
    pass


class QueueFull(StudioError):
    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class DownloadError(StudioError):
    pass
