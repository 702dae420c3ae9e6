"""The initial noise of a job, as A1111 makes it: noise source, variation seeds, seed resize, eta noise seed delta.

Sources (A1111's "Random number generator source", option ``randn_source``):

- ``GPU`` (A1111's default): ``torch.randn`` on the CUDA card. On any other device it is reproduced with
  :class:`Philox`, which yields the numbers CUDA's ``torch.randn`` yields for the same seed (to float32
  rounding), so an A1111 infotext made on a CUDA card gives the same starting noise on a CPU-only machine.
- ``NV``: always :class:`Philox`, on any device.
- ``CPU``: ``torch.randn`` from a CPU generator.

Variation seeds follow A1111's ``ImageRNG.first``: the seed's noise and the variation seed's noise are mixed by
spherical interpolation at ``subseed_strength``; with ``seed_resize_from`` the seed's noise is drawn at that size and
pasted centred into noise of the real size, so a composition found at one size survives at another.

The samplers' own noise (ancestral steps, Euler's churn) is A1111's ``ImageRNG.next``: each image's stream
continued after its starting noise (:class:`ImageNoise`), so Euler a on a CPU-only machine gives A1111's GPU/NV image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

RANDN_SOURCES = ("GPU", "CPU", "NV")
DEFAULT_SOURCE = "GPU"
LATENT_FACTOR = 8  # pixels per latent cell, as A1111's opt_f

# Philox 4x32-10 constants (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"), as cuRAND uses them.
_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)
_MASK32 = 0xFFFFFFFF
# cuRAND's uniform from 32 bits, with its float32-rounded constants; the arithmetic itself is done in float64 and
# rounded once at the end, which is what reproduces A1111's NV numbers (and CUDA's to within float32 rounding).
_TWO_POW32_INV = float(np.float32(2.3283064e-10))
_TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def _philox4x32(counter: list[np.ndarray], key: tuple[int, int], rounds: int = 10) -> list[np.ndarray]:
    """Philox 4x32 over N counters at once: four uint64 arrays holding 32-bit words in, four out."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        prod0 = c0 * _MULTIPLIERS[0]  # fits in 64 bits: both factors are below 2**32
        prod1 = c2 * _MULTIPLIERS[1]
        c0, c1, c2, c3 = ((prod1 >> 32) ^ c1 ^ k0, prod1 & _MASK32, (prod0 >> 32) ^ c3 ^ k1, prod0 & _MASK32)
        k0, k1 = (k0 + _WEYL[0]) & _MASK32, (k1 + _WEYL[1]) & _MASK32
    return [c0, c1, c2, c3]


class Philox:
    """Normal random numbers that reproduce CUDA's ``torch.randn`` for the same seed, computed on the CPU.

    Same Philox stream and transform as cuRAND; CUDA's float32 ``log``/``sin`` differ in the last bits, so values
    agree to about 3e-7, not bit for bit. The arithmetic matches A1111's NV generator (rng_philox.py).

    Each :meth:`randn` call is one "offset" of the stream, as one CUDA kernel launch is: number ``i`` of call
    ``offset`` comes from the Philox block (offset, 0, i, 0) keyed by the 64-bit seed, through Box-Muller on its
    first two words.
    """

    def __init__(self, seed: int):
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        count = int(np.prod(shape))
        index = np.arange(count, dtype=np.uint64)
        zeros = np.zeros(count, dtype=np.uint64)
        counter = [zeros + self.offset, zeros.copy(), index, zeros.copy()]
        self.offset += 1
        words = _philox4x32(counter, (self.seed & _MASK32, self.seed >> 32))
        u = words[0].astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
        v = words[1].astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
        normal = np.sqrt(-2.0 * np.log(u)) * np.sin(v)
        return torch.from_numpy(normal.astype(np.float32).reshape(shape))


def uses_philox(source: str, device: torch.device) -> bool:
    """Whether ``source`` on ``device`` draws from :class:`Philox` (NV anywhere; GPU off a CUDA card)."""
    return source == "NV" or (source == "GPU" and device.type != "cuda")


def torch_device_for(source: str, device: torch.device) -> torch.device:
    """The device whose torch generator a non-Philox source draws from."""
    return device if source == "GPU" and device.type == "cuda" else torch.device("cpu")


class _Stream:
    """One seeded stream of a source: Philox, or a torch generator on the source's device."""

    def __init__(self, seed: int, source: str, device: torch.device):
        self.philox = Philox(seed) if uses_philox(source, device) else None
        self.device = torch_device_for(source, device)
        self.generator = None if self.philox else torch.Generator(self.device).manual_seed(int(seed))

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.philox is not None:
            return self.philox.randn(shape)
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=torch.float32).cpu()


def randn(seed: int, shape: tuple[int, ...], source: str = DEFAULT_SOURCE,
          device: torch.device | str = "cpu") -> torch.Tensor:
    """The first ``shape`` numbers of ``seed``'s stream from ``source`` (float32, on the CPU)."""
    return _Stream(seed, source, torch.device(device)).randn(shape)


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors of shape (N, ...), row-wise, as A1111's rng.slerp.

    Nearly parallel rows fall back to A1111's linear mix (which weights ``low`` by ``t``, as A1111 does).
    """
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_unit * high_unit).sum(1)
    if dot.mean() > 0.9995:
        return low * t + high * (1 - t)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / sin_omega).unsqueeze(1) * low + \
        (torch.sin(t * omega) / sin_omega).unsqueeze(1) * high


@dataclass(frozen=True)
class NoiseSettings:
    """How a job's noise is made, beyond its seeds."""

    source: str = DEFAULT_SOURCE
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0  # 0 or less: no seed resize
    seed_resize_from_h: int = 0
    eta_noise_seed_delta: int = 0


class ImageNoise:
    """A batch's noise as A1111's ``ImageRNG``: :meth:`first` is the starting noise, :meth:`next` the step noise.

    Each image has its own stream (Philox, or a torch generator on the source's device), so image k of a batch
    gets the numbers a single run with its seed gets. The step noise (ancestral samplers, Euler's churn) continues
    each stream after its starting noise, or restarts it at seed + eta noise seed delta when the delta is set.
    """

    def __init__(self, shape: tuple[int, int, int], seeds: list[int], subseeds: list[int],
                 settings: NoiseSettings, device: torch.device | str):
        self.shape = tuple(shape)
        self.seeds = list(seeds)
        self.subseeds = list(subseeds)
        self.settings = settings
        self.device = torch.device(device)
        self._streams = [_Stream(seed, settings.source, self.device) for seed in self.seeds]

    def first(self) -> torch.Tensor:
        """The starting noise (float32, CPU, shape (len(seeds), *shape)); then the streams move on to step noise."""
        settings, shape, device = self.settings, self.shape, self.device
        resize_h, resize_w = settings.seed_resize_from_h, settings.seed_resize_from_w
        resized = resize_h > 0 and resize_w > 0
        noise_shape = (shape[0], resize_h // LATENT_FACTOR, resize_w // LATENT_FACTOR) if resized else shape
        images = []
        for i, (seed, stream) in enumerate(zip(self.seeds, self._streams)):
            sub = None
            if settings.subseed_strength != 0:
                sub = randn(self.subseeds[i] if i < len(self.subseeds) else 0, noise_shape, settings.source, device)
            if noise_shape != shape:
                noise = randn(seed, noise_shape, settings.source, device)  # a fresh stream, as A1111's randn(seed, ...)
            else:
                noise = stream.randn(shape)
            if sub is not None:
                noise = slerp(settings.subseed_strength, noise, sub)
            if noise_shape != shape:
                noise = _paste_centred(noise, stream.randn(shape))
            images.append(noise)
        if settings.eta_noise_seed_delta:
            delta = settings.eta_noise_seed_delta
            self._streams = [_Stream(seed + delta, settings.source, device) for seed in self.seeds]
        return torch.stack(images)

    def next(self, like: torch.Tensor) -> torch.Tensor:
        """One step's noise for latents ``like`` (one row per image), each image's next draw from its stream."""
        if like.shape[0] != len(self._streams):
            raise ValueError(f"step noise for {like.shape[0]} latents, but the batch has {len(self._streams)} seeds")
        draws = [stream.randn(tuple(like.shape[1:])) for stream in self._streams]
        return torch.stack(draws).to(like.device, like.dtype)

    def torch_generators(self) -> list[torch.Generator]:
        """Torch generators for diffusers' own schedulers (DDIM's eta), which cannot draw from a Philox stream:
        the stream's generator where it has one, else one of the same seed (plus the delta) on the source's device.
        """
        delta = self.settings.eta_noise_seed_delta
        device = torch_device_for(self.settings.source, self.device)
        return [stream.generator if stream.generator is not None
                else torch.Generator(device).manual_seed(seed + delta)
                for seed, stream in zip(self.seeds, self._streams)]


def initial_noise(shape: tuple[int, int, int], seeds: list[int], subseeds: list[int], settings: NoiseSettings,
                  device: torch.device | str) -> tuple[torch.Tensor, list[torch.Generator]]:
    """A batch's starting noise (float32, CPU, shape (len(seeds), *shape)) and torch generators for step noise.

    ``shape`` is one image's latent (channels, height, width). The generators continue each image's torch stream
    after its starting noise (or restart at seed + eta noise seed delta); for Philox sources they are torch
    generators of the same seed. Samplers that can take A1111's own streams use :class:`ImageNoise` instead.
    """
    image_noise = ImageNoise(shape, seeds, subseeds, settings, device)
    return image_noise.first(), image_noise.torch_generators()


def _paste_centred(small: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``small`` centred over ``full`` (either may be the larger; the overlap is copied), as A1111's seed resize."""
    dx, dy = (full.shape[2] - small.shape[2]) // 2, (full.shape[1] - small.shape[1]) // 2
    w = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    h = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    full[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return full
