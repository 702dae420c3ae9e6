"""How long a generation job will take on this server, before it starts.

Work is counted in megapixel-steps (pixels x denoising steps x images, both hires passes included); the speed is
what this process measured on its previous jobs per device kind, or, until one finished, a conservative built-in
figure per kind (a CPU at about 2.5 min per 512x512, 20-step SD 1.5 image; a CUDA GPU at a fraction of a second per
step). The UI asks for a second press of Generate when a job is estimated past the ``confirm_long_jobs_seconds``
option; the API does not ask (clients cannot answer) but logs the estimate.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from webui.errors import StudioError
from webui.types import Img2ImgRequest, Txt2ImgRequest

# Megapixel-steps per second before anything was measured here. On the low side, so that the first warning errs
# towards asking.
DEFAULT_SPEED = {"cpu": 0.035, "cuda": 2.0, "mps": 0.3, "xpu": 0.5}
_FALLBACK_SPEED = 0.035
_SMOOTHING = 0.5  # weight of the newest measurement
# Smaller batches are not measured: their fixed costs (prompt encoding, decoding) would pass for slow sampling.
MIN_MEASURED_WORK = 1.0  # megapixel-steps, e.g. 512x512 x 4 steps


@dataclass(frozen=True)
class JobEstimate:
    seconds: float
    device: str
    size: str
    images: str
    steps: int

    @property
    def key(self) -> str:
        """What the user confirms: the same job (size, count, steps) asked again."""
        return f"{self.size}|{self.images}|{self.steps}"

    def describe(self) -> str:
        return (f"This job is estimated to take about {duration(self.seconds)} on {self.device} ({self.size}, "
                f"{self.images}, {self.steps} steps).")


class LongJobWarning(StudioError):
    """A job estimated past the threshold, not confirmed yet; the message says so and how to confirm."""

    def __init__(self, estimate: JobEstimate):
        super().__init__(f"{estimate.describe()} Press Generate again to start it.")
        self.estimate = estimate


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 20 min``, ``166 days``."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{round(hours / 24)} days"


def work(request: Txt2ImgRequest) -> tuple[float, int]:
    """(megapixel-steps, denoising steps per image) of a txt2img or img2img request."""
    images = request.batch_size * request.n_iter
    if isinstance(request, Img2ImgRequest):
        steps = request.steps if request.img2img_fix_steps else max(1, int(request.steps *
                                                                             request.denoising_strength) + 1)
        return request.width * request.height * steps * images / 1e6, steps
    steps = request.steps
    total = request.width * request.height * steps
    if request.enable_hr:
        width, height = request.hires_size.final()
        hires = request.hr_second_pass_steps or request.steps
        total += width * height * hires
        steps += hires
    return total * images / 1e6, steps


class JobSpeed:
    """Megapixel-steps per second per device kind, measured on finished batches (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._measured: dict[str, float] = {}

    def record(self, device: str, megapixel_steps: float, seconds: float) -> None:
        if megapixel_steps < MIN_MEASURED_WORK or seconds <= 0:
            return
        kind, speed = _kind(device), megapixel_steps / seconds
        with self._lock:
            old = self._measured.get(kind)
            self._measured[kind] = speed if old is None else (1 - _SMOOTHING) * old + _SMOOTHING * speed

    def speed(self, device: str) -> float:
        kind = _kind(device)
        with self._lock:
            return self._measured.get(kind) or DEFAULT_SPEED.get(kind, _FALLBACK_SPEED)

    def estimate(self, request: Txt2ImgRequest, device: str) -> JobEstimate:
        megapixel_steps, steps = work(request)
        images = f"{request.batch_size} x {request.n_iter} images" if request.n_iter > 1 else (
            f"{request.batch_size} image{'s' if request.batch_size > 1 else ''}")
        return JobEstimate(megapixel_steps / self.speed(device), _kind(device),
                           f"{request.width}x{request.height}", images, steps)


def _kind(device: str) -> str:
    return device.split(":", 1)[0]
